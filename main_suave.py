"""Suave (SwAV + labels) semi-supervised training (installed: ``suave-train``).

python main_suave.py --config suave/configs/cpu_demo.yaml [--name N] [--resume] [a.b=c ...]
"""

from suave.cli import console, main

__all__ = ["main"]

if __name__ == "__main__":
    console()
