"""Daino (DINO + labels) semi-supervised training (installed: ``daino-train``).

python main_daino.py --config daino/configs/cpu_demo.yaml [--name N] [--resume] [a.b=c ...]
"""

from daino.cli import console, main

__all__ = ["main"]

if __name__ == "__main__":
    console()
