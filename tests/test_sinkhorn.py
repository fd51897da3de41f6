import numpy as np
import pytest
import torch
import torch.nn.functional as F

from suave.sinkhorn import sinkhorn_knopp
from tests.dist_utils import run_distributed


def cosine_scores(batch: int, prototypes: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(batch, dim, generator=g), dim=1)
    c = F.normalize(torch.randn(prototypes, dim, generator=g), dim=1)
    return z @ c.t()


def reference_sinkhorn(scores: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """Independent float64 implementation on the (B x K) orientation."""
    q = np.exp(scores.astype(np.float64) / eps)
    b, k = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=0, keepdims=True) * k  # each prototype gets mass 1/K
        q /= q.sum(axis=1, keepdims=True) * b  # each sample gets mass 1/B
    return q * b


def test_each_sample_sums_to_one():
    q = sinkhorn_knopp(cosine_scores(64, 10), epsilon=0.05, iterations=3)
    assert q.shape == (64, 10)
    assert torch.all(q >= 0)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64), atol=1e-5, rtol=0)


def test_prototype_marginals_approach_equipartition():
    scores = cosine_scores(120, 12, seed=1)
    target = 120 / 12
    errors = []
    for iters in (1, 3, 10, 50):
        q = sinkhorn_knopp(scores, epsilon=0.05, iterations=iters)
        errors.append((q.sum(dim=0) - target).abs().max().item())
    assert errors[-1] < 1e-3 * target, errors
    assert errors[0] > errors[-1]  # more iterations -> closer to uniform prototype usage


@pytest.mark.parametrize("iters", [1, 3, 20])
def test_matches_float64_reference(iters):
    scores = cosine_scores(48, 7, seed=2)
    q = sinkhorn_knopp(scores, epsilon=0.05, iterations=iters)
    ref = reference_sinkhorn(scores.numpy(), 0.05, iters)
    np.testing.assert_allclose(q.numpy(), ref, rtol=1e-4, atol=1e-6)


def test_small_epsilon_does_not_overflow():
    scores = cosine_scores(32, 5, seed=3)
    q = sinkhorn_knopp(scores, epsilon=0.005, iterations=3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(32), atol=1e-5, rtol=0)


