"""SwAV/DINO augmentations driven by an explicit random generator.

Every random choice comes from a ``numpy.random.Generator`` passed in by the caller, seeded per
sample from (run seed, step, position). The crops of a sample are therefore the same whatever the
number of workers or processes, which makes resumed and distributed runs reproduce exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.507, 0.487, 0.441)
CIFAR_STD = (0.267, 0.256, 0.276)


def sample_resized_crop(width: int, height: int, scale, ratio, rng) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random area/aspect crop; same algorithm as RandomResizedCrop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # fallback: the largest central crop within the ratio bounds
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


_INTERP = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


@dataclass(frozen=True)
class ViewSpec:
    """One kind of augmented view (a global or local crop, or a labeled view)."""

    size: int
    scale: tuple[float, float]
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)  # bright, contr, sat, hue
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    solarize_prob: float = 0.0
    flip: bool = True
    interpolation: str = "bilinear"  # crop resize: "bilinear" or "bicubic" (DINO/ViT recipes)


class ViewTransform:
    """PIL image + generator -> normalised tensor of one view."""

    def __init__(self, spec: ViewSpec, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.spec = spec
        self.mean, self.std = mean, std

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        s = self.spec
        top, left, h, w = sample_resized_crop(img.width, img.height, s.scale, (3 / 4, 4 / 3), rng)
        img = F.resized_crop(
            img, top, left, h, w, [s.size, s.size], _INTERP[s.interpolation], antialias=True
        )
        if s.flip and rng.random() < 0.5:
            img = F.hflip(img)
        return self.photometric(img, rng)

    def photometric(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        """The part after crop and flip (what ``augment_on=device`` moves to the device)."""
        s = self.spec
        if any(s.jitter) and rng.random() < s.jitter_prob:
            img = self._jitter(img, rng)
        if rng.random() < s.grayscale_prob:
            img = F.rgb_to_grayscale(img, num_output_channels=3)
        if rng.random() < s.blur_prob:
            img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
        if rng.random() < s.solarize_prob:
            img = ImageOps.solarize(img, threshold=128)
        return F.normalize(F.to_tensor(img), self.mean, self.std)

    def _jitter(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        bj, cj, sj, hj = self.spec.jitter
        b, c, sat = (rng.uniform(max(0.0, 1 - x), 1 + x) for x in (bj, cj, sj))
        h = rng.uniform(-min(hj, 0.5), min(hj, 0.5))
        ops = [
            lambda im: F.adjust_brightness(im, b),
            lambda im: F.adjust_contrast(im, c),
            lambda im: F.adjust_saturation(im, sat),
            lambda im: F.adjust_hue(im, h),
        ]
        for k in rng.permutation(4):
            img = ops[k](img)
        return img


class MultiCrop:
    """A list of views of one image: the global crops first, then the local crops."""

    def __init__(self, specs: list[ViewSpec], mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.views = [ViewTransform(spec, mean, std) for spec in specs]

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> list[torch.Tensor]:
        return [view(img, rng) for view in self.views]


class EvalTransform:
    """Deterministic resize + centre crop (ImageNet) or identity-size (small images)."""

    def __init__(self, size: int, resize: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size, self.resize = size, resize
        self.mean, self.std = mean, std

    def __call__(self, img: Image.Image, rng=None) -> torch.Tensor:
        if self.resize:
            img = F.resize(img, self.resize, InterpolationMode.BILINEAR, antialias=True)
        if img.width != self.size or img.height != self.size:
            img = F.center_crop(img, [self.size, self.size])
        return F.normalize(F.to_tensor(img), self.mean, self.std)
