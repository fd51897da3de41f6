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
from common.method import StepContext
from common.optim import OptimConfig, build_optimizer, param_groups

CPU = torch.device("cpu")
DATA = {"num_global": 2, "global_size": 16, "num_local": 2, "local_size": 8, "labeled_size": 16}
B_U, B_L = 6, 4
OPTIM = {"name": "sgd", "base_lr": 0.05, "scale_lr": False, "warmup_epochs": 0}


def build(method: str, tmp_path, name: str, **train) -> Trainer:
    """A Trainer over a tiny Suave/Daino (resnet_mini) with seed-0 initial weights."""
    sections = {
        "data": DATA, "model": {"backbone": "resnet_mini"}, "optim": OPTIM,
        "train": {"epochs": 1, "batch_size_unlabeled": B_U, "batch_size_labeled": B_L,
                  "sync_bn": False, **train},
    }  # fmt: skip
    if method == "suave":
        from suave.method import SuaveRunConfig as Cfg
        from suave.method import build_suave as make

        sections["suave"] = {"projector_hidden_dim": 64, "embed_dim": 32, "queue_length": 0}
    else:
        from daino.method import DainoRunConfig as Cfg
        from daino.method import build_daino as make

        sections["daino"] = {"head_hidden_dim": 64, "head_bottleneck_dim": 32,
                             "freeze_last_layer_epochs": 0}  # fmt: skip
    cfg = from_dict(Cfg, sections)
    torch.manual_seed(0)
    method_obj = make(cfg, 10, 1)
    return Trainer(
        method=method_obj, train_data=SimpleNamespace(steps_per_epoch=10), val_loader=None,
        train_cfg=cfg.train, optim_cfg=cfg.optim, device=CPU, run_dir=tmp_path / name,
        config_dict={}, print_every=10**9,
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


def losses(trainer: Trainer, steps: int = 2) -> list[float]:
    out = []
    for step in range(steps):
        ctx = StepContext(step, 0, step, 10, 10, CPU, step_generator(0, step, 0))
        out.append(float(trainer.train_step(tiny_batch(step), ctx).loss.detach()))
    return out


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


def _compile_works() -> str:
    """Why torch.compile cannot run here, or '' when it can."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "torch.compile's CPU backend (inductor) needs a C++ compiler; none is installed"
    return ""


@pytest.mark.slow  # compiling forward and backward takes about a minute on 2 CPU cores
def test_compile_same_loss(tmp_path):
    reason = _compile_works()
    if reason:
        pytest.skip(reason)
    torch._dynamo.reset()
    plain = losses(build("suave", tmp_path, "eager"))
    tic = time.perf_counter()
    fast = losses(build("suave", tmp_path, "compiled", compile=True))
    print(f"compiled 2 steps in {time.perf_counter() - tic:.1f} s")
    assert fast == pytest.approx(plain, rel=1e-4, abs=1e-5)


def _steps(name: str, impl: str, params: list[torch.Tensor], grads: list[list[torch.Tensor]]):
    model = torch.nn.ParameterList([torch.nn.Parameter(p.clone()) for p in params])
    cfg = OptimConfig(name=name, implementation=impl, weight_decay=0.05)
    opt = build_optimizer(cfg, param_groups(model), CPU)
    for group in opt.param_groups:
        group["lr"] = 0.1
    for step_grads in grads:
        for p, g in zip(model, step_grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in model]


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("impl", ["foreach", "fused", "auto"])
def test_optimizer_implementations_agree(name, impl):
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 8), (16,), (4, 3, 3, 3), (7,)]
    params = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    reference = _steps(name, "loop", params, grads)
    for ours, ref in zip(_steps(name, impl, params, grads), reference):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
