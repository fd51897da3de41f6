"""Classifier accuracy on a validation loader, exact under any number of processes."""

from __future__ import annotations

import torch

from common import dist


@torch.no_grad()
def evaluate_classifier(classify, loader, device: torch.device, amp_ctx=None) -> dict:
    """Top-1/top-5 (%) of ``classify(images) -> logits`` over the (sharded) loader."""
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct@1, correct@5, total
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if amp_ctx is not None:
            with amp_ctx():
                logits = classify(images)
        else:
            logits = classify(images)
        k = min(5, logits.shape[1])
        top = logits.float().topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        counts[0] += hits[:, 0].sum()
        counts[1] += hits.any(dim=1).sum()
        counts[2] += targets.numel()
    dist.all_reduce_(counts)
    total = max(counts[2].item(), 1.0)
    return {
        "top1": 100.0 * counts[0].item() / total,
        "top5": 100.0 * counts[1].item() / total,
        "num_images": int(counts[2].item()),
    }
