"""Daino unit tests (CPU, fast): loss pieces, center, temperatures, teacher EMA, initialisation."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import load_config
from common.errors import UserError
from common.losses import balanced_total
from common.method import StepContext
from common.models.ema import ema_update_
from daino.loss import (
    DainoLoss,
    _dino_cross_view_loss_loop,
    batch_center,
    dino_cross_view_loss,
    teacher_probabilities,
    teacher_temperature_schedule,
)
from daino.method import Daino, DainoRunConfig
from tests.dist_utils import run_distributed
from tests.helpers import random_multicrop_batch, randomize

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "model.backbone=resnet_mini", "data.num_global=2", "data.num_local=2",
    "data.global_size=32", "data.local_size=16", "data.labeled_size=32",
    "daino.head_hidden_dim=32", "daino.head_bottleneck_dim=16", "train.epochs=2",
]  # fmt: skip


def tiny_daino(num_classes=5, extra=()) -> Daino:
    cfg = load_config(DainoRunConfig, None, TINY + list(extra))
    method = Daino(cfg, num_classes)
    method.setup(cfg.train.epochs, steps_per_epoch=4)
    return method


def random_batch(b_u=4, b_l=3, num_classes=5, seed=0) -> dict:
    return random_multicrop_batch(b_u, b_l, num_classes, seed)


def ctx(step=0, epoch=0) -> StepContext:
    return StepContext(step, epoch, step, 4, 8, torch.device("cpu"), torch.Generator())


# ------------------------------------------------------------------------ loss pieces
def test_center_converges_to_mean_of_constant_teacher_outputs():
    loss = DainoLoss(num_classes=6, center_momentum=0.9)
    logits = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    loss.update_center(logits)  # one step: exactly 0.1 * mean from a zero center
    torch.testing.assert_close(loss.center, 0.1 * logits.mean(0, keepdim=True))
    for _ in range(300):
        loss.update_center(logits)
    torch.testing.assert_close(loss.center, logits.mean(0, keepdim=True), atol=1e-6, rtol=0)


def _center_shard(rank, views, world, steps):
    loss = DainoLoss(num_classes=views[0][0].shape[1])
    for step_views in views[:steps]:
        loss.update_center(torch.cat([v.chunk(world)[rank] for v in step_views]))
    return loss.center


@pytest.mark.distributed
def test_center_two_processes_equal_one_process_on_concatenated_batch():
    g = torch.Generator().manual_seed(2)
    views = [[torch.randn(8, 5, generator=g) * (s + 1) for _ in range(2)] for s in range(3)]
    single = DainoLoss(num_classes=5)
    for step_views in views:
        single.update_center(torch.cat(step_views))
    parts = run_distributed(_center_shard, 2, views, 2, 3)
    for center in parts:
        torch.testing.assert_close(center, single.center, atol=1e-6, rtol=1e-6)


def test_teacher_temperature_schedule_per_epoch():
    temps = teacher_temperature_schedule(0.04, 0.07, 10, 60)
    assert len(temps) == 60
    assert temps[0] == pytest.approx(0.04)
    # DINO's endpoint-inclusive linspace: linear in the epoch, 0.07 from epoch 9 on.
    for epoch in range(10):
        assert temps[epoch] == pytest.approx(0.04 + epoch * 0.03 / 9)
    assert np.all(temps[9:] == pytest.approx(0.07))
    assert np.all(np.diff(temps[:10]) > 0)
    loss = DainoLoss(3, epochs=60)
    assert loss.teacher_temperature(10) == pytest.approx(0.07)
    assert loss.teacher_temperature(500) == pytest.approx(0.07)  # past the end: last value
    assert teacher_temperature_schedule(0.04, 0.07, 0, 5) == pytest.approx([0.07] * 5)
    assert teacher_temperature_schedule(0.04, 0.07, 10, 3) == pytest.approx(
        [0.04, 0.04 + 0.03 / 9, 0.04 + 0.06 / 9]
    )


def _reference_dino_loss(student, teacher, center, t_temp, s_temp):
    """Independent float64 computation of DINO's cross-view loss."""

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    total, n = 0.0, 0
    for t, tl in enumerate(teacher):
        q = softmax((tl - center) / t_temp)
        for v, sl in enumerate(student):
            if v != t:
                total += np.mean(-(q * np.log(softmax(sl / s_temp))).sum(axis=1))
                n += 1
    return total / n


