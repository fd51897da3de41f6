"""Every speed switch computes the same training step as the plain path (CPU, tiny models).

Each test builds two identically initialised Trainers that differ in one switch (channels_last,
torch.compile, bf16 autocast) and compares the losses of their first steps through the real
``Trainer.train_step``; the second step also checks the update the optimiser made. Optimiser
implementations (loop / foreach / fused) are compared parameter by parameter.
"""

from __future__ import annotations

import shutil
import time
from types import SimpleNamespace

import pytest
import torch

from common.config import from_dict
from common.engine import Trainer, step_generator
from common.errors import UserError
from common.method import StepContext
from common.optim import OptimConfig, build_optimizer, param_groups
from tests.dist_utils import run_distributed

CPU = torch.device("cpu")
DATA = {"num_global": 2, "global_size": 16, "num_local": 2, "local_size": 8, "labeled_size": 16}
B_U, B_L = 6, 4
OPTIM = {"name": "sgd", "base_lr": 0.05, "scale_lr": False, "warmup_epochs": 0}


def build(method: str, tmp_path, name: str, device: torch.device = CPU, **train) -> Trainer:
    """A Trainer over a tiny Suave/Daino (resnet_mini) with seed-0 initial weights."""
    sections = {
        "data": DATA, "model": {"backbone": "resnet_mini"}, "optim": OPTIM,
        "train": {"epochs": 1, "batch_size_unlabeled": B_U, "batch_size_labeled": B_L,
                  "sync_bn": False, "device": device.type, **train},
    }  # fmt: skip
    if method == "suave":
        from suave.method import Suave
        from suave.method import SuaveRunConfig as Cfg

        make = Suave.build

        sections["suave"] = {"projector_hidden_dim": 64, "embed_dim": 32, "queue_length": 0}
    else:
        from daino.method import Daino
        from daino.method import DainoRunConfig as Cfg

        make = Daino.build

        sections["daino"] = {"head_hidden_dim": 64, "head_bottleneck_dim": 32,
                             "freeze_last_layer_epochs": 0}  # fmt: skip
    cfg = from_dict(Cfg, sections)
    torch.manual_seed(0)
    method_obj = make(cfg, 10, 1)
    cfg.log.print_every, cfg.log.plots = 10**9, False
    return Trainer(
        method=method_obj, train_data=SimpleNamespace(steps_per_epoch=10), val_loader=None,
        run_cfg=cfg, device=device, run_dir=tmp_path / name,
    )  # fmt: skip


def tiny_batch(step: int) -> dict:
    """Loader-shaped batch: 2 globals (16 px) + 2 locals (8 px) unlabeled, 16 px labeled."""
    g = torch.Generator().manual_seed(step)
    sizes = [DATA["global_size"]] * 2 + [DATA["local_size"]] * 2
    return {
        "unlabeled": [torch.randn(B_U, 3, s, s, generator=g) for s in sizes],
        "labeled": torch.randn(B_L, 3, DATA["labeled_size"], DATA["labeled_size"], generator=g),
        "labels": torch.randint(0, 10, (B_L,), generator=g),
    }


def step_loss(trainer: Trainer, step: int) -> float:
    """Loss of one real ``Trainer.train_step`` on ``tiny_batch(step)`` (the update is made)."""
    ctx = StepContext(step, 0, step, 10, 10, trainer.device, step_generator(0, step, 0))
    return float(trainer.train_step(tiny_batch(step), ctx).loss.detach())


def losses(trainer: Trainer, steps: int = 2) -> list[float]:
    return [step_loss(trainer, step) for step in range(steps)]


def flat_params(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.method.trainable.parameters()])


