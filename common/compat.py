"""Make ``import torchvision`` work on CPU-only PyTorch builds.

PyPI ships torchvision only as a CUDA build. Next to a CPU build of torch its compiled
extension cannot load, and ``import torchvision`` then fails while registering fake kernels for
the detection ops ``nms``/``qnms``. We never use those ops; declaring their schemas lets the pure
Python parts (models, transforms, datasets) import normally. On a matching install this is a no-op.
"""

from __future__ import annotations

import sys

_placeholder_lib = None  # keeps the op definitions alive for the life of the process


def _purge_partial_import() -> None:
    for name in list(sys.modules):
        if name == "torchvision" or name.startswith("torchvision."):
            del sys.modules[name]


def ensure_torchvision():
    """Import torchvision, declaring placeholder detection ops if its C extension cannot load."""
    global _placeholder_lib
    try:
        import torchvision

        return torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    import torch

    _purge_partial_import()
    _placeholder_lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _placeholder_lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision

    return torchvision
