"""Batched photometric (and CIFAR-sized geometric) augmentation on any torch device (issue 16).

The worker (PIL) path in ``common.data.transforms`` costs ~4 ms per 224-px view on one CPU core;
here the same recipe runs as a handful of batched tensor ops on the training device, with every
per-sample random parameter drawn from a ``torch.Generator``:

- ``draw_params`` draws the parameters of the *global* batch (``total`` rows) and keeps this
  rank's rows ``offset:offset+n``: a resumed step redraws the same values, and N processes with
  offsets ``rank*B`` get disjoint rows of one global draw (as 1 process with batch N*B would).
- ``photometric`` applies, in the order of ``ViewTransform``: horizontal flip (optional: in the
  ``augment_on=device`` mode the workers already flipped), colour jitter with probability
  ``jitter_prob`` (brightness, contrast, saturation, hue in a random order per sample, as
  torchvision's ColorJitter), grayscale, Gaussian blur with sigma ~ U[0.1, 2.0], solarisation,
  then normalisation.
- ``random_resized_crop`` crops a batch held on the device (CIFAR-sized data sets) with per-sample
  boxes in one ``affine_grid`` + ``grid_sample`` call per crop size.

Blur: separable convolution with reflect padding, kernel radius ceil(3 sigma) (at most 6, i.e. 13
taps at sigma = 2), the kernel of torchvision's ``gaussian_blur`` for the same size and sigma.
PIL's ``ImageFilter.GaussianBlur(radius=sigma)`` (the worker path) approximates a Gaussian with
three box blurs on uint8 data; the two agree to within ~2/255 mean absolute difference on CIFAR
images (tested in tests/test_device_aug.py), which is far below the spread of the augmentation.
No new dependency: the choice is measured in benchmarks/RESULTS.md (issue 16 section).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from common.data.transforms import ViewSpec, sample_resized_crop

MAX_RADIUS = 6  # ceil(3 * 2.0)
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass
class PhotometricParams:
    flip: torch.Tensor  # (n,) bool
    jitter: torch.Tensor  # (n,) bool
    factors: torch.Tensor  # (n, 4): brightness, contrast, saturation, hue shift
    order: torch.Tensor  # (n, 4): permutation of 0..3 per sample
    gray: torch.Tensor  # (n,) bool
    blur: torch.Tensor  # (n,) bool
    sigma: torch.Tensor  # (n,) in [0.1, 2.0]
    solarize: torch.Tensor  # (n,) bool

    def to(self, device) -> PhotometricParams:
        return PhotometricParams(*(getattr(self, k).to(device) for k in self.__dataclass_fields__))


def draw_params(
    spec: ViewSpec, n: int, generator: torch.Generator, offset: int = 0, total: int | None = None
) -> PhotometricParams:
    """Parameters of rows ``offset:offset+n`` of a draw for ``total`` samples (CPU tensors)."""
    total = n if total is None else total
    if not 0 <= offset and offset + n <= total:
        raise ValueError(f"rows {offset}:{offset + n} outside a draw of {total}")
    u = torch.rand(total, 11, generator=generator, dtype=torch.float64)[offset : offset + n]
    bj, cj, sj, hj = spec.jitter
    lo = torch.tensor([max(0.0, 1 - bj), max(0.0, 1 - cj), max(0.0, 1 - sj), -min(hj, 0.5)])
    hi = torch.tensor([1 + bj, 1 + cj, 1 + sj, min(hj, 0.5)])
    factors = (lo + (hi - lo) * u[:, 1:5]).float()
    return PhotometricParams(
        flip=(u[:, 0] < 0.5) & spec.flip,
        jitter=(u[:, 5] < spec.jitter_prob) & any(spec.jitter),
        factors=factors,
        order=torch.argsort(torch.rand(total, 4, generator=generator)[offset : offset + n], 1),
        gray=u[:, 6] < spec.grayscale_prob,
        blur=u[:, 7] < spec.blur_prob,
        sigma=(0.1 + 1.9 * u[:, 8]).float(),
        solarize=u[:, 9] < spec.solarize_prob,
    )


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    ratio = ratio.view(-1, 1, 1, 1)
    return (ratio * a + (1 - ratio) * b).clamp_(0, 1)


def adjust_brightness(x, factor):
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x, factor):
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x, factor):
    return _blend(x, _gray(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's tensor algorithm (RGB -> HSV, shift hue, -> RGB), batched per-sample."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0)
    v = maxc
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    mask = i.unsqueeze(1) == torch.arange(6, device=x.device).view(-1, 1, 1)  # (n,6,h,w)
    a1 = torch.stack((v, q, p, p, t, v), 1)
    a2 = torch.stack((t, v, v, q, p, p), 1)
    a3 = torch.stack((p, p, t, v, v, q), 1)
    out = [(mask * a).sum(1) for a in (a1, a2, a3)]
    return torch.stack(out, 1)


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def gaussian_kernels(sigma: torch.Tensor, radius: int = MAX_RADIUS) -> torch.Tensor:
    """(n, 2*radius+1) normalised 1-d kernels; sample i uses radius ceil(3 sigma_i) (<= radius)."""
    xs = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (xs / sigma.view(-1, 1)) ** 2)
    own = torch.ceil(3 * sigma).clamp(max=radius).view(-1, 1)
    k = k * (xs.abs() <= own)
    return k / k.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur (reflect padding) of (n, c, h, w) floats."""
    n, c, h, w = x.shape
    radius = min(MAX_RADIUS, h - 1, w - 1)
    k = gaussian_kernels(sigma, radius).repeat_interleave(c, 0)  # (n*c, K)
    y = x.reshape(1, n * c, h, w)
    y = F.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def photometric(
    images: torch.Tensor, params: PhotometricParams, mean=None, std=None
) -> torch.Tensor:
    """uint8 (or [0, 1] float) images (n, 3, h, w) -> augmented (and normalised) float32."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    p = params.to(x.device)
    if p.flip.any():
        x = _where(p.flip, x.flip(-1), x)
    if p.jitter.any():
        for stage in range(4):
            for op in range(4):
                idx = torch.nonzero(p.jitter & (p.order[:, stage] == op)).flatten()
                if len(idx):
                    x = x.index_copy(0, idx, JITTER_OPS[op](x[idx], p.factors[idx, op]))
    if p.gray.any():
        x = _where(p.gray, _gray(x).expand_as(x), x)
    if p.blur.any():
        idx = torch.nonzero(p.blur).flatten()
        x = x.index_copy(0, idx, gaussian_blur(x[idx], p.sigma[idx]))
    if p.solarize.any():  # PIL ImageOps.solarize(threshold=128): values >= 128 inverted
        x = _where(p.solarize, torch.where(x >= 128 / 255, 1 - x, x), x)
    if mean is not None:
        m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
        x = (x - m) / s
    return x


def random_resized_crop(
    images: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio=(3 / 4, 4 / 3),
    offset: int = 0,
    total: int | None = None,
) -> torch.Tensor:
    """Per-sample RandomResizedCrop of a batch on its device, one grid_sample call (bilinear,
    no antialiasing: meant for CIFAR-sized images, where crops are up-sampled or kept)."""
    n, _, h, w = images.shape
    total = n if total is None else total
    tries = 10
    u = torch.rand(total, tries, 4, generator=generator, dtype=torch.float64)[offset : offset + n]
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    aspect = torch.exp(logr)
    cw = torch.round(torch.sqrt(area * aspect))
    ch = torch.round(torch.sqrt(area / aspect))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.argmax(ok.int(), 1)
    rows = torch.arange(n)
    valid = ok[rows, first]
    cw = torch.where(valid, cw[rows, first], torch.tensor(float(w), dtype=torch.float64))
    ch = torch.where(valid, ch[rows, first], torch.tensor(float(h), dtype=torch.float64))
    top = torch.floor(u[rows, first, 2] * (h - ch + 1)) * valid
    left = torch.floor(u[rows, first, 3] * (w - cw + 1)) * valid
    # affine map of the output grid [-1, 1] onto the box (align_corners=False convention)
    theta = torch.zeros(n, 2, 3, dtype=torch.float32)
    theta[:, 0, 0] = (cw / w).float()
    theta[:, 0, 2] = ((2 * left + cw) / w - 1).float()
    theta[:, 1, 1] = (ch / h).float()
    theta[:, 1, 2] = ((2 * top + ch) / h - 1).float()
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    x = images.float() if images.dtype == torch.uint8 else images
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else out


class GeometricView:
    """Worker side of ``augment_on=device``: crop + flip of a PIL image -> uint8 tensor.

    Draws from the sample's numpy generator exactly as ``ViewTransform`` does for these two steps;
    the photometric part is left to ``DeviceTransform``."""

    def __init__(self, spec: ViewSpec):
        self.spec = spec

    def __call__(self, img: Image.Image, rng) -> torch.Tensor:
        s = self.spec
        top, left, h, w = sample_resized_crop(img.width, img.height, s.scale, (3 / 4, 4 / 3), rng)
        img = TF.resized_crop(
            img, top, left, h, w, [s.size, s.size], InterpolationMode.BILINEAR, antialias=True
        )
        if s.flip and rng.random() < 0.5:
            img = TF.hflip(img)
        return TF.pil_to_tensor(img.convert("RGB"))


class GeometricMultiCrop:
    def __init__(self, specs: list[ViewSpec]):
        self.views = [GeometricView(spec) for spec in specs]

    def __call__(self, img, rng) -> list[torch.Tensor]:
        return [view(img, rng) for view in self.views]


def no_flip(spec: ViewSpec) -> ViewSpec:
    return ViewSpec(**{**spec.__dict__, "flip": False})


class DeviceTransform:
    """Photometric part of a train batch, on the batch's device: ``(batch, generator) -> batch``.

    ``batch["unlabeled"]`` (list of uint8 views) and ``batch["labeled"]`` get the recipe of their
    view spec; rows are this rank's ``rank*B .. rank*B+B-1`` of a draw for the global batch, so
    the generator must be the same on every rank (see ``aug_generator``)."""

    def __init__(self, view_specs, labeled_spec, mean, std, rank=0, world_size=1, flip=False):
        fix = (lambda s: s) if flip else no_flip  # workers flipped already
        self.view_specs = [fix(s) for s in view_specs]
        self.labeled_spec = fix(labeled_spec)
        self.mean, self.std = mean, std
        self.rank, self.world = rank, world_size

    def _apply(self, images, spec, generator):
        n = images.shape[0]
        params = draw_params(spec, n, generator, self.rank * n, self.world * n)
        return photometric(images, params, self.mean, self.std)

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        batch = dict(batch)
        views = batch.get("unlabeled", [])
        batch["unlabeled"] = [
            self._apply(v, spec, generator) for v, spec in zip(views, self.view_specs)
        ]
        if "labeled" in batch:
            batch["labeled"] = self._apply(batch["labeled"], self.labeled_spec, generator)
        return batch


def aug_generator(seed: int, step: int) -> torch.Generator:
    """The same on every rank (rows are split by offset), distinct from the step generator."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1013 + 7)