def test_dino_loss_matches_float64_reference():
    g = torch.Generator().manual_seed(3)
    student = [torch.randn(3, 4, generator=g) for _ in range(4)]  # 2 globals + 2 locals
    teacher = [torch.randn(3, 4, generator=g) for _ in range(2)]
    loss = DainoLoss(4, student_temp=0.1, warmup_teacher_temp_epochs=10, epochs=20)
    loss.center.copy_(torch.randn(1, 4, generator=g))
    center0 = loss.center.clone().double().numpy()
    value, probs = loss(student, teacher, epoch=5)
    temp = 0.04 + 5 * 0.03 / 9
    ref = _reference_dino_loss(
        [s.double().numpy() for s in student], [t.double().numpy() for t in teacher],
        center0, temp, 0.1,
    )  # fmt: skip
    assert value.item() == pytest.approx(ref, rel=1e-5)
    # 6 pairs: each of 4 student crops x 2 teacher globals, minus the 2 same-view pairs
    assert len(probs) == 2 and torch.allclose(probs[0].sum(1), torch.ones(3))
    mean = torch.cat(teacher).double().mean(0, keepdim=True).numpy()
    np.testing.assert_allclose(loss.center.numpy(), 0.9 * center0 + 0.1 * mean, rtol=1e-5)


def test_pure_pieces_edge_cases():
    logits = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    torch.testing.assert_close(batch_center(logits), torch.tensor([[2.0, 3.5]]))
    p = teacher_probabilities(logits, torch.zeros(1, 2), 1.0)
    torch.testing.assert_close(p, torch.softmax(logits, 1))
    with pytest.raises(ValueError):
        dino_cross_view_loss([logits], [p], 0.1)  # one crop has no other view to predict
    a, b = torch.tensor(2.0), torch.tensor(5.0)
    # 4 unlabeled images x 10 crops = 40 samples, 10 labeled
    assert balanced_total([(b, 10)], [(a, 4 * 10)]).item() == pytest.approx((2 * 40 + 5 * 10) / 50)
    assert balanced_total([], [(a, 4 * 10)]).item() == pytest.approx(2.0)


# ------------------------------------------------------------------------ teacher / student
def test_teacher_has_no_grads_and_gradients_reach_student():
    method = tiny_daino()
    assert all(not p.requires_grad for p in method.teacher.parameters())
    for ps, pt in zip(method.student.state_dict().values(), method.teacher.state_dict().values()):
        torch.testing.assert_close(ps, pt)  # teacher starts as a copy of the student
    method.train()
    out = method.training_step(random_batch(), ctx())
    assert set(out.terms) == {"loss_unlabeled", "loss_labeled"}
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    grads = {n: p.grad for n, p in method.student.named_parameters() if p.requires_grad}
    assert grads["backbone.conv1.weight"].abs().sum() > 0
    assert grads["head.mlp.0.weight"].abs().sum() > 0
    last = [n for n in grads if "last_layer" in n]
    assert last and all(grads[n].abs().sum() > 0 for n in last)
    method.before_optimizer_step(ctx(epoch=0))  # frozen during epoch 0 (default 1 epoch)
    assert all(p.grad is None for n, p in method.student.named_parameters() if "last_layer" in n)
    assert method.student.backbone.conv1.weight.grad is not None


def test_teacher_sees_only_unlabeled_globals():
    method = tiny_daino()
    seen = []
    method.teacher.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    method.training_step(random_batch(b_u=4), ctx())
    assert seen == [torch.Size([8, 3, 32, 32])]


def test_ema_update_is_exact():
    method = tiny_daino()
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(torch.randn_like(p))
    teacher0 = copy.deepcopy(method.teacher.state_dict())
    student = {n: p.detach().clone() for n, p in method.student.named_parameters()}
    step = 5
    m = float(method.momentum_schedule[step])
    assert 0.99 < m < 1.0
    method.after_optimizer_step(ctx(step=step))
    for name, p in method.teacher.named_parameters():
        expected = m * teacher0[name] + (1 - m) * student[name]
        torch.testing.assert_close(p, expected, rtol=0, atol=1e-6)
    assert method.momentum_schedule[0] == pytest.approx(0.99)
    assert method.momentum_schedule[-1] == pytest.approx(1.0)
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    ema_update_(a, b, 0.75)
    torch.testing.assert_close(a.weight.detach(), 0.75 * wa + 0.25 * wb, rtol=0, atol=1e-7)


