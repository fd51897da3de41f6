import math

import pytest
import torch
import torch.nn.functional as F

from common.config import load_config
from common.losses import labeled_loss, soft_cross_entropy, weighted_total
from common.method import StepContext
from common.optim import OptimConfig, build_optimizer, param_groups
from suave.loss import swapped_prediction_loss
from suave.method import Suave, SuaveRunConfig
from suave.queue import EmbeddingQueue
from tests.helpers import random_multicrop_batch

OVERRIDES = [
    "model.backbone=resnet_mini", "suave.projector_hidden_dim=64", "suave.embed_dim=32",
    "data.num_local=2", "train.batch_size_unlabeled=8", "train.batch_size_labeled=4",
]  # fmt: skip


def make_method(extra=(), num_classes=10) -> Suave:
    cfg = load_config(SuaveRunConfig, None, OVERRIDES + list(extra))
    method = Suave(cfg, num_classes)
    method.setup(epochs=1, steps_per_epoch=10)
    return method


def ctx(step=0):
    return StepContext(step, 0, step, 10, 10, torch.device("cpu"), torch.Generator().manual_seed(1))


def test_swapped_prediction_matches_manual():
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(6, 5, generator=g) for _ in range(3)]
    codes = {0: F.softmax(torch.randn(6, 5, generator=g), 1), 1: F.softmax(torch.randn(6, 5), 1)}
    loss = swapped_prediction_loss(scores, codes, temperature=0.1)
    manual = 0.0
    for i, q in codes.items():
        others = [v for v in range(3) if v != i]
        manual += sum(-(q * F.log_softmax(scores[v] / 0.1, 1)).sum(1).mean() for v in others) / len(
            others
        )
    torch.testing.assert_close(loss, manual / 2)


def test_labeled_loss_and_weighting():
    scores = torch.tensor([[0.9, 0.1, -0.2]])
    loss = labeled_loss(scores, torch.tensor([0]), temperature=0.1, label_smoothing=0.0)
    expected = -F.log_softmax(scores / 0.1, 1)[0, 0]
    torch.testing.assert_close(loss, expected)
    a, b = torch.tensor(2.0), torch.tensor(5.0)
    torch.testing.assert_close(weighted_total([(a, 30), (b, 10)]), torch.tensor(2.75))
    t = F.one_hot(torch.tensor([0]), 3).float()
    torch.testing.assert_close(soft_cross_entropy(scores / 0.1, t), expected)


def test_gradients_reach_backbone_projector_prototypes_and_prototypes_stay_unit_norm():
    torch.manual_seed(0)
    method = make_method()
    method.train()
    out = method.training_step(random_multicrop_batch(), ctx())
    assert set(out.terms) == {"loss_unlabeled", "loss_labeled"}
    n_unl, n_lab = 8 * 4, 4
    expected = (out.terms["loss_unlabeled"] * n_unl + out.terms["loss_labeled"] * n_lab) / 36
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    net = method.net
    for name, module in [("backbone", net.backbone), ("projector", net.projector),
                         ("prototypes", net.prototypes)]:  # fmt: skip
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    opt = build_optimizer(OptimConfig(name="sgd", base_lr=0.5), param_groups(net), "cpu")
    for step in range(3):
        opt.zero_grad()
        method.training_step(random_multicrop_batch(seed=step), ctx(step)).loss.backward()
        opt.step()
        method.after_optimizer_step(ctx(step))
        norms = net.prototypes.weight.norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))


def test_freeze_prototypes_drops_their_gradient():
    method = make_method(["suave.freeze_prototypes_steps=5"])
    method.training_step(random_multicrop_batch(), ctx(0)).loss.backward()
    method.before_optimizer_step(ctx(0))
    assert method.net.prototypes.weight.grad is None
    assert method.net.projector[0].weight.grad is not None


def test_queue_is_filled_and_used():
    method = make_method(["suave.queue_length=16"])
    assert method.queue.length == 16
    method.training_step(random_multicrop_batch(), ctx(0))
    assert int(method.queue.filled) == 8
    method.training_step(random_multicrop_batch(seed=1), ctx(1))
    method.training_step(random_multicrop_batch(seed=2), ctx(2))
    assert int(method.queue.filled) == 16
    q = EmbeddingQueue(1, 4, 2)
    q.push([torch.tensor([[1.0, 0], [2, 0]])])
    q.push([torch.tensor([[3.0, 0]])])
    assert q.get(0)[:, 0].tolist() == [3.0, 1.0, 2.0]


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixup_terms_are_weighted_by_samples(mode):
    method = make_method([f"suave.mixup={mode}", "suave.mixup_on=both"])
    out = method.training_step(random_multicrop_batch(), ctx())
    t = out.terms
    assert set(t) == {"loss_unlabeled", "loss_labeled", "loss_labeled_mix", "loss_unlabeled_mix"}
    total = (t["loss_unlabeled"] * 32 + t["loss_labeled"] * 4 + t["loss_labeled_mix"] * 4
             + t["loss_unlabeled_mix"] * 8) / 48  # fmt: skip
    torch.testing.assert_close(out.loss, total)
    assert math.isfinite(out.loss.item())


