"""Loss pieces shared by Suave and Daino (pure functions, testable on CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.errors import UserError
from common.schedules import sigmoid_rampup


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_k target_k log softmax(logits)_k (computed in float32)."""
    return -(targets.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    one_hot = F.one_hot(labels, num_classes).float()
    return one_hot * (1 - smoothing) + smoothing / num_classes


def mixed_labels_loss(
    scaled_logits: torch.Tensor,
    labels: torch.Tensor,
    perm: torch.Tensor,
    lam: float,
    num_classes: int,
    smoothing: float,
) -> torch.Tensor:
    """Cross-entropy of mixed labeled images (``mix_permuted``) against the same mix of their
    smoothed one-hot labels; ``scaled_logits`` already divided by the temperature."""
    y = smoothed_one_hot(labels, num_classes, smoothing)
    return soft_cross_entropy(scaled_logits, lam * y + (1 - lam) * y[perm])


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


@torch.no_grad()
def target_stats(
    targets: torch.Tensor, labels: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """How informative soft pseudo-labels (B x K rows summing to 1) are, for monitoring.

    ``target_entropy``: mean row entropy in nats (ln K = uniform, i.e. no signal);
    ``target_used``: how many of the K prototypes are the argmax of at least one row (a small
    number = collapse onto a few clusters); ``target_max``: mean top probability;
    ``target_acc`` (with ``labels``, the classes of the rows' images, repeated per view): % of
    rows whose argmax is the image's class, the pseudo-labels' accuracy. Only a monitor: the
    labels of unlabeled images never reach a loss (and mean nothing when the unlabeled folders
    are not their classes).
    """
    p = targets.detach().float()
    entropy = -(p * p.clamp_min(1e-12).log()).sum(dim=1).mean()
    top = p.argmax(dim=1)
    used = torch.bincount(top, minlength=p.shape[1]).gt(0).sum()
    # tensors: the engine reads metrics back on logging steps only (no host sync per step)
    stats = {"target_entropy": entropy, "target_used": used.float(),
             "target_max": p.max(dim=1).values.mean()}  # fmt: skip
    if labels is not None and labels.numel() and p.shape[0] % labels.numel() == 0:
        truth = labels.to(top.device).repeat(p.shape[0] // labels.numel())
        stats["target_acc"] = (top == truth).float().mean() * 100
    return stats


def balanced_total(
    labeled: list[tuple[torch.Tensor, int]],
    unlabeled: list[tuple[torch.Tensor, int]],
    labeled_share: float = 0.0,
    unlabeled_weight: float = 1.0,
) -> torch.Tensor:
    """Total loss with the labeled terms given ``labeled_share`` of the weight (0: per-sample).

    The per-sample mean (``labeled_share=0``, the paper's weighting) gives labels only
    B_l / (B_l + B_u * crops) of the gradient: 20 % at 64 labeled + 64 x 4 unlabeled crops, so
    at small scale the classifier learns from its labels 5x slower than a supervised run would.
    A fixed share keeps that rate whatever the number of crops.

    ``unlabeled_weight`` (a ramp-up, ``sigmoid_rampup``) scales the unlabeled terms after the
    weighting, so that 1.0 is exactly the unramped total.
    """
    if unlabeled_weight != 1.0:
        unlabeled = [(loss * unlabeled_weight, n) for loss, n in unlabeled]
    if labeled_share <= 0 or not labeled or not unlabeled:
        return weighted_total(unlabeled + labeled)
    return labeled_share * weighted_total(labeled) + (1 - labeled_share) * weighted_total(unlabeled)


def validate_rampup(section: str, rampup: float) -> None:
    if not 0 <= rampup <= 1:
        raise UserError(f"{section}.unlabeled_rampup must be in [0, 1] (a share of the steps)")


def rampup_weight(rampup: float, ctx) -> float:
    """The unlabeled loss's weight at this step: ``sigmoid_rampup`` over ``rampup`` of the run's
    steps (``ctx``: a ``StepContext``); depends on the step only, so a resume continues it."""
    return sigmoid_rampup(ctx.step, rampup * ctx.total_steps)
