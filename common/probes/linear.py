"""Linear probe: multinomial logistic regression on frozen, pre-computed features.

Full-batch L-BFGS from zero weights solves a convex problem, so the result depends only on the
features, the weight decay and the iteration budget: no augmentation, no learning-rate schedule,
the same number on every run. Features are L2-normalised, then standardised with the training
statistics, which makes one weight-decay grid work for any backbone. With ``weight_decay`` unset
the decay is chosen on a seeded held-out part of the training features (as in the SimCLR
L-BFGS protocol), then the probe is refit on all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.errors import UserError
from common.probes.knn import topk_accuracy


@dataclass
class LinearProbeConfig:
    weight_decay: float | None = None  # None: choose from wd_grid on a held-out split
    wd_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    holdout_fraction: float = 0.2
    max_iter: int = 100
    seed: int = 0

    def validate(self) -> None:
        if self.weight_decay is not None and self.weight_decay < 0:
            raise UserError("linear probe weight decay must be >= 0")
        if self.weight_decay is None and not self.wd_grid:
            raise UserError("linear probe needs a weight decay or a non-empty grid")
        if not 0 < self.holdout_fraction < 1 or self.max_iter < 1:
            raise UserError("linear probe: 0 < holdout_fraction < 1 and max_iter >= 1")


def standardizer(train_feats: torch.Tensor):
    """L2-normalise, then centre and scale each dimension with the training statistics."""
    base = F.normalize(train_feats.float(), dim=1)
    mean = base.mean(0)
    std = base.std(0).clamp_min(1e-6) if base.shape[0] > 1 else torch.ones_like(mean)

    def apply(feats: torch.Tensor) -> torch.Tensor:
        return (F.normalize(feats.float(), dim=1) - mean) / std

    return apply


def fit_logistic(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean cross-entropy + wd/2 * |W|^2 (bias not decayed); returns (W, b)."""
    labels = labels.long().to(feats.device)
    weight = torch.zeros(num_classes, feats.shape[1], device=feats.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=feats.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(feats @ weight.t() + bias, labels)
        loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


def _select_weight_decay(feats, labels, num_classes, cfg: LinearProbeConfig) -> dict:
    """Held-out top-1 of every grid value; the best one (the larger decay on ties)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(feats.shape[0], generator=gen).to(feats.device)
    n_hold = max(1, int(round(cfg.holdout_fraction * feats.shape[0])))
    hold, fit = perm[:n_hold], perm[n_hold:]
    if fit.numel() == 0:
        raise UserError("too few training images to choose the linear probe weight decay")
    scores = {}
    for wd in cfg.wd_grid:
        norm = standardizer(feats[fit])
        w, b = fit_logistic(norm(feats[fit]), labels[fit], num_classes, wd, cfg.max_iter)
        pred = (norm(feats[hold]) @ w.t() + b).argmax(1)
        scores[wd] = 100.0 * pred.eq(labels[hold].to(pred.device)).float().mean().item()
    best = max(sorted(scores, reverse=True), key=lambda wd: scores[wd])
    return {"weight_decay": best, "holdout_top1": scores}


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    cfg: LinearProbeConfig | None = None,
) -> dict:
    """Fit on the training features, report top-1 / top-5 (%) on the test features."""
    cfg = cfg or LinearProbeConfig()
    cfg.validate()
    if train_feats.shape[0] == 0:
        raise UserError("the linear probe needs at least one training image")
    info = {}
    if cfg.weight_decay is None:
        info = _select_weight_decay(train_feats, train_labels, num_classes, cfg)
        wd = info["weight_decay"]
    else:
        wd = cfg.weight_decay
    norm = standardizer(train_feats)
    weight, bias = fit_logistic(norm(train_feats), train_labels, num_classes, wd, cfg.max_iter)
    scores = norm(test_feats) @ weight.t() + bias
    result = {**topk_accuracy(scores, test_labels), "weight_decay": wd}
    if "holdout_top1" in info:
        result["holdout_top1"] = {f"{k:g}": v for k, v in info["holdout_top1"].items()}
    return result
