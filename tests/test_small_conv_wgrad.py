"""train.small_conv_wgrad=swapped: the bf16 CPU weight gradient computed as a convolution.

The swapped path must give nn.Conv2d's forward and input gradient exactly and its weight
gradient to bf16 rounding, on every geometry it accepts (stride, padding, dilation, 1x1 and 3x3
kernels, bias); every call it does not accept (fp32, large outputs, groups) must be nn.Conv2d's
own. In a Trainer it changes neither the parameters nor the checkpoint keys, and two runs with it
are bitwise equal (what exact resume needs).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.models.small_conv_wgrad import (
    MAX_OUTPUT_PIXELS,
    SmallConvWGrad2d,
    output_pixels,
    use_small_conv_wgrad,
)
from tests.test_fast_paths import build, flat_params, step_loss

# (in, out, kernel, stride, padding, dilation, bias, input size)
GEOMETRIES = [
    (32, 48, 3, 1, 1, 1, False, 3),
    (16, 32, 3, 2, 1, 1, False, 6),
    (16, 32, 3, 2, 1, 1, False, 7),  # the stride skips the last input row
    (16, 32, 1, 2, 0, 1, False, 6),  # a ResNet shortcut
    (16, 24, 3, 1, 2, 2, True, 4),  # dilated, with bias
    (8, 16, 3, 1, 0, 1, False, 5),  # no padding
]


def pair(geometry, seed: int = 0):
    cin, cout, k, s, p, d, bias, _ = geometry
    torch.manual_seed(seed)
    native = nn.Conv2d(cin, cout, k, s, p, d, bias=bias)
    swapped = nn.Conv2d(cin, cout, k, s, p, d, bias=bias)
    swapped.load_state_dict(native.state_dict())
    assert use_small_conv_wgrad(swapped) == 1
    return native, swapped


def run(conv: nn.Module, x: torch.Tensor, grad: torch.Tensor, dtype=torch.bfloat16):
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        y = conv(x)
    (y.float() * grad).sum().backward()
    grads = {n: p.grad.clone() for n, p in conv.named_parameters()}
    return y, x.grad, grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_swapped_weight_gradient_matches_native(geometry, channels_last):
    native, swapped = pair(geometry)
    size = geometry[-1]
    x = torch.randn(12, geometry[0], size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert output_pixels(swapped, x) <= MAX_OUTPUT_PIXELS and swapped._swaps(x) is False  # no AMP
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert swapped._swaps(x)
    with torch.no_grad():
        grad = torch.randn(native(x).shape)
    y0, gx0, gw0 = run(native, x, grad)
    y1, gx1, gw1 = run(swapped, x, grad)
    assert y1.dtype == y0.dtype == torch.bfloat16 and y1.shape == y0.shape
    assert torch.equal(y1, y0)
    assert torch.equal(gx1, gx0)
    assert gw1.keys() == gw0.keys()
    for name in gw0:
        assert gw1[name].dtype == torch.float32
        assert rel(gw1[name], gw0[name]) < 1e-3, name


def test_calls_it_does_not_accept_are_nn_conv2d():
    """fp32, fp16/no autocast, outputs above the limit, grouped convolutions, no_grad: the
    native path, bit for bit."""
    native, swapped = pair((8, 16, 3, 1, 1, 1, False, 8))  # 8 x 8 = 64 output pixels
    x = torch.randn(4, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not swapped._swaps(x)
    for dtype in (None, torch.bfloat16):
        grad = torch.randn(4, 16, 8, 8)
        y0, gx0, gw0 = run(native, x, grad, dtype)
        y1, gx1, gw1 = run(swapped, x, grad, dtype)
        assert torch.equal(y0, y1) and torch.equal(gx0, gx1)
        assert torch.equal(gw0["weight"], gw1["weight"])
    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
    use_small_conv_wgrad(grouped)
    small = torch.randn(2, 8, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not grouped._swaps(small)
        with torch.no_grad():
            assert not swapped._swaps(small)
        assert swapped._swaps(small)


def test_conversion_keeps_parameters_and_state_dict():
    from common.models.factory import build_backbone

    model = build_backbone("resnet_mini")[0]
    keys = list(model.state_dict())
    count = sum(type(m) is nn.Conv2d for m in model.modules())
    assert use_small_conv_wgrad(model) == count > 0
    assert list(model.state_dict()) == keys
    assert all(type(m) is not nn.Conv2d for m in model.modules())
    assert all(isinstance(m, SmallConvWGrad2d) for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("method", ["suave", "daino"])
def test_trainer_step_with_swapped_weight_gradient(tmp_path, method):
    """bf16 Trainer steps with and without the switch: the same first loss (the forward is
    identical) and first update to bf16 rounding, a close second loss, and two runs with it
    bitwise equal."""
    runs = {}
    for name in ("native", "swapped", "swapped_again"):
        mode = "native" if name == "native" else "swapped"
        trainer = build(method, tmp_path, name, precision="bf16", small_conv_wgrad=mode)
        converted = [m for m in trainer.method.modules() if isinstance(m, SmallConvWGrad2d)]
        assert bool(converted) == (mode == "swapped")
        before = flat_params(trainer)
        first = step_loss(trainer, 0)
        update = flat_params(trainer) - before
        runs[name] = ([first, step_loss(trainer, 1)], update)
    (l0, d0), (l1, d1), (l2, d2) = runs["native"], runs["swapped"], runs["swapped_again"]
    assert l1[0] == l0[0]
    assert torch.nn.functional.cosine_similarity(d1, d0, dim=0) > 0.999
    assert l1[1] == pytest.approx(l0[1], rel=1e-2)
    assert l2 == l1 and torch.equal(d2, d1)


def test_auto_swaps_on_amx_cpus_only(tmp_path):
    """``auto`` takes the swapped kernel only where it was measured faster (training on a CPU
    with AMX); AVX512-BF16 without AMX, no readable flags or a GPU run keep the native kernel;
    explicit values stand."""
    from common.engine import resolve_small_conv_wgrad

    cpuinfo = tmp_path / "cpuinfo"
    cases = {"fpu avx512f avx512_bf16 amx_bf16 amx_tile": "swapped",
             "fpu avx512f avx512_bf16": "native", "fpu avx2": "native"}  # fmt: skip
    for flags, expected in cases.items():
        cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
        assert resolve_small_conv_wgrad("auto", "cpu", cpuinfo) == expected
        assert resolve_small_conv_wgrad("auto", "cuda", cpuinfo) == "native"  # a GPU run
        for explicit in ("native", "swapped"):
            assert resolve_small_conv_wgrad(explicit, "cpu", cpuinfo) == explicit
    assert resolve_small_conv_wgrad("auto", "cpu", tmp_path / "missing") == "native"


@pytest.mark.parametrize("amx", [True, False])
def test_trainer_with_auto_follows_the_cpu(tmp_path, monkeypatch, amx):
    from common import engine

    monkeypatch.setattr(engine, "cpu_flags", lambda *_: {"amx_bf16"} if amx else {"avx512_bf16"})
    trainer = build("suave", tmp_path, "auto", precision="bf16", small_conv_wgrad="auto")
    converted = [m for m in trainer.method.modules() if isinstance(m, SmallConvWGrad2d)]
    assert bool(converted) is amx