def _sinkhorn_shard(rank, scores, world):
    shard = scores.chunk(world)[rank]
    return sinkhorn_knopp(shard, epsilon=0.05, iterations=3)


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_concatenated_batch():
    scores = cosine_scores(40, 6, seed=4)
    single = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    parts = run_distributed(_sinkhorn_shard, 2, scores, 2)
    torch.testing.assert_close(torch.cat(parts), single, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ plain vs log domain (issue 20)


def _adversarial_scores() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    ties = torch.full((64, 10), 0.3) + 1e-6 * torch.randn(64, 10, generator=g)  # near-ties
    extreme = cosine_scores(64, 10, seed=6).sign()  # only +-1: the extreme cosine values
    one_hot = torch.full((64, 10), -1.0)
    one_hot[torch.arange(64), torch.arange(64) % 10] = 1.0  # each sample at the span's ends
    return {"random": cosine_scores(64, 10, seed=7), "ties": ties, "extreme": extreme,
            "one_hot": one_hot, "big_k": cosine_scores(256, 1000, dim=64, seed=8)}  # fmt: skip


@pytest.mark.parametrize("name", ["random", "ties", "extreme", "one_hot", "big_k"])
@pytest.mark.parametrize("iters", [1, 3])
def test_plain_equals_log_and_float64_reference(name, iters):
    scores = _adversarial_scores()[name]
    ref = reference_sinkhorn(scores.numpy(), 0.05, iters)
    plain = sinkhorn_knopp(scores, 0.05, iters, mode="plain")
    log = sinkhorn_knopp(scores, 0.05, iters, mode="log")
    auto = sinkhorn_knopp(scores, 0.05, iters)
    np.testing.assert_allclose(plain.numpy(), ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(log.numpy(), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(auto, plain, atol=0, rtol=0)  # cosine scores, eps 0.05: plain


def test_auto_takes_the_log_domain_for_tiny_epsilon_and_unbounded_scores():
    scores = cosine_scores(32, 5, seed=9)
    for eps, s in ((0.005, scores), (1e-4, scores), (0.05, scores * 1e3)):
        auto = sinkhorn_knopp(s, eps, 3)
        assert torch.isfinite(auto).all()
        torch.testing.assert_close(auto, sinkhorn_knopp(s, eps, 3, mode="log"), atol=0, rtol=0)
        torch.testing.assert_close(auto.sum(dim=1), torch.ones(32), atol=1e-5, rtol=0)
    # the plain domain is exactly what would underflow here (exp(-2 / 1e-4) == 0 in float32)
    assert not torch.isfinite(sinkhorn_knopp(scores, 1e-4, 3, mode="plain")).all()
    with pytest.raises(ValueError):
        sinkhorn_knopp(scores, 0.05, 3, mode="fast")


def _sinkhorn_shard_modes(rank, scores, sizes, eps, last):
    shard = scores.split(sizes)[rank]  # unequal shards: the global batch comes from all ranks
    # numpy, not tensors: a tensor's shared memory can vanish with the worker before it is read
    out = {m: sinkhorn_knopp(shard, eps, 3, mode=m).numpy() for m in ("auto", "plain", "log")}
    out["last"] = sinkhorn_knopp(shard, eps, 3, last=last).numpy()
    return out


@pytest.mark.distributed
def test_two_processes_equal_one_process_in_every_mode():
    scores = torch.cat([cosine_scores(40, 6, seed=10), torch.full((8, 6), 0.5)])  # + ties
    sizes = [30, 18]
    parts = run_distributed(_sinkhorn_shard_modes, 2, scores, sizes, 0.05, 5)
    ref = reference_sinkhorn(scores.numpy(), 0.05, 3)
    for mode in ("auto", "plain", "log"):
        joined = torch.from_numpy(np.concatenate([p[mode] for p in parts]))
        torch.testing.assert_close(joined, sinkhorn_knopp(scores, 0.05, 3, mode=mode),
                                   atol=1e-6, rtol=0)  # fmt: skip
        np.testing.assert_allclose(joined.numpy(), ref, rtol=0, atol=1e-6)
    for rank, part in enumerate(parts):  # each rank's last rows of its own shard
        end = sum(sizes[: rank + 1])
        np.testing.assert_allclose(part["last"], ref[end - 5 : end], rtol=0, atol=1e-6)


# ---------------------------------------------- scaling-vector iteration of the plain domain


@pytest.mark.parametrize("shape", [(512, 8), (8, 512)])
def test_plain_scaling_vectors_stay_bounded_over_many_iterations(shape):
    """B >> K and K >> B: without the B/K prototype mass r and c would drift by K/B a step."""
    scores = cosine_scores(*shape, seed=11)
    ref = reference_sinkhorn(scores.numpy(), 0.05, 30)
    plain = sinkhorn_knopp(scores, 0.05, 30, mode="plain")
    assert torch.isfinite(plain).all()
    np.testing.assert_allclose(plain.numpy(), ref, rtol=0, atol=1e-6)
    # the log domain's rounding grows with the iterations (1.2e-6 from the reference here)
    log = sinkhorn_knopp(scores, 0.05, 30, mode="log")
    np.testing.assert_allclose(plain.numpy(), log.numpy(), rtol=0, atol=3e-6)


def test_plain_at_the_auto_limit_and_with_large_offsets():
    """Span / eps right at PLAIN_MAX_SPAN, and scores far from zero (only the span matters)."""
    base = cosine_scores(96, 20, seed=12)
    wide = base / (base.max() - base.min()) * 2.5  # span 2.5 at eps 0.05: span / eps == 50
    for s in (wide, base + 300.0, base - 300.0):
        auto = sinkhorn_knopp(s, 0.05, 3)
        torch.testing.assert_close(auto, sinkhorn_knopp(s, 0.05, 3, mode="plain"), atol=0, rtol=0)
        ref = reference_sinkhorn((s - s.max()).double().numpy(), 0.05, 3)
        np.testing.assert_allclose(auto.numpy(), ref, rtol=0, atol=1e-6)
        np.testing.assert_allclose(auto.numpy(), sinkhorn_knopp(s, 0.05, 3, mode="log"),
                                   rtol=0, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("mode", ["auto", "plain", "log"])
def test_last_rows_equal_the_tail_of_the_full_result(mode):
    scores = cosine_scores(200, 30, seed=13)  # a queue of 136 rows, then a batch of 64
    full = sinkhorn_knopp(scores, 0.05, 3, mode=mode)
    tail = sinkhorn_knopp(scores, 0.05, 3, mode=mode, last=64)
    assert tail.shape == (64, 30)
    torch.testing.assert_close(tail, full[-64:], atol=0, rtol=0)
    with pytest.raises(ValueError):
        sinkhorn_knopp(scores, 0.05, 3, last=0)


def test_tiny_epsilon_on_extreme_scores_takes_the_log_domain_without_overflow():
    scores = _adversarial_scores()["extreme"] * 50.0  # +-50 at eps 1e-3: exp(1e5) in plain
    for eps in (1e-3, 1e-6):
        q = sinkhorn_knopp(scores, eps, 3)
        assert torch.isfinite(q).all() and (q >= 0).all()
        torch.testing.assert_close(q.sum(dim=1), torch.ones(64), atol=1e-5, rtol=0)
        torch.testing.assert_close(q, sinkhorn_knopp(scores, eps, 3, mode="log"), atol=0, rtol=0)


def test_known_bound_gives_the_same_codes_without_reading_scores_back(monkeypatch):
    """Suave's cosine scores are within [-1, 1]: ``bound=1`` shifts by the bound and picks the
    domain from 2 / eps, with no reduction over the scores and no read-back to the host."""
    scores = cosine_scores(96, 20, seed=14)
    for eps in (0.05, 0.03, 0.01):  # 2 / eps = 40 (plain), 67 and 200 (log)
        free = sinkhorn_knopp(scores, eps, 3)
        reads = []

        def counting(name, original, reads=reads):
            return lambda self, *a: reads.append(name) or original(self, *a)

        for name in ("item", "__float__", "__bool__", "tolist"):
            monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        bounded = sinkhorn_knopp(scores, eps, 3, bound=1.0)
        monkeypatch.undo()
        if 2 / eps <= 50:
            assert reads == [], reads  # the log domain reads its global batch size back
        assert torch.isfinite(bounded).all()
        ref = reference_sinkhorn(scores.numpy(), eps, 3)
        # float32 (s - shift) / eps carries ~1e-6 relative error at eps 0.01, in every mode
        atol = 1e-6 if eps > 0.02 else 2e-6
        np.testing.assert_allclose(bounded.numpy(), ref, rtol=0, atol=atol)
        torch.testing.assert_close(bounded, free, atol=2 * atol, rtol=0)
