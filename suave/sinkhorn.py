"""Sinkhorn-Knopp equipartition of a batch over prototypes, across all processes."""

from __future__ import annotations

import math

import torch

from common import dist

# exp(x) is finite and normal in float32 for -87 < x < 88; once scores are shifted by their
# global max, exp((s - max) / eps) lies in [exp(-span / eps), 1]. The plain domain is used when
# that span keeps every entry well above underflow (and the row/column sums far from overflow).
PLAIN_MAX_SPAN = 50.0
MODES = ("auto", "plain", "log")


def _global_logsumexp_over_batch(log_q: torch.Tensor) -> torch.Tensor:
    """logsumexp along the batch dimension (dim 1) of the batch concatenated over all ranks."""
    peak = log_q.max(dim=1, keepdim=True).values
    dist.all_reduce_(peak, "max")
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    sums = torch.exp(log_q - peak).sum(dim=1, keepdim=True)
    dist.all_reduce_(sums)
    return peak + torch.log(sums)


def _global_batch(local: int, device: torch.device) -> float:
    batch = torch.tensor([float(local)], device=device)
    dist.all_reduce_(batch)
    return float(batch)


def _sinkhorn_log(
    scores: torch.Tensor, epsilon: float, iterations: int, peak: torch.Tensor | float
) -> torch.Tensor:
    # the global max shift changes nothing but keeps scores far from 0 from losing digits to /eps
    if isinstance(peak, torch.Tensor):
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    log_q = ((scores - peak) / epsilon).t()  # K x B_local
    log_k = math.log(log_q.shape[0])
    log_b = math.log(_global_batch(log_q.shape[1], log_q.device))
    for _ in range(iterations):
        log_q = log_q - _global_logsumexp_over_batch(log_q) - log_k  # prototype mass 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_b  # sample mass 1/B
    return torch.exp(log_q + log_b).t()


def _sinkhorn_plain(
    scores: torch.Tensor,
    epsilon: float,
    iterations: int,
    peak: torch.Tensor | float,
    last: int | None,
) -> torch.Tensor:
    """SwAV's distributed_sinkhorn with a global max shift, iterating only the scaling vectors.

    The alternating normalisations of Q = exp((scores - max) / eps) are diag(r) Q diag(c) at
    every step, so Q is written once and each iteration is two matrix-vector products (reads
    only): c = (B / K) / (r^T Q) with the prototype sums all-reduced, then r = 1 / (Q c). The
    reference's total-mass normalisation cancels in r. diag(r) Q diag(c) is formed once at the
    end, for the returned rows only.
    """
    # shift first (exact for nearby values, whatever their offset), then scale and exp in place
    q = torch.sub(scores, peak).mul_(1.0 / epsilon).exp_()
    # prototype mass B_global / K keeps r and c at a fixed scale (else they drift by K/B a step)
    if dist.is_dist():
        mass = q.new_full((), float(q.shape[0]))
        dist.all_reduce_(mass)
        mass = mass / q.shape[1]
    else:
        mass = torch.full((), q.shape[0] / q.shape[1], dtype=q.dtype, device=q.device)
    rows = None  # r = 1 at the start: the first column sums are plain sums
    for _ in range(iterations):
        cols = q.sum(dim=0) if rows is None else torch.mv(q.t(), rows)
        dist.all_reduce_(cols)
        cols = torch.div(mass, cols)  # prototypes get equal mass
        rows = torch.mv(q, cols).reciprocal_()  # each sample gets mass 1
    if rows is None:  # no iteration: the reference's row normalisation alone
        return _rows(q.div_(q.sum(dim=1, keepdim=True)), last)
    if last is not None:
        q, rows = q[q.shape[0] - last :], rows[rows.shape[0] - last :]
    return q.mul_(cols).mul_(rows.unsqueeze(1))


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    mode: str = "auto",
    last: int | None = None,
    bound: float | None = None,
) -> torch.Tensor:
    """Soft assignments Q (B_local x K) of the global batch to K prototypes.

    Solves the entropic transport problem whose prototype marginals are uniform (B_global/K each)
    and sample marginals are 1, by alternately rescaling rows and columns of exp(scores/eps).
    The prototype-side sums are all-reduced so every rank normalises with the global batch: the
    result equals running on the concatenation of all ranks' scores. Each returned row sums to 1.

    ``mode``: "plain" works on exp((scores - global max) / eps) directly (fast); "log" works in
    the log domain (safe for any epsilon and score range); "auto" picks "plain" when the global
    score span divided by epsilon is at most ``PLAIN_MAX_SPAN`` (e.g. unit-norm cosine scores at
    eps 0.05: span <= 2, 40), else "log". Without ``bound``, non-finite scores take the log
    domain.

    ``last``: return only the last ``last`` local rows (the batch after a queue); the transport
    is still solved over all rows, but the plain domain then writes only those rows.

    ``bound``: a known bound on |scores| (1 for cosine scores). "auto" then decides from
    2 * bound / eps and the shift is the bound: no reduction and no read-back to the host
    (no device sync per call).
    """
    if mode not in MODES:
        raise ValueError(f"sinkhorn mode must be one of {MODES}, got {mode!r}")
    if last is not None and not 0 < last <= scores.shape[0]:
        raise ValueError(f"sinkhorn last must be in 1..{scores.shape[0]}, got {last}")
    scores = scores.detach().float()
    if bound is not None:  # shift by the bound: no reduction, no collective, no read-back
        peak = float(bound)  # a Python number: no host-to-device copy either
        if mode == "auto" and not 2.0 * bound / epsilon <= PLAIN_MAX_SPAN:
            mode = "log"
    else:
        low, peak = torch.aminmax(scores)
        if dist.is_dist():
            stats = torch.stack([peak, -low])
            dist.all_reduce_(stats, "max")  # global max and -min in one collective
            peak, low = stats[0], -stats[1]
        span = float(peak - low) if mode == "auto" else 0.0
        if not span / epsilon <= PLAIN_MAX_SPAN:  # NaN/inf: comparison False -> log domain
            mode = "log"
    if mode == "log":
        return _rows(_sinkhorn_log(scores, epsilon, iterations, peak), last)
    return _sinkhorn_plain(scores, epsilon, iterations, peak, last)


def _rows(q: torch.Tensor, last: int | None) -> torch.Tensor:
    return q if last is None else q[q.shape[0] - last :]
