"""Evaluate a checkpoint on frozen features (k-NN, linear, prototypes): see common/probes/cli.py.

    python evaluate.py runs/suave_c100/checkpoints/last.pth

Installed, the same command is ``suave-daino-eval``. Imported, this name *is*
:mod:`common.probes.cli`.
"""

import sys

import common  # noqa: F401  (torchvision compatibility shim)
from common.probes import cli as _evaluate

if __name__ == "__main__":
    _evaluate.console()
else:
    sys.modules[__name__] = _evaluate