@pytest.mark.parametrize("method", ["suave", "daino"])
def test_channels_last_same_loss(tmp_path, method):
    plain = losses(build(method, tmp_path, "plain"))
    fast = losses(build(method, tmp_path, "cl", channels_last=True))
    assert fast == pytest.approx(plain, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("method", ["suave", "daino"])
def test_bf16_autocast_close_to_fp32(tmp_path, method):
    """bf16 keeps 8 mantissa bits: the loss agrees to about a percent and the first update
    points the same way (differences then compound, so later losses are not compared)."""
    runs = {}
    for precision in ("fp32", "bf16"):
        trainer = build(method, tmp_path, precision, precision=precision)
        before = flat_params(trainer)
        runs[precision] = (losses(trainer, steps=1)[0], flat_params(trainer) - before)
    (loss32, delta32), (loss16, delta16) = runs["fp32"], runs["bf16"]
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    assert torch.nn.functional.cosine_similarity(delta16, delta32, dim=0) > 0.95


def _agreed_precisions(rank: int, native_per_rank: list[list[bool]]) -> list[tuple[str, str]]:
    from common import engine

    out = []
    for natives in native_per_rank:
        engine.cpu_has_native_bf16 = lambda native=natives[rank]: native
        out.append((engine.agreed_precision("auto", CPU), engine.agreed_precision("fp32", CPU)))
    return out


def test_precision_auto_is_the_same_on_every_rank():
    """Nodes that differ (one CPU computes bf16 natively, the other not) train in one precision:
    bf16 only where every rank can, fp32 otherwise; explicit values stay as given."""
    cases = [[True, False], [False, True], [True, True], [False, False]]
    ranks = run_distributed(_agreed_precisions, 2, cases)
    expected = [("fp32", "fp32"), ("fp32", "fp32"), ("bf16", "fp32"), ("fp32", "fp32")]
    assert ranks == [expected, expected]


def test_precision_auto_follows_the_hardware(tmp_path, monkeypatch):
    """auto = bf16 where the device computes it natively, fp32 elsewhere; explicit values are
    never changed, and the GradScaler stays off (it belongs to fp16 only)."""
    from common import engine

    assert engine.resolve_precision("fp16", CPU) == "fp16"
    assert engine.resolve_precision("fp32", CPU) == "fp32"
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda native=native: native)
        assert engine.resolve_precision("auto", CPU) == expected
        trainer = build("suave", tmp_path, f"auto_{native}", precision="auto")
        assert trainer.precision == expected and not trainer.scaler.is_enabled()
        with trainer.amp():
            y = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
        assert y.dtype == (torch.bfloat16 if native else torch.float32)


def test_native_bf16_check_reads_the_cpu_flags(tmp_path, monkeypatch):
    """oneDNN says bf16 on any AVX512 x86 CPU, even one that only emulates it (no faster than
    fp32): on x86 the CPU's own avx512_bf16 / amx_bf16 flag decides."""
    from common import engine

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(engine.platform, "machine", lambda: "x86_64")
    for flags, expected in (("fpu avx512f avx512bw", False), ("fpu avx512_bf16", True),
                            ("fpu amx_bf16 amx_tile", True)):  # fmt: skip
        (tmp_path / "cpuinfo").write_text(f"processor : 0\nflags : {flags}\n")
        assert engine.cpu_has_native_bf16(tmp_path / "cpuinfo") is expected
    assert engine.cpu_has_native_bf16(tmp_path / "missing") is False  # not Linux
    monkeypatch.setattr(engine.platform, "machine", lambda: "aarch64")
    assert engine.cpu_has_native_bf16() is True
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert engine.cpu_has_native_bf16() is False


def _compile_works() -> str:
    """Why torch.compile cannot run here, or '' when it can."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "torch.compile's CPU backend (inductor) needs a C++ compiler; none is installed"
    return ""


@pytest.mark.slow  # compiling takes 1-2 CPU minutes (6 wall minutes on 2 busy cores)
@pytest.mark.parametrize("method", ["suave", "daino"])  # daino: the teacher is compiled too
def test_compile_same_loss(tmp_path, method):
    reason = _compile_works()
    if reason:
        pytest.skip(reason)
    torch._dynamo.reset()
    plain = losses(build(method, tmp_path, "eager"))
    tic = time.perf_counter()
    fast = losses(build(method, tmp_path, "compiled", compile=True))
    print(f"compiled 2 steps in {time.perf_counter() - tic:.1f} s")
    assert fast == pytest.approx(plain, rel=1e-4, abs=1e-5)


def _steps(name, impl, params, grads, device: torch.device = CPU) -> list[torch.Tensor]:
    model = torch.nn.ParameterList([torch.nn.Parameter(p.clone().to(device)) for p in params])
    cfg = OptimConfig(name=name, implementation=impl, weight_decay=0.05)
    opt = build_optimizer(cfg, param_groups(model), device)
    for group in opt.param_groups:
        group["lr"] = 0.1
    for step_grads in grads:
        for p, g in zip(model, step_grads):
            p.grad = g.clone().to(device)
        opt.step()
    return [p.detach().cpu() for p in model]


def check_implementations_agree(name: str, impl: str, device: torch.device) -> None:
    if name == "sgd" and impl == "fused":
        pytest.skip("fused SGD is refused (test_fused_sgd_is_refused)")
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 8), (16,), (4, 3, 3, 3), (7,)]
    params = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    reference = _steps(name, "loop", params, grads, device)
    for ours, ref in zip(_steps(name, impl, params, grads, device), reference):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("impl", ["foreach", "fused", "auto"])
def test_optimizer_implementations_agree(name, impl):
    check_implementations_agree(name, impl, CPU)


# ----------------------------------------------------------------------------- CUDA
# The same equalities on a GPU, where the switches are speed switches (skipped without one;
# run on a lent H100, see benchmarks/RESULTS.md). TF32 is turned off so that fp32 paths are
# compared at fp32 precision, not at TF32's 10-bit mantissa.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU = torch.device("cuda")


@pytest.fixture
def no_tf32():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@needs_cuda
@pytest.mark.parametrize("method", ["suave", "daino"])
def test_cuda_fp32_matches_cpu(tmp_path, method, no_tf32):
    cpu = losses(build(method, tmp_path, "cpu"))
    gpu = losses(build(method, tmp_path, "gpu", device=GPU))
    assert gpu == pytest.approx(cpu, rel=1e-3, abs=1e-5)


@needs_cuda
@pytest.mark.parametrize("method", ["suave", "daino"])
def test_cuda_channels_last_same_loss(tmp_path, method, no_tf32):
    plain = losses(build(method, tmp_path, "plain", device=GPU))
    fast = losses(build(method, tmp_path, "cl", device=GPU, channels_last=True))
    assert fast == pytest.approx(plain, rel=1e-3, abs=1e-5)


def check_mixed_precision(tmp_path, method: str, precision: str, device: torch.device) -> None:
    """Same first loss as fp32 within ~2%, then finite training. fp16 goes through the
    GradScaler, which skips the first steps while it finds its scale (Daino's head needs about
    seven halvings from 2**16), leaving parameters and optimiser state untouched; bf16 needs no
    scaler and its first update must point like fp32's."""
    reference = build(method, tmp_path, "fp32", device=device)
    before = flat_params(reference)
    loss32 = losses(reference, steps=1)[0]
    delta32 = flat_params(reference) - before
    trainer = build(method, tmp_path, precision, device=device, precision=precision)
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    start = flat_params(trainer)
    run = losses(trainer, steps=10)  # NonFiniteLossError if a skipped step corrupted the state
    assert run[0] == pytest.approx(loss32, rel=2e-2)
    moved = flat_params(trainer) - start
    assert torch.isfinite(moved).all() and moved.abs().max() > 0
    if precision == "bf16":
        one = build(method, tmp_path, "bf16_one", device=device, precision="bf16")
        first = flat_params(one)
        losses(one, steps=1)
        delta16 = flat_params(one) - first
        assert torch.nn.functional.cosine_similarity(delta16, delta32, dim=0) > 0.95
    else:
        assert 0 < trainer.scaler.get_scale() < 2.0**16  # it did skip, then found a scale


