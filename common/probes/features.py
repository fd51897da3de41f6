"""Frozen features of every image of a loader, gathered from all ranks in data-set order.

The validation loaders shard images ``rank::world`` without padding, so shards differ in size by
up to one image; they are padded for the collective and trimmed afterwards. Gathering the data-set
indices too puts the rows back in data-set order, so the result does not depend on the number of
processes.
"""

from __future__ import annotations

import torch

from common import dist
from common.accuracy import model_outputs
from common.errors import UserError


def _gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate variable-length tensors (same trailing shape) of all ranks, rank by rank."""
    if not dist.is_dist():
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = dist.all_gather_cat(size).tolist()
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = dist.all_gather_cat(padded).split(max(sizes))
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def _shard_indices(loader, count: int) -> torch.Tensor:
    """Data-set index of each local row: a ``Subset`` knows them; otherwise local order."""
    indices = getattr(loader.dataset, "indices", None)
    if indices is None or len(indices) != count:
        return torch.arange(count) * dist.world_size() + dist.rank()
    return torch.as_tensor(list(indices), dtype=torch.long)


@torch.no_grad()
def extract_features(
    feature_fn, loader, device: torch.device, amp_ctx=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``feature_fn(images) -> (B, D)`` over the loader: float32 features and labels, all ranks.

    Rows come back sorted by data-set index, identical on every rank.
    """
    feats, labels = [], []
    for out, targets in model_outputs(feature_fn, loader, device, amp_ctx):
        feats.append(out.float().flatten(1))
        labels.append(targets)
    if not feats:  # an empty shard has no feature size to gather (more ranks than images)
        raise UserError(f"no images to extract features from on rank {dist.rank()}")
    local_feats, local_labels = torch.cat(feats), torch.cat(labels).long()
    index = _shard_indices(loader, local_feats.shape[0]).to(device)
    all_feats, all_labels, all_index = (_gather_rows(t) for t in (local_feats, local_labels, index))
    order = torch.argsort(all_index)
    return all_feats[order], all_labels[order]
