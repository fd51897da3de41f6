"""Classifier accuracy on a validation loader, exact under any number of processes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from common import dist


def model_outputs(
    fn: Callable, loader, device: torch.device, amp_ctx=None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(fn(images), targets)`` per batch of ``(images, targets)``, both on ``device``, ``fn``
    run under ``amp_ctx()`` when given (the run's autocast)."""
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        with amp_ctx() if amp_ctx is not None else contextlib.nullcontext():
            out = fn(images)
        yield out, targets.to(device, non_blocking=True)


@torch.no_grad()
def evaluate_classifier(classify, loader, device: torch.device, amp_ctx=None) -> dict:
    """Top-1/top-5 (%) of ``classify(images) -> logits`` over the (sharded) loader."""
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct@1, correct@5, total
    for logits, targets in model_outputs(classify, loader, device, amp_ctx):
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
