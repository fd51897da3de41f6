"""NaN / inf: training stops within one step with one line naming the term and the step, exit code
2, and every checkpoint left behind is finite and loadable. fp16 overflow that the grad scaler
absorbs is not an error (CPU fp16 autocast + GradScaler exercise the same engine path as CUDA).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import main_suave
from common.checkpoint import checkpoint_files, load_file
from common.engine import Trainer
from common.errors import NonFiniteLossError
from common.logging_utils import LogConfig
from common.method import Method, StepOutput
from common.optim import OptimConfig
from common.run_config import RunConfig, TrainConfig
from tests.helpers import assert_cli_error
from tests.reliability_utils import SUAVE

pytestmark = pytest.mark.usefixtures("one_thread")


def suave_args(tmp_path, tiny_data, *extra):
    return [*SUAVE, f"data.root={tiny_data}", "--output_dir", str(tmp_path), "--name", "run",
            "train.checkpoint_every_steps=1", "suave.use_momentum=false", *extra]  # fmt: skip


def assert_all_finite_and_loadable(ckpt_dir, newest: int) -> None:
    files = checkpoint_files(ckpt_dir)
    assert files and int(files[0].stem.split("_")[1]) == newest, files
    for path in [*files, ckpt_dir / "last.pth"]:
        model = load_file(path)["model"]
        for key, value in model.items():
            assert not value.is_floating_point() or torch.isfinite(value).all(), (path, key)


def test_huge_lr_stops_at_the_first_nan_step(tmp_path, tiny_data, capsys):
    """A real divergence: lr 1e30 gives finite but huge weights after step 0, NaN at step 1."""
    args = suave_args(tmp_path, tiny_data, "optim.base_lr=1e30", "optim.warmup_epochs=0")
    line = assert_cli_error(capsys, main_suave.main, args, r"non-finite \w+ at step \d+")
    assert "loss_unlabeled at step 1" in line or "loss_labeled at step 1" in line, line
    # checkpoint 1 holds finite but exploded weights (lr 1e30 for one step): not a good one
    assert "no checkpoint with sane weights was written yet" in line, line
    assert_all_finite_and_loadable(tmp_path / "run" / "checkpoints", newest=1)


def test_failed_run_stops_its_loader_workers(tmp_path, tiny_data, capsys):
    """An error mid-epoch shuts the persistent loader workers down before it propagates, so the
    process exits at once (left to interpreter exit they can hang it: seen on a GPU)."""
    import multiprocessing

    args = suave_args(tmp_path, tiny_data, "optim.base_lr=1e30", "optim.warmup_epochs=0",
                      "data.num_workers=2", "data.persistent_workers=true")  # fmt: skip
    assert_cli_error(capsys, main_suave.main, args, r"non-finite \w+ at step \d+")
    assert multiprocessing.active_children() == []


def test_nan_weights_are_never_checkpointed(tmp_path, tiny_data, capsys, monkeypatch):
    """Weights turned NaN by an update (finite loss, inf gradients) must not overwrite the last
    good checkpoint: the save after that step refuses and stops the run."""
    original = Trainer.train_step

    def poisoned(self, batch, ctx):
        out = original(self, batch, ctx)
        if ctx.step == 2:
            with torch.no_grad():
                next(self.method.trainable.parameters()).fill_(math.nan)
        return out

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    line = assert_cli_error(capsys, main_suave.main, suave_args(tmp_path, tiny_data),
                            r"non-finite weights .*after step 2")  # fmt: skip
    assert "net.backbone" in line, line
    assert_all_finite_and_loadable(tmp_path / "run" / "checkpoints", newest=2)


class ToyMethod(Method):
    """A linear model: fp16 autocast on CPU is ~20x slower than fp32 for convolutions."""

    name = "toy"

    def __init__(self, overflow_at: int):
        super().__init__()
        self.net, self.overflow_at = nn.Linear(4, 3), overflow_at

    @property
    def trainable(self) -> nn.Module:
        return self.net

    def meta(self) -> dict:
        return {"method": self.name}

    def training_step(self, batch, ctx) -> StepOutput:
        loss = self.net(batch["x"]).float().pow(2).mean()
        assert self.net(batch["x"]).dtype == torch.float16  # autocast really is on
        return StepOutput(loss, {"loss_toy": loss})

    def before_optimizer_step(self, ctx) -> None:
        if ctx.step == self.overflow_at:  # what an overflowing scaled backward produces
            self.net.weight.grad.fill_(math.inf)


def test_fp16_overflow_is_skipped_not_fatal(tmp_path):
    """Inf gradients under fp16 are the grad scaler's business: the step is skipped, the scale
    halves, training goes on to the end (the engine's real fp16 path, autocast + GradScaler on
    CPU, with a toy model)."""
    g = torch.Generator().manual_seed(0)
    data = SimpleNamespace(
        loader=[{"x": torch.randn(8, 4, generator=g)} for _ in range(4)], steps_per_epoch=4,
        sampler=SimpleNamespace(set_epoch=lambda epoch, start_iter=0: None),
    )  # fmt: skip
    cfg = TrainConfig(epochs=1, device="cpu", precision="fp16", checkpoint_every_steps=1)
    optim = OptimConfig(name="sgd", base_lr=0.1, warmup_epochs=0)
    run_cfg = RunConfig(train=cfg, optim=optim, log=LogConfig(print_every=1, plots=False))
    trainer = Trainer(ToyMethod(overflow_at=2), data, None, run_cfg, torch.device("cpu"), tmp_path)
    assert trainer.fit()["step"] == 4
    ckpts = {n: load_file(tmp_path / "checkpoints" / f"checkpoint_{n:08d}.pth") for n in (2, 3, 4)}
    weight = [c["model"]["net.weight"] for c in ckpts.values()]
    assert torch.equal(weight[0], weight[1])  # step 2 was skipped
    assert not torch.equal(weight[1], weight[2])  # step 3 was not
    assert ckpts[3]["scaler"]["scale"] == ckpts[2]["scaler"]["scale"] / 2


def test_a_nan_on_another_rank_stops_this_one_too(tmp_path, monkeypatch):
    """Ranks agree on the finite check (an all-reduce): a rank with a finite loss stops with the
    one that saw NaN, instead of waiting for it in the next collective until the timeout."""
    from common import dist

    def other_rank_saw_nan_in_the_first_term(tensor, op="sum"):
        assert op == "min"
        tensor[0] = 0.0
        return tensor

    monkeypatch.setattr(dist, "all_reduce_", other_rank_saw_nan_in_the_first_term)
    fake_trainer = SimpleNamespace(world=2, device=torch.device("cpu"), run_dir=tmp_path,
                                   _stable_advice=lambda: "advice")  # fmt: skip
    finite = torch.tensor(1.0)
    out = StepOutput(finite, {"loss_unlabeled": finite, "loss_labeled": finite})
    with pytest.raises(NonFiniteLossError, match="non-finite loss_unlabeled at step 5"):
        Trainer._check_finite(fake_trainer, out, 5)
