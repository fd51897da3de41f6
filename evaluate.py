"""Evaluate a checkpoint on frozen features (k-NN, linear, prototypes): see common/probes/cli.py.

    python evaluate.py runs/suave_c100/checkpoints/last.pth

Installed, the same command is ``suave-daino-eval``. ``main`` is ``registry.evaluate``: the
body in ``common/probes/cli.py`` with the registry's methods handed in.
"""

import common  # noqa: F401  (torchvision compatibility shim)
from registry import evaluate as main
from registry import evaluate_console

__all__ = ["main"]

if __name__ == "__main__":
    evaluate_console()
