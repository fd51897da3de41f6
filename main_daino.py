"""Daino (DINO + labels) semi-supervised training.

python main_daino.py --config daino/configs/cpu_demo.yaml [--name N] [--resume] [a.b=c ...]
"""

from __future__ import annotations

import sys

import common  # noqa: F401  (torchvision compatibility shim)
from common.errors import run_cli
from common.run import train_main
from daino.method import DainoRunConfig, build_daino


@run_cli
def main(argv: list[str] | None = None) -> dict:
    return train_main(argv, DainoRunConfig, build_daino, "Daino semi-supervised training")


if __name__ == "__main__":
    main(sys.argv[1:])
