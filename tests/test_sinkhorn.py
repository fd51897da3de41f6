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