def test_momentum_encoder_targets():
    method = make_method(["suave.use_momentum=true", "suave.momentum=0.5"])
    out = method.training_step(random_multicrop_batch(), ctx())
    out.loss.backward()
    assert all(p.grad is None for p in method.ema.parameters())
    before = [p.detach().clone() for p in method.ema.parameters()]
    with torch.no_grad():
        for p in method.net.parameters():
            p.add_(1.0)
    method.after_optimizer_step(ctx(0))
    student = list(method.net.parameters())
    for b, t, s in zip(before, method.ema.parameters(), student):
        if t.ndim == 2 and t.shape == method.net.prototypes.weight.shape:
            continue  # prototypes are re-normalised after the EMA
        torch.testing.assert_close(t, 0.5 * b + 0.5 * s.detach())


def test_queue_joins_the_assignments_only_once_full():
    """Official SwAV/Suave: a partly filled queue is not used (suave.queue_use=full)."""
    seen = []

    def spy(method):
        original = method.queue.get

        def get(slot):
            seen.append(int(method.queue.filled))
            return original(slot)

        method.queue.get = get

    method = make_method(["suave.queue_length=16"])
    spy(method)
    for step in range(3):  # filled 0 -> 8 -> 16: used only at the third step
        method.training_step(random_multicrop_batch(seed=step), ctx(step))
    assert seen == [16, 16]  # two assignment crops
    seen.clear()
    method = make_method(["suave.queue_length=16", "suave.queue_use=partial"])
    spy(method)
    for step in range(2):
        method.training_step(random_multicrop_batch(seed=step), ctx(step))
    assert seen == [8, 8]


def test_mixup_switch_picks_mixup_or_cutmix_per_batch_reproducibly():
    from common.mixup import mix

    x1, x2 = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    modes = []
    for seed in range(20):
        a, lam_a = mix(x1, x2, "switch", 1.0, torch.Generator().manual_seed(seed))
        b, lam_b = mix(x1, x2, "switch", 1.0, torch.Generator().manual_seed(seed))
        assert torch.equal(a, b) and lam_a == lam_b  # same generator, same batch
        cutmix = bool(((a == 0) | (a == 1)).all())  # pasted box: every pixel is x1 or x2
        modes.append(cutmix)
    assert any(modes) and not all(modes)
    _, lam = mix(x1, x2, "switch", 1.0, torch.Generator().manual_seed(0), switch_prob=0.0)
    out, _ = mix(x1, x2, "switch", 1.0, torch.Generator().manual_seed(0), switch_prob=0.0)
    torch.testing.assert_close(out, torch.full_like(x1, 1 - lam))  # p 0: always mixup


def test_suave_switch_mode_trains_on_both_globals():
    method = make_method(["suave.mixup=switch", "suave.mixup_on=both"])
    out = method.training_step(random_multicrop_batch(), ctx())
    assert {"loss_labeled_mix", "loss_unlabeled_mix"} <= set(out.terms)
    assert math.isfinite(out.loss.item())


def test_swapped_prediction_gradients_match_the_pairwise_formula():
    """The batched loss (one log softmax per view, a dot per pair) has the pairwise gradients,
    also from fp16/bf16 scores (computed in float32)."""
    g = torch.Generator().manual_seed(3)
    for dtype, atol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-3)):
        base = [torch.randn(5, 7, generator=g).to(dtype) for _ in range(4)]
        codes = {0: F.softmax(torch.randn(5, 7, generator=g), 1),
                 2: F.softmax(torch.randn(5, 7, generator=g), 1)}  # fmt: skip
        fast = [b.clone().requires_grad_() for b in base]
        slow = [b.float().requires_grad_() for b in base]  # the pairwise formula in float32
        swapped_prediction_loss(fast, codes, 0.1).backward()
        manual = (
            sum(
                sum(soft_cross_entropy(slow[v] / 0.1, q) for v in range(4) if v != i) / 3
                for i, q in codes.items()
            )
            / 2
        )
        manual.backward()
        for a, b in zip(fast, slow):
            assert a.grad.dtype == dtype
            torch.testing.assert_close(a.grad.float(), b.grad, atol=atol, rtol=1e-2)


def test_queue_count_is_read_again_after_a_state_load():
    queue = EmbeddingQueue(2, 8, 4)
    queue.push([F.normalize(torch.randn(3, 4), dim=1)] * 2)
    assert queue.count() == 3 and queue.get(0).shape == (3, 4)
    fresh = EmbeddingQueue(2, 8, 4)
    assert fresh.count() == 0
    fresh.load_state_dict(queue.state_dict())  # e.g. --resume
    assert fresh.count() == 3 and int(fresh.filled) == 3
    fresh.push([torch.zeros(6, 4)] * 2)
    assert fresh.count() == 8 and int(fresh.filled) == 8


def test_mixed_labels_loss_is_the_cross_entropy_against_mixed_smoothed_labels():
    """The one mixed-label term Suave and Daino share: mix_permuted's permutation and weight
    mix the smoothed one-hot targets as they mixed the images."""
    from common.losses import mixed_labels_loss, smoothed_one_hot, soft_cross_entropy
    from common.mixup import mix_permuted

    g = torch.Generator().manual_seed(3)
    images, labels = torch.randn(6, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 4, 0])
    mixed, perm, lam = mix_permuted(images, images, "mixup", 1.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images[perm])
    logits = torch.randn(6, 5, generator=g)
    y = smoothed_one_hot(labels, 5, 0.1)
    expected = soft_cross_entropy(logits, lam * y + (1 - lam) * y[perm])
    torch.testing.assert_close(mixed_labels_loss(logits, labels, perm, lam, 5, 0.1), expected)
    no_mix = mixed_labels_loss(logits, labels, perm, 1.0, 5, 0.0)  # weight 1: the plain labels
    torch.testing.assert_close(no_mix, torch.nn.functional.cross_entropy(logits, labels))