def test_classify_uses_the_teacher():
    method = tiny_daino().eval()
    with torch.no_grad():
        method.teacher.head.last_layer.parametrizations.weight.original1.mul_(-1)
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(method.classify(x), method.teacher([x]))
        assert not torch.allclose(method.classify(x), method.student([x]))


# ------------------------------------------------------------------------ initialisation
def official_layout(state: dict, prefix: str) -> dict:
    """Our network's state dict in DINO's key layout (old weight-norm names, DDP prefix)."""
    out = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        out[prefix + key.replace("parametrizations.weight.original1", "weight_v")] = value
    return out


def dino_full_checkpoint(path, backbone="vit_tiny", k=7):
    """A file shaped like dino_deitsmall16_pretrain_full_checkpoint.pth (K differs from ours)."""
    src = tiny_daino(k, [f"model.backbone={backbone}"])
    student, teacher = randomize(src.student), randomize(src.teacher)
    torch.save({
        "student": official_layout(student.state_dict(), "module."),
        "teacher": official_layout(teacher.state_dict(), ""),
        "epoch": 100, "dino_loss": {"center": torch.zeros(1, k)},
    }, path)  # fmt: skip
    return student, teacher


def test_init_from_official_dino_full_checkpoint(tmp_path):
    path = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    src_student, src_teacher = dino_full_checkpoint(path)
    method = tiny_daino(5, ["model.backbone=vit_tiny", "daino.init_teacher=dino"])
    method.initialize_from(str(path), "auto")
    for net, src in ((method.student, src_student), (method.teacher, src_teacher)):
        own, ref = net.state_dict(), src.state_dict()
        for key in own:
            if key.startswith(("backbone.", "head.mlp.")):
                torch.testing.assert_close(own[key], ref[key], msg=key)
    # K = 7 prototypes never fit K = 5: the last layer stays at init, equal in both networks
    s_last = method.student.head.last_layer.state_dict()
    t_last = method.teacher.head.last_layer.state_dict()
    assert all(torch.equal(s_last[k], t_last[k]) for k in s_last)


def test_init_from_backbone_only_releases(tmp_path):
    vit = tiny_daino(5, ["model.backbone=vit_tiny"])
    file = tmp_path / "dino_vittiny16_pretrain.pth"
    ref = randomize(copy.deepcopy(vit.student.backbone)).state_dict()
    torch.save(ref, file)
    vit.initialize_from(str(file), "dino")
    for net in (vit.student, vit.teacher):
        for key, value in net.backbone.state_dict().items():
            torch.testing.assert_close(value, ref[key], msg=key)


@pytest.mark.parametrize("backbone", ["resnet50"])
def test_resnet50_daino_loads_dino_release_and_trains_a_step(tmp_path, backbone):
    method = tiny_daino(5, [f"model.backbone={backbone}"])
    ref = randomize(copy.deepcopy(method.student.backbone)).state_dict()
    file = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save({"module." + k: v for k, v in ref.items()}, file)
    method.initialize_from(str(file), "auto")
    for key, value in method.teacher.backbone.state_dict().items():
        torch.testing.assert_close(value, ref[key], msg=key)
    out = method.training_step(random_batch(b_u=2, b_l=2), ctx())
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_init_from_our_checkpoints(tmp_path):
    src = tiny_daino()
    randomize(src.student), randomize(src.teacher)
    src.loss.center.normal_()
    path = tmp_path / "ours.pth"
    torch.save({"model": src.state_dict(), "meta": src.meta(), "step": 10}, path)
    method = tiny_daino()
    method.initialize_from(str(path), "auto")
    for key, value in src.state_dict().items():
        torch.testing.assert_close(method.state_dict()[key], value, msg=key)
    backbone_only = tiny_daino(5, ["daino.init_head=false"])
    backbone_only.initialize_from(str(path), "ours")
    torch.testing.assert_close(
        backbone_only.student.backbone.conv1.weight, src.student.backbone.conv1.weight
    )
    assert not torch.equal(backbone_only.loss.center, src.loss.center)


