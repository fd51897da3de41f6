"""``unlabeled_rampup`` (Suave and Daino): the unlabeled loss's weight follows Laine & Aila's
exp(-5 (1 - t)^2) over a share of the run's steps, scales only the unlabeled terms, and is off
(bitwise the unramped total) by default."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from common.config import load_config
from common.errors import UserError
from common.losses import balanced_total
from common.method import StepContext
from common.schedules import sigmoid_rampup
from tests.helpers import random_multicrop_batch

COMMON = ["model.backbone=resnet_mini", "data.num_local=2", "train.batch_size_unlabeled=8",
          "train.batch_size_labeled=4"]  # fmt: skip


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 0) == 1.0 and sigmoid_rampup(7, 0.0) == 1.0  # no ramp
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(400, 100) == 1.0
    values = [sigmoid_rampup(s, 30) for s in range(40)]
    assert values == sorted(values)


def test_balanced_total_scales_only_the_unlabeled_terms():
    lab, unl = [(torch.tensor(2.0), 4)], [(torch.tensor(1.0), 12)]
    # per-sample weighting: the counts stay, the unlabeled losses are scaled
    assert balanced_total(lab, unl, 0.0, 0.5).item() == pytest.approx((2 * 4 + 0.5 * 12) / 16)
    assert balanced_total(lab, unl, 0.25, 0.5).item() == pytest.approx(0.25 * 2 + 0.75 * 0.5)
    assert torch.equal(balanced_total(lab, unl, 0.0, 1.0), balanced_total(lab, unl))


def method(name: str, rampup: float):
    from daino.method import Daino, DainoRunConfig
    from suave.method import Suave, SuaveRunConfig

    if name == "suave":
        extra = ["suave.projector_hidden_dim=32", "suave.embed_dim=16", "suave.queue_length=0"]
        cfg = load_config(
            SuaveRunConfig, None, COMMON + extra + [f"suave.unlabeled_rampup={rampup}"]
        )
        return Suave(cfg, 10)
    extra = ["model.drop_path=0.0", "daino.head_hidden_dim=32", f"daino.unlabeled_rampup={rampup}"]
    return Daino(load_config(DainoRunConfig, None, COMMON + extra), 10)


def ctx(step: int, total: int = 10) -> StepContext:
    return StepContext(step, 0, step, total, total, torch.device("cpu"),
                       torch.Generator().manual_seed(1))  # fmt: skip


@pytest.mark.parametrize("name", ["suave", "daino"])
def test_methods_ramp_their_unlabeled_loss(name):
    torch.manual_seed(0)
    plain = method(name, 0.0)
    ramped = method(name, 0.5)
    ramped.load_state_dict(plain.state_dict())
    full = copy.deepcopy(ramped)
    for m in (plain, ramped, full):
        m.setup(epochs=1, steps_per_epoch=10)
    batch = random_multicrop_batch(8, 4, num_classes=10)
    ref = plain.training_step(batch, ctx(0))
    assert "unlabeled_weight" not in ref.metrics
    out = ramped.training_step(batch, ctx(2))  # 2 of the 5 ramp steps
    weight = math.exp(-5 * (1 - 2 / 5) ** 2)
    assert out.metrics["unlabeled_weight"] == pytest.approx(weight)
    n_l, n_u = 4, 8 * 4  # labeled images; unlabeled crops (2 globals + 2 locals)
    expected = (out.terms["loss_labeled"] * n_l + weight * out.terms["loss_unlabeled"] * n_u) / (
        n_l + n_u
    )
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.terms["loss_unlabeled"], ref.terms["loss_unlabeled"])
    # after the ramp the weight is 1 and the total is the unramped one
    after = full.training_step(batch, ctx(5))
    assert after.metrics["unlabeled_weight"] == 1.0
    torch.testing.assert_close(after.loss, ref.loss)


@pytest.mark.parametrize("name", ["suave", "daino"])
def test_rampup_outside_zero_one_is_refused(name):
    with pytest.raises(UserError, match=rf"{name}.unlabeled_rampup must be in \[0, 1\]"):
        method(name, 1.5)
