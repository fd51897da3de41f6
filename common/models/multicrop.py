"""Running a backbone over multi-crop inputs (crops of several resolutions) efficiently."""

from __future__ import annotations

import torch
from torch import nn


def forward_multicrop(backbone: nn.Module, crops: list[torch.Tensor]) -> torch.Tensor:
    """Features of all crops, in input order, with one backbone call per run of same-size crops.

    Concatenating same-resolution crops keeps batches large (and BN statistics shared) while
    crops of another size, which cannot be stacked, get their own call, as in SwAV and DINO.
    """
    feats, start = [], 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
            end += 1
        feats.append(backbone(torch.cat(crops[start:end])))
        start = end
    return torch.cat(feats)
