"""Suave's loss as pure functions (solo-learn style): testable on CPU without a model."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swapped_prediction_loss(
    view_scores: list[torch.Tensor],
    assignments: dict[int, torch.Tensor],
    temperature: float,
) -> torch.Tensor:
    """SwAV's swapped prediction: every other view predicts each assignment view's codes.

    ``view_scores[v]``: B x K prototype scores of view v; ``assignments[i]``: B x K targets
    (Sinkhorn-Knopp codes) of assignment view i. Mean over assignment views and predictors.

    One log softmax per view and one dot product per (codes, predictor) pair, instead of a
    handful of B x K kernels per pair: the per-pair sum over samples and prototypes is
    dot(q_i, L_v) with L_v the log softmax of view v.
    """
    log_p = [F.log_softmax(v.float() / temperature, dim=1).reshape(-1) for v in view_scores]
    dots = []
    for i, q in assignments.items():
        q = q.float().reshape(-1)
        dots += [torch.dot(q, lp) for v, lp in enumerate(log_p) if v != i]
    batch = view_scores[0].shape[0]
    return torch.stack(dots).sum() / (-len(assignments) * (len(view_scores) - 1) * batch)
