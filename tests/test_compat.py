"""common/compat.py stubs torchvision ops only for CPU torch + CUDA torchvision, with a warning."""

from __future__ import annotations

import subprocess
import sys

from common.compat import is_cpu_torch_with_cuda_torchvision as known


def test_known_pairing_only():
    cuda_lib = "libc10_cuda.so: cannot open shared object file: No such file or directory"
    assert known(None, cuda_lib)
    assert known(None, "libcudart.so.12: cannot open shared object file")
    assert not known("12.4", cuda_lib)  # CUDA torch: a real mismatch
    assert not known(None, None)  # the extension loads: the failure is something else
    assert not known(None, "_C.so: undefined symbol: _ZN3c104cuda9SetDeviceEi")  # ABI mismatch


def test_import_warns_once_or_not_at_all():
    code = ("import warnings; warnings.simplefilter('always'); "
            "import common, common.compat as c, torch; import torchvision; "
            "print(c._placeholder_lib is not None, torch.version.cuda is None)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stubbed, cpu = proc.stdout.split()
    warned = proc.stderr.count("placeholder nms/qnms ops")
    assert warned == (1 if stubbed == "True" else 0), proc.stderr
    assert stubbed == "False" or cpu == "True"
