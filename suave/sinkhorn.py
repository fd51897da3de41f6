"""Sinkhorn-Knopp equipartition of a batch over prototypes, across all processes."""

from __future__ import annotations

import math

import torch

from common import dist


def _global_logsumexp_over_batch(log_q: torch.Tensor) -> torch.Tensor:
    """logsumexp along the batch dimension (dim 1) of the batch concatenated over all ranks."""
    peak = log_q.max(dim=1, keepdim=True).values
    dist.all_reduce_(peak, "max")
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    sums = torch.exp(log_q - peak).sum(dim=1, keepdim=True)
    dist.all_reduce_(sums)
    return peak + torch.log(sums)


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3
) -> torch.Tensor:
    """Soft assignments Q (B_local x K) of the global batch to K prototypes.

    Solves the entropic transport problem whose prototype marginals are uniform (B_global/K each)
    and sample marginals are 1, by alternately rescaling rows and columns of exp(scores/eps).
    The prototype-side sums are all-reduced so every rank normalises with the global batch: the
    result equals running on the concatenation of all ranks' scores. Each returned row sums to 1.
    Works in the log domain in float32, so any epsilon is safe from overflow and underflow.
    """
    log_q = (scores.detach().float() / epsilon).t()  # K x B_local
    num_prototypes = log_q.shape[0]
    batch = torch.tensor([float(log_q.shape[1])], device=log_q.device)
    dist.all_reduce_(batch)
    log_k, log_b = math.log(num_prototypes), math.log(float(batch))
    for _ in range(iterations):
        log_q = log_q - _global_logsumexp_over_batch(log_q) - log_k  # prototype mass 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_b  # sample mass 1/B
    return torch.exp(log_q + log_b).t()
