"""Suave (SwAV + labels) semi-supervised training: ``suave-train`` or ``python main_suave.py``.

suave-train --config suave/configs/cpu_demo.yaml [--name N] [--resume] [a.b=c ...]
"""

from __future__ import annotations

import sys

import common  # noqa: F401  (torchvision compatibility shim)
from common.errors import run_cli
from common.run import train_main
from suave.method import Suave


@run_cli
def main(argv: list[str] | None = None) -> dict:
    return train_main(argv, Suave.config_cls, Suave.build, "Suave semi-supervised training")


def console() -> None:
    """Console script: like ``python main_suave.py`` (the summary dict is not an exit code)."""
    main(sys.argv[1:])


if __name__ == "__main__":
    console()
