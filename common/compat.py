"""Make ``import torchvision`` work with a CPU build of torch next to PyPI's CUDA torchvision.

PyPI ships torchvision only as a CUDA build. Next to a CPU build of torch its compiled extension
cannot load (it links ``libc10_cuda.so`` / ``libcudart``), and ``import torchvision`` then fails
while registering fake kernels for the detection ops ``nms``/``qnms``. We never use those ops;
declaring their schemas lets the pure Python parts (models, transforms, datasets) import.

Applied only for that known pairing (``torch.version.cuda is None`` and the extension fails on a
CUDA library), with one warning. Any other failure (a real version mismatch) is raised unchanged.
On a matching install this is a no-op.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import sys
import warnings

_placeholder_lib = None  # keeps the op definitions alive for the life of the process
CUDA_LIBS = ("cuda", "cudart", "cublas", "cudnn", "nvrtc", "nvjitlink")


def _purge_partial_import() -> None:
    for name in list(sys.modules):
        if name == "torchvision" or name.startswith("torchvision."):
            del sys.modules[name]


def extension_error() -> str | None:
    """Why torchvision's compiled extension cannot be loaded (None: it loads or is absent)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.origin:
        return None
    for path in glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*")):
        try:
            ctypes.CDLL(path)
        except OSError as err:
            return str(err)
    return None


def is_cpu_torch_with_cuda_torchvision(torch_cuda: str | None, ext_error: str | None) -> bool:
    """The known pairing: CPU torch, and the extension fails on a missing CUDA library."""
    if torch_cuda is not None or not ext_error:
        return False
    missing = ext_error.split(":")[0].lower()
    return any(lib in missing for lib in CUDA_LIBS)


def ensure_torchvision():
    """Import torchvision; for the known CPU-torch + CUDA-torchvision pairing, stub the ops."""
    global _placeholder_lib
    try:
        import torchvision

        return torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        import torch

        ext_error = extension_error()
        if not is_cpu_torch_with_cuda_torchvision(torch.version.cuda, ext_error):
            raise
    _purge_partial_import()
    warnings.warn(
        f"torchvision's CUDA extension cannot load next to CPU torch {torch.__version__} "
        f"({ext_error}); declaring placeholder nms/qnms ops: detection ops are unavailable",
        RuntimeWarning,
        stacklevel=2,
    )
    _placeholder_lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _placeholder_lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision

    return torchvision
