"""Loss pieces shared by Suave and Daino (pure functions, testable on CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_k target_k log softmax(logits)_k (computed in float32)."""
    return -(targets.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    one_hot = F.one_hot(labels, num_classes).float()
    return one_hot * (1 - smoothing) + smoothing / num_classes


def weighted_total(terms: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Mean of per-term losses weighted by how many samples each term averages over.

    Equals the mean loss over all samples of the step: sum_t n_t * loss_t / sum_t n_t.
    """
    count = sum(n for _, n in terms)
    return sum(loss * (n / count) for loss, n in terms)


def labeled_loss(
    scores: torch.Tensor, labels: torch.Tensor, temperature: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of prototype scores / temperature against the ground-truth classes.

    Prototype k is class k in both methods, so the labeled term is the same for Suave and Daino.
    """
    return F.cross_entropy(scores.float() / temperature, labels, label_smoothing=label_smoothing)
