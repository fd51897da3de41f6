"""Sinkhorn-Knopp equipartition of a batch over prototypes, across all processes."""

from __future__ import annotations

import torch

from common import dist


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3
) -> torch.Tensor:
    """Soft assignments Q (B_local x K) of the global batch to K prototypes.

    Solves the entropic transport problem whose prototype marginals are uniform (B_global/K each)
    and sample marginals are 1, by alternately rescaling rows and columns of exp(scores/eps).
    The prototype-side sums are all-reduced so every rank normalises with the global batch;
    the result equals running on the concatenation of all ranks' scores.
    Each returned row sums to 1. Computed in float32 with the global max subtracted before exp,
    so small epsilons cannot overflow.
    """
    logits = scores.detach().float() / epsilon
    peak = logits.max().reshape(1)
    dist.all_reduce_(peak, "max")
    q = torch.exp(logits - peak).t()  # K x B_local
    num_prototypes = q.shape[0]
    batch = torch.tensor([float(q.shape[1])], device=q.device)
    dist.all_reduce_(batch)
    total = q.sum().reshape(1)
    dist.all_reduce_(total)
    q /= total
    tiny = torch.finfo(q.dtype).tiny
    for _ in range(iterations):
        row_sums = q.sum(dim=1, keepdim=True)
        dist.all_reduce_(row_sums)
        q /= row_sums.clamp_min_(tiny)  # a prototype no sample reaches keeps zero mass
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    q *= batch
    return q.t()
