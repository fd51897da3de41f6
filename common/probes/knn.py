"""Weighted k-nearest-neighbour classifier on frozen features (the DINO evaluation).

Cosine similarity between L2-normalised features; each of the k nearest training images votes
for its class with weight exp(similarity / T). No training, no hyper-parameter search: a quick,
honest measure of how well the feature space separates classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.errors import UserError


@torch.no_grad()
def knn_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class votes (N_test, C) of the weighted k-NN; chunks bound the similarity matrix size."""
    if k < 1 or temperature <= 0:
        raise UserError(f"k-NN needs k >= 1 and temperature > 0, got k={k}, T={temperature}")
    if train_feats.shape[0] == 0:
        raise UserError("k-NN needs at least one training image")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise UserError("k-NN train and test features have different dimensions")
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    labels = train_labels.long().to(train.device)
    k = min(k, train.shape[0])
    votes = []
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start : start + chunk_size] @ train.t()
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(sim.shape[0], num_classes, device=train.device)
        votes.append(scores.scatter_add_(1, labels[top_idx], weights))
    return torch.cat(votes) if votes else torch.zeros(0, num_classes, device=train.device)


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> dict:
    """Top-1 / top-5 (%) of class scores; top-5 becomes top-C when there are fewer classes."""
    if scores.shape[0] == 0:
        return {"top1": 0.0, "top5": 0.0, "num_images": 0}
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hits = top.eq(targets.to(top.device).long()[:, None])
    n = targets.numel()
    return {
        "top1": 100.0 * hits[:, 0].sum().item() / n,
        "top5": 100.0 * hits.any(dim=1).sum().item() / n,
        "num_images": n,
    }


def knn_accuracy(
    train_feats, train_labels, test_feats, test_labels, num_classes: int, k: int = 20,
    temperature: float = 0.07,
) -> dict:  # fmt: skip
    """Top-1 / top-5 (%) of the weighted k-NN classifier, with its settings."""
    scores = knn_scores(train_feats, train_labels, test_feats, num_classes, k, temperature)
    return {**topk_accuracy(scores, test_labels), "k": min(k, len(train_labels)),
            "temperature": temperature}  # fmt: skip