@pytest.mark.parametrize("method", ["suave", "daino"])
def test_fp16_grad_scaler_trains(tmp_path, method):
    """fp16 + GradScaler on the CPU too (the path the official code lacks; slow there, right)."""
    check_mixed_precision(tmp_path, method, "fp16", CPU)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("impl", ["auto", "foreach", "loop"])
def test_optimizer_survives_skipped_and_late_steps(name, impl):
    """A step the fp16 GradScaler skips leaves the optimiser untouched, and a parameter whose
    gradient starts later (frozen prototypes / DINO last layer) joins cleanly: the same weights
    as plain loop arithmetic. torch's fused SGD fails both, so it is refused."""

    def run(implementation: str) -> list[torch.Tensor]:
        early, late = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
        cfg = OptimConfig(name=name, implementation=implementation, weight_decay=0.0)
        opt = build_optimizer(cfg, [{"params": [early, late]}], CPU)
        scaler = torch.amp.GradScaler("cpu")
        for step, factor in enumerate((float("inf"), 1.0, 1.0, 1.0)):
            for group in opt.param_groups:
                group["lr"] = 0.1
            opt.zero_grad(set_to_none=True)
            loss = (early * factor).sum() + ((late * 2.0).sum() if step >= 2 else 0.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return [early.detach(), late.detach()]

    if name == "sgd":  # three real steps of momentum SGD from 1 with gradient 1: 1 - 0.1 * 5.61
        torch.testing.assert_close(run(impl)[0], torch.full((4,), 1 - 0.1 * (1 + 1.9 + 2.71)))
    for ours, ref in zip(run(impl), run("loop")):
        torch.testing.assert_close(ours, ref)


def test_fused_sgd_is_refused():
    with pytest.raises(UserError, match="fused is not offered for SGD"):
        OptimConfig(name="sgd", implementation="fused").validate()


@needs_cuda
@pytest.mark.parametrize("method", ["suave", "daino"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_autocast_close_to_fp32(tmp_path, method, precision, no_tf32):
    check_mixed_precision(tmp_path, method, precision, GPU)


@needs_cuda
@pytest.mark.parametrize("method", ["suave", "daino"])
def test_cuda_compile_same_loss(tmp_path, method, no_tf32):
    torch._dynamo.reset()
    plain = losses(build(method, tmp_path, "eager", device=GPU))
    tic = time.perf_counter()
    fast = losses(build(method, tmp_path, "compiled", device=GPU, compile=True))
    print(f"compiled 2 steps on the GPU in {time.perf_counter() - tic:.1f} s")
    assert fast == pytest.approx(plain, rel=1e-3, abs=1e-5)


@needs_cuda
@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("impl", ["foreach", "fused", "auto"])
def test_cuda_optimizer_implementations_agree(name, impl):
    check_implementations_agree(name, impl, GPU)
