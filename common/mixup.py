"""Mixup / CutMix with a per-step generator; returns the effective mixing weight."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch

from common.errors import UserError


@dataclass
class MixupConfig:
    """The mixup / CutMix keys of every method's section (suave.*, daino.*, supervised.*):
    "switch" (official Suave / Daino) picks mixup or CutMix at random per batch, CutMix with
    probability ``mixup_switch_prob``; both draw their weight from Beta(alpha, alpha)."""

    mixup: Literal["none", "mixup", "cutmix", "switch"] = "none"
    mixup_alpha: float = 1.0
    mixup_switch_prob: float = 0.5

    def validate_mixup(self, section: str) -> None:
        if self.mixup_alpha <= 0 or not 0 <= self.mixup_switch_prob <= 1:
            raise UserError(f"{section}.mixup_alpha must be > 0 and mixup_switch_prob in [0, 1]")


# The config keys that describe a labeled-batch mix (a supervised-only twin copies them).
LABELED_MIXUP_KEYS = tuple(f.name for f in fields(MixupConfig))


def labeled_mixup_settings(section: Mapping) -> dict:
    """The mixup settings a method's config section applies to its labeled batch ({} if none).

    A supervised-only twin copies them: labeled mixup is an augmentation of the labeled batch
    (it lifts a supervised baseline by several points), so a comparison with it on one side only
    would credit the unlabeled images with mixup's gain. Suave's ``mixup_on: unlabeled`` mixes
    only unlabeled globals; Daino has no ``mixup_on`` (its mixup is labeled only).
    """
    if section.get("mixup", "none") == "none" or section.get("mixup_on", "labeled") == "unlabeled":
        return {}
    return {k: section[k] for k in LABELED_MIXUP_KEYS if k in section}


def sample_lambda(alpha: float, generator: torch.Generator) -> float:
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator):
    """Box of area ~(1-lam) of the image, clipped at the borders: (top, bottom, left, right)."""
    cut = np.sqrt(1.0 - lam)
    h, w = int(height * cut), int(width * cut)
    cy = int(torch.randint(height, (1,), generator=generator))
    cx = int(torch.randint(width, (1,), generator=generator))
    top, bottom = max(cy - h // 2, 0), min(cy + h // 2, height)
    left, right = max(cx - w // 2, 0), min(cx + w // 2, width)
    return top, bottom, left, right


def mix(
    x1: torch.Tensor,
    x2: torch.Tensor,
    mode: str,
    alpha: float,
    generator: torch.Generator,
    switch_prob: float = 0.5,
) -> tuple[torch.Tensor, float]:
    """Blend two equally-shaped image batches; returns (mixed, weight of x1).

    For CutMix the weight is the exact share of x1's pixels left after pasting the box.
    ``mode="switch"`` (official Suave/Daino): per call, CutMix with probability ``switch_prob``,
    else mixup, both with the same alpha (timm's Mixup with mixup_alpha = cutmix_alpha = 1).
    """
    if mode == "switch":
        use_cutmix = float(torch.rand((), generator=generator)) < switch_prob
        mode = "cutmix" if use_cutmix else "mixup"
    lam = sample_lambda(alpha, generator)
    if mode == "mixup":
        return x1 * lam + x2 * (1.0 - lam), lam
    if mode == "cutmix":
        height, width = x1.shape[-2:]
        top, bottom, left, right = cutmix_box(height, width, lam, generator)
        mixed = x1.clone()
        mixed[..., top:bottom, left:right] = x2[..., top:bottom, left:right]
        area = (bottom - top) * (right - left)
        return mixed, 1.0 - area / float(height * width)
    raise ValueError(f"unknown mix mode {mode}")


def batch_permutation(batch: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randperm(batch, generator=generator).to(device)


def mix_permuted(
    x1: torch.Tensor,
    x2: torch.Tensor,
    mode: str,
    alpha: float,
    generator: torch.Generator,
    switch_prob: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``x1`` blended with a random permutation of ``x2`` (a batch with itself, or one global
    crop with another): (mixed, permutation, weight of x1), the mixed targets' recipe."""
    perm = batch_permutation(x1.shape[0], generator, x1.device)
    mixed, lam = mix(x1, x2[perm], mode, alpha, generator, switch_prob)
    return mixed, perm, lam
