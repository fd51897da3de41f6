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
    return evaluate_classifiers(lambda x: {"": classify(x)}, [""], loader, device, amp_ctx)[""]


@torch.no_grad()
def evaluate_classifiers(
    classify_all, names: list[str], loader, device: torch.device, amp_ctx=None
) -> dict:
    """Top-1/top-5 (%) of the classifiers ``names`` of ``classify_all(images) -> {name: logits}``
    over one pass of the (sharded) loader: ``{name: {"top1", "top5", "num_images"}}``. The names
    are given, not discovered, so that a rank whose shard is empty still joins the reduction."""
    # per name: correct@1, correct@5, total; one tensor, one all-reduce
    counts = torch.zeros(len(names), 3, dtype=torch.float64, device=device)
    for outputs, targets in model_outputs(classify_all, loader, device, amp_ctx):
        for i, name in enumerate(names):
            logits = outputs[name]
            k = min(5, logits.shape[1])
            hits = logits.float().topk(k, dim=1).indices.eq(targets[:, None])
            counts[i, 0] += hits[:, 0].sum()
            counts[i, 1] += hits.any(dim=1).sum()
            counts[i, 2] += targets.numel()
    dist.all_reduce_(counts)
    results = {}
    for name, count in zip(names, counts):
        total = max(count[2].item(), 1.0)
        results[name] = {
            "top1": 100.0 * count[0].item() / total,
            "top5": 100.0 * count[1].item() / total,
            "num_images": int(count[2].item()),
        }
    return results
