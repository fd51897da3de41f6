import numpy as np
import pytest
import torch

from common.optim import LARS, OptimConfig, build_optimizer, param_groups
from common.schedules import cosine_schedule, linear_then_constant


def test_cosine_schedule_warmup_and_ends():
    sched = cosine_schedule(0.4, 0.001, epochs=10, iters_per_epoch=5, warmup_epochs=2)
    assert len(sched) == 50
    np.testing.assert_allclose(sched[:10], np.linspace(0, 0.4, 10, endpoint=False))
    assert sched[10] == pytest.approx(0.4)
    assert sched[-1] == pytest.approx(0.001)
    mid = 10 + (40 - 1) / 2
    assert np.interp(mid, np.arange(50), sched) == pytest.approx((0.4 + 0.001) / 2, rel=1e-6)
    assert np.all(np.diff(sched[10:]) <= 0)


def test_linear_then_constant():
    sched = linear_then_constant(0.04, 0.07, ramp_epochs=10, epochs=30, iters_per_epoch=2)
    assert sched[0] == pytest.approx(0.04)
    assert sched[10] == pytest.approx(0.055)  # epoch 5 of 10
    assert np.all(sched[20:] == 0.07)


def test_param_groups_exclude_bias_and_norm():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    decay, no_decay = param_groups(model)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and not no_decay["lars"] and not no_decay["apply_wd"]


def test_lars_update_matches_formula():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(torch.randn(5))
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt = LARS(
        [{"params": [w], "lars": True}, {"params": [b], "lars": False, "weight_decay": 0.0}],
        lr=0.5, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.001,
    )  # fmt: skip
    gw, gb = torch.randn(5, 3), torch.randn(5)
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    ratio = 0.001 * w0.norm() / (gw.norm() + 1e-2 * w0.norm() + 1e-8)
    torch.testing.assert_close(w.detach(), w0 - 0.5 * ratio * (gw + 1e-2 * w0))
    torch.testing.assert_close(b.detach(), b0 - 0.5 * gb)
    # second step uses momentum
    w1 = w.detach().clone()
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    ratio1 = 0.001 * w1.norm() / (gw.norm() + 1e-2 * w1.norm() + 1e-8)
    buf = 0.9 * ratio * (gw + 1e-2 * w0) + ratio1 * (gw + 1e-2 * w1)
    torch.testing.assert_close(w.detach(), w1 - 0.5 * buf)


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_build_optimizer_steps(name):
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(OptimConfig(name=name), param_groups(model), torch.device("cpu"))
    model(torch.randn(4, 3)).sum().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_param_groups_official_lars_decays_and_scales_bias_and_norm():
    """optim.exclude_bias_norm=false (official LARS): one group, 1-D tensors included."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    (group,) = param_groups(model, exclude_bias_norm=False)
    assert len(group["params"]) == 4 and group["apply_wd"] and group["lars"]