@pytest.mark.parametrize(
    "make, fmt, match",
    [
        (
            lambda p: torch.save({"student": {"module.backbone.x": torch.ones(1)}}, p),
            "auto",
            "does not look like",
        ),
        (lambda p: p.write_bytes(b"not a checkpoint"), "auto", "corrupt"),
        (lambda p: p.write_bytes(b"not a checkpoint"), "ours", "corrupt"),
        (lambda p: dino_full_checkpoint(p, backbone="resnet_mini"), "dino", "0 of"),
        (lambda p: torch.save({"model": {}, "meta": {"method": "x"}}, p), "auto", "'x' checkpoint"),
    ],
)
def test_wrong_checkpoint_fails_with_one_clear_line(tmp_path, make, fmt, match):
    path = tmp_path / "bad.pth"
    make(path)
    method = tiny_daino(5, ["model.backbone=vit_tiny"])
    with pytest.raises(UserError, match=match) as info:
        method.initialize_from(str(path), fmt)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_wrong_backbone_in_our_checkpoint(tmp_path):
    src = tiny_daino(5, ["model.backbone=vit_tiny"])
    path = tmp_path / "vit.pth"
    torch.save({"model": src.state_dict(), "meta": src.meta()}, path)
    with pytest.raises(UserError, match="lacks|wrong shape|lacks") as info:
        tiny_daino().initialize_from(str(path), "auto")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------ configs
@pytest.mark.parametrize("path", sorted((ROOT / "daino" / "configs").glob("*.yaml")), ids=str)
def test_shipped_configs_load(path):
    cfg = load_config(DainoRunConfig, path)
    assert cfg.train.epochs > 0 and cfg.optim.name in ("adamw", "lars", "sgd")


def test_config_validation():
    with pytest.raises(UserError, match="two or more unlabeled crops"):
        load_config(DainoRunConfig, None, ["data.num_global=1", "data.num_local=0"])
    with pytest.raises(UserError, match="teacher_momentum"):
        load_config(DainoRunConfig, None, ["daino.teacher_momentum=1.5"])
    with pytest.raises(UserError, match="swav"):
        load_config(DainoRunConfig, None, ["model.init_format=swav"])


def test_init_from_dino_copies_the_student_into_the_teacher_by_default(tmp_path):
    """Official Daino: the teacher starts as a copy of the loaded student, not DINO's teacher."""
    path = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    src_student, _ = dino_full_checkpoint(path)
    method = tiny_daino(5, ["model.backbone=vit_tiny"])
    method.initialize_from(str(path), "auto")
    own, ref = method.student.state_dict(), src_student.state_dict()
    for key in own:
        if key.startswith("backbone."):
            torch.testing.assert_close(own[key], ref[key], msg=key)
    teacher = method.teacher.state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in own.items())


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "switch"])
def test_labeled_mixup_copies_are_weighted_as_samples(mode):
    """Official Daino labeled mixup: mixed copies appended, one sample each, like Suave."""
    torch.manual_seed(0)
    method = tiny_daino(5, [f"daino.mixup={mode}", "daino.label_smoothing=0.01"])
    out = method.training_step(random_batch(), ctx())
    t = out.terms
    assert set(t) >= {"loss_unlabeled", "loss_labeled", "loss_labeled_mix"}
    total = (t["loss_unlabeled"] * 4 * 4 + t["loss_labeled"] * 3 + t["loss_labeled_mix"] * 3) / 22
    torch.testing.assert_close(out.loss, total)
    torch.manual_seed(0)
    again = tiny_daino(5, [f"daino.mixup={mode}", "daino.label_smoothing=0.01"])
    torch.testing.assert_close(again.training_step(random_batch(), ctx()).loss, out.loss)


@pytest.mark.parametrize("views", [(2, 10), (2, 2), (3, 2)])
def test_vectorised_cross_view_loss_equals_the_pairwise_loop(views):
    num_teacher, num_student = views
    g = torch.Generator().manual_seed(11)
    student = [torch.randn(8, 50, generator=g, requires_grad=True) for _ in range(num_student)]
    teacher = [torch.softmax(torch.randn(8, 50, generator=g) / 0.04, 1) for _ in range(num_teacher)]
    pairs = num_teacher * num_student - min(num_teacher, num_student)
    fast = dino_cross_view_loss(student, teacher, 0.1)
    loop = _dino_cross_view_loss_loop(student, teacher, 0.1, pairs)
    assert abs(fast.item() - loop.item()) <= 1e-6 * max(1.0, abs(loop.item()))
    grads_fast = torch.autograd.grad(fast, student)
    grads_loop = torch.autograd.grad(loop, student)
    for a, b in zip(grads_fast, grads_loop):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
