"""Suave's loss as pure functions (solo-learn style): testable on CPU without a model."""

from __future__ import annotations

import torch

from common.losses import soft_cross_entropy


def swapped_prediction_loss(
    view_scores: list[torch.Tensor],
    assignments: dict[int, torch.Tensor],
    temperature: float,
) -> torch.Tensor:
    """SwAV's swapped prediction: every other view predicts each assignment view's codes.

    ``view_scores[v]``: B x K prototype scores of view v; ``assignments[i]``: B x K targets
    (Sinkhorn-Knopp codes) of assignment view i. Mean over assignment views and predictors.
    """
    total = view_scores[0].new_zeros(())
    for i, q in assignments.items():
        others = [v for v in range(len(view_scores)) if v != i]
        sub = sum(soft_cross_entropy(view_scores[v] / temperature, q) for v in others)
        total = total + sub / len(others)
    return total / len(assignments)
