"""Daino (DINO + labels) semi-supervised training: ``daino-train`` or ``python main_daino.py``.

daino-train --config daino/configs/cpu_demo.yaml [--name N] [--resume] [a.b=c ...]
"""

from __future__ import annotations

import sys

import common  # noqa: F401  (torchvision compatibility shim)
from common.errors import run_cli
from common.run import train_main
from daino.method import Daino


@run_cli
def main(argv: list[str] | None = None) -> dict:
    return train_main(argv, Daino.config_cls, Daino.build, "Daino semi-supervised training")


def console() -> None:
    """Console script: like ``python main_daino.py`` (the summary dict is not an exit code)."""
    main(sys.argv[1:])


if __name__ == "__main__":
    console()
