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
  then normalisation. Mode ``fused`` (default, ``photometric_fused``) does it in a few batched
  passes (affine maps per jitter stage, ``hue_shift``, blur per kernel size); ``exact`` op by op.
- ``random_resized_crop`` crops a batch held on the device (CIFAR-sized data sets) with per-sample
  boxes in one ``affine_grid`` + ``grid_sample`` call per crop size (``ResidentTransform``,
  ``data.device_resident``).

Blur: separable convolution with reflect padding, kernel radius ceil(3 sigma) (at most 6, i.e. 13
taps at sigma = 2), the kernel of torchvision's ``gaussian_blur`` for the same size and sigma.
PIL's ``ImageFilter.GaussianBlur(radius=sigma)`` (the worker path) approximates a Gaussian with
three box blurs on uint8 data; the two agree to within ~2/255 mean absolute difference on CIFAR
images (measured 0.8-1.3/255, tested in tests/test_device_aug.py).
No new dependency: the choice is measured in benchmarks/RESULTS.md (issue 16 section).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from common.data.transforms import ViewSpec, sample_resized_crop
from common.errors import UserError

log = logging.getLogger(__name__)

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


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = MAX_RADIUS) -> torch.Tensor:
    """Per-sample separable Gaussian blur (reflect padding) of (n, c, h, w) floats; ``radius``
    bounds the kernels (a smaller one saves taps when no sample needs 13).

    Each 1-d pass is a sum of shifted slices (one ``addcmul_`` per tap): on one CPU thread this
    measured faster than a grouped ``conv2d`` (oneDNN) at 13 taps and ~2x faster at 7, because
    its cost follows the number of taps."""
    n, c, h, w = x.shape
    radius = min(MAX_RADIUS, radius, h - 1, w - 1)
    taps = 2 * radius + 1
    k = gaussian_kernels(sigma, radius).view(n, 1, 1, 1, taps)
    y = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = y[..., 0:w] * k[..., 0]
    for j in range(1, taps):
        out.addcmul_(y[..., j : j + w], k[..., j])
    y = F.pad(out, (0, 0, radius, radius), mode="reflect")
    out = y[..., 0:h, :] * k[..., 0]
    for j in range(1, taps):
        out.addcmul_(y[..., j : j + h, :], k[..., j])
    return out


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def photometric(
    images: torch.Tensor, params: PhotometricParams, mean=None, std=None, mode: str = "fused"
) -> torch.Tensor:
    """uint8 (or [0, 1] float) images (n, 3, h, w) -> augmented (and normalised) float32.

    ``mode="fused"`` (the default, see ``photometric_fused``) or ``"exact"`` (op by op, equal to
    torchvision's functional ops on tensors to float32 rounding, ~15x slower on a CPU)."""
    if mode == "fused":
        return photometric_fused(images, params, mean, std)
    if mode != "exact":
        raise ValueError(f"photometric mode must be 'fused' or 'exact', not {mode!r}")
    return photometric_exact(images, params, mean, std)


def photometric_exact(
    images: torch.Tensor, params: PhotometricParams, mean=None, std=None
) -> torch.Tensor:
    """Op by op, in the order of ``ViewTransform``, each op as torchvision's tensor version."""
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


def hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's HSV hue shift of [0, 1] RGB (n, 3, h, w), written into ``x`` (in place).

    A hue shift keeps each pixel's max and min. With e = 6 * hue in [0, 6) after the shift and
    chroma = max - min, HSV -> RGB is R = min + chroma * clamp(|e - 3| - 1, 0, 1),
    G = max - chroma * clamp(|e - 2| - 1, 0, 1), B = max - chroma * clamp(|e - 4| - 1, 0, 1)
    (torchvision's six-way select written as distances on the hue circle). Masks are floats
    and products, not ``torch.where`` (measured ~10x slower on a CPU thread), and the passes
    are in place: fresh full-size tensors cost page faults on a CPU."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    chroma = maxc.sub(minc)
    is_r = torch.eq(maxc, r).float()
    is_g = torch.eq(maxc, g).float().mul_(1 - is_r)
    e = torch.sub(g, b).mul_(is_r)
    e.add_(torch.sub(b, r).mul_(is_g))
    e.add_(torch.sub(r, g).mul_(is_r.add_(is_g).neg_().add_(1)))  # is_r now holds is_b
    # grey pixels (chroma 0) have zero numerators: any finite 1 / chroma gives e = 0 there
    e.div_(chroma.clamp(min=1e-12)).add_(is_g.mul_(2).add_(is_r.mul_(4)))
    e = torch.remainder(e.add_(6 * shift.view(-1, 1, 1)), 6.0)
    tmp = torch.empty_like(e)

    def ramp(centre: float) -> torch.Tensor:
        return torch.sub(e, centre, out=tmp).abs_().sub_(1).clamp_(0, 1).mul_(chroma)

    torch.add(minc, ramp(3.0), out=r)
    torch.sub(maxc, ramp(2.0), out=g)
    torch.sub(maxc, ramp(4.0), out=b)
    return x


def jitter_affine(
    p: PhotometricParams, stages: torch.Tensor, channel_mean: torch.Tensor, gray: bool = False
):
    """Per-sample (A, b), (n, 3, 3) and (n, 3): the brightness / contrast / saturation ops of the
    jitter stages where ``stages`` (n, 4) is true, in each sample's random order, (then
    grayscale where drawn, if ``gray``) as one affine map A x + b of [0, 1] RGB.

    Brightness, saturation and grayscale are 3x3 matrices; contrast blends with the mean luma of
    the current image, which for an image A x + b is w . (A mu + b) with mu = ``channel_mean`` of
    the input. The composition is exact except for torchvision's clamp to [0, 1] after every op
    (the caller clamps once, after the map). Hue is not linear in RGB and is never included."""
    n, dev = channel_mean.shape[0], channel_mean.device
    eye = torch.eye(3, device=dev).expand(n, 3, 3)
    w = torch.tensor(GRAY, device=dev)
    luma = w.expand(3, 3)  # every row = w: x -> gray(x) on each channel
    bright, contrast, sat, _ = (f.view(-1, 1, 1) for f in p.factors.unbind(1))
    m_sat = sat * eye + (1 - sat) * luma
    a, b = eye, torch.zeros(n, 3, 1, device=dev)
    mu = channel_mean.view(n, 3, 1)
    rows = torch.arange(n, device=dev)
    for stage in range(4):
        op = torch.where(stages[:, stage], p.order[:, stage], 3)  # 3 (hue) here: identity
        target = (w.view(1, 1, 3) @ (a @ mu + b)).expand(n, 3, 1)  # mean luma, broadcast
        cand_a = torch.stack((bright * a, contrast * a, m_sat @ a, a), 1)
        cand_b = torch.stack((bright * b, contrast * b + (1 - contrast) * target, m_sat @ b, b), 1)
        a, b = cand_a[rows, op], cand_b[rows, op]
    if gray:
        drawn = p.gray.view(-1, 1, 1)
        a, b = torch.where(drawn, luma @ a, a), torch.where(drawn, luma @ b, b)
    return a, b.view(n, 3)


def _apply_affine(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape  # bmm + add_: 8x faster than baddbmm with a broadcast bias (CPU thread)
    return torch.bmm(a, x.view(n, c, h * w)).add_(b.unsqueeze(-1)).view(n, c, h, w)


def _clamp_channels(y: torch.Tensor, lo, hi) -> torch.Tensor:
    for ch in range(y.shape[1]):  # scalar bounds per channel: 10x faster than tensor bounds (CPU)
        y[:, ch].clamp_(lo[ch], hi[ch])
    return y


def photometric_fused(
    images: torch.Tensor, params: PhotometricParams, mean=None, std=None
) -> torch.Tensor:
    """The photometric recipe in a few batched passes over the pixels (profiled: the op-by-op path
    spends its time in the six-way HSV select of hue and in full-size temporaries).

    1. the jitter ops before hue (in each sample's order) as one per-sample affine map + clamp;
    2. hue (HSV, as torchvision) on the jittered rows, by ``hue_shift``;
    3. the jitter ops after hue, grayscale, the 1/255 scale and the normalisation as one affine
       map + one clamp to the normalised image of [0, 1];
    4. blur of the drawn rows only, one call per kernel size, on the normalised image (blur is
       linear per channel and its kernel sums to 1: it commutes with the normalisation);
    5. solarisation of the drawn rows, threshold and inversion mapped to normalised values.
    Differences to the exact path: torchvision clamps after every jitter op, here once per affine
    block (the measured tolerance is in tests/test_device_aug.py and benchmarks/RESULTS.md)."""
    x = images.float() if images.dtype == torch.uint8 else images.float() * 255
    n, c, h, w = x.shape
    dev = x.device
    cpu = params.to("cpu")  # decisions and row indices from the CPU copy: no device syncs
    p = params.to(dev)
    mean, std = (mean, std) if mean is not None else ((0.0,) * c, (1.0,) * c)
    m, s = torch.tensor(mean, device=dev), torch.tensor(std, device=dev)
    x = x.contiguous()
    if cpu.flip.any():
        idx = torch.nonzero(cpu.flip).flatten().to(dev)
        x = x.index_copy(0, idx, x[idx].flip(-1))
    x = x.mul_(1 / 255)
    if cpu.jitter.any():
        for stage in range(4):  # one affine map + clamp per stage, as torchvision clamps per op
            onehot = torch.zeros(n, 4, dtype=torch.bool, device=dev)
            onehot[:, stage] = p.jitter
            a, b = jitter_affine(p, onehot, x.mean((2, 3)))
            x = _clamp_channels(_apply_affine(x, a, b), (0.0,) * c, (1.0,) * c)
            hue = cpu.jitter & (cpu.order[:, stage] == 3) & (cpu.factors[:, 3] != 0)
            rows = torch.nonzero(hue).flatten().to(dev)
            x.index_copy_(0, rows, hue_shift(x[rows], p.factors[rows, 3]))
    none = torch.zeros(n, 4, dtype=torch.bool, device=dev)
    a, b = jitter_affine(p, none, x.new_zeros(n, c), gray=True)
    y = _apply_affine(x, a / s.view(1, c, 1), (b - m) / s)
    lo = [-mc / sc for mc, sc in zip(mean, std)]
    hi = [(1 - mc) / sc for mc, sc in zip(mean, std)]
    y = _clamp_channels(y, lo, hi)
    radii = torch.ceil(3 * cpu.sigma).clamp(max=MAX_RADIUS).long()
    for radius in radii[cpu.blur].unique().tolist():  # one call per kernel size: fewer taps
        idx = torch.nonzero(cpu.blur & (radii == radius)).flatten().to(dev)
        y.index_copy_(0, idx, gaussian_blur(y[idx], p.sigma[idx], radius))
    if cpu.solarize.any():  # PIL ImageOps.solarize(threshold=128): values >= 128 inverted
        idx = torch.nonzero(cpu.solarize).flatten().to(dev)
        z = y[idx]
        thr = ((128 / 255 - m) / s).view(1, c, 1, 1)
        y.index_copy_(0, idx, torch.where(z >= thr, ((1 - 2 * m) / s).view(1, c, 1, 1) - z, z))
    return y


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
    the generator must be the same on every rank (see ``aug_generator``). Parameters are drawn
    view by view in list order; consecutive views of one spec and shape (the local crops) then
    run as one batched call, which saves per-call overhead at small crop sizes."""

    def __init__(
        self, view_specs, labeled_spec, mean, std, rank=0, world_size=1, flip=False, mode="fused"
    ):
        if mode not in ("fused", "exact"):
            raise ValueError(f"photometric mode must be 'fused' or 'exact', not {mode!r}")
        fix = (lambda s: s) if flip else no_flip  # workers flipped already
        self.view_specs = [fix(s) for s in view_specs]
        self.labeled_spec = fix(labeled_spec)
        self.mean, self.std = mean, std
        self.rank, self.world = rank, world_size
        self.mode = mode

    def _draw(self, spec, n, generator) -> PhotometricParams:
        return draw_params(spec, n, generator, self.rank * n, self.world * n)

    def _run(self, images: list[torch.Tensor], params: list[PhotometricParams]):
        if not images:
            return []
        fmt = torch.channels_last if _is_channels_last(images[0]) else torch.contiguous_format
        x = torch.cat(images) if len(images) > 1 else images[0]
        joined = PhotometricParams(
            *(
                torch.cat([getattr(q, k) for q in params])
                for k in PhotometricParams.__dataclass_fields__
            )
        )
        y = photometric(x, joined, self.mean, self.std, self.mode)
        y = y.contiguous(memory_format=fmt)  # keep what batch_to_device chose (channels_last)
        return list(y.split([len(v) for v in images]))

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        batch = dict(batch)
        views = batch.get("unlabeled", [])
        out, group, group_params, key = [], [], [], None
        for v, spec in zip(views, self.view_specs):
            params = self._draw(spec, v.shape[0], generator)
            if (spec, v.shape) != key:
                out += self._run(group, group_params)
                group, group_params, key = [], [], (spec, v.shape)
            group.append(v)
            group_params.append(params)
        batch["unlabeled"] = out + self._run(group, group_params)
        if "labeled" in batch:
            lab = batch["labeled"]
            params = self._draw(self.labeled_spec, lab.shape[0], generator)
            batch["labeled"] = self._run([lab], [params])[0]
        return batch


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.ndim == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)


def aug_generator(seed: int, step: int) -> torch.Generator:
    """The same on every rank (rows are split by offset), distinct from the step generator."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1013 + 7)


def load_all(source, bad_images: str = "fail") -> tuple[torch.Tensor, dict[int, str]]:
    """The whole source as one (N, 3, H, W) uint8 tensor (CIFAR-sized data sets), and the errors
    of its corrupt files by index. ``bad_images=fail`` stops at the first one, naming it; with
    ``skip`` their rows stay zero and ``IndexSource`` refuses them, so the data set replaces each
    by the next loadable image, as the loader path does (same warning, same count)."""
    images: dict[int, torch.Tensor] = {}
    bad: dict[int, str] = {}
    for i in range(len(source)):
        try:
            images[i] = TF.pil_to_tensor(source.load(i).convert("RGB"))
        except UserError as err:
            if bad_images != "skip":
                raise
            bad[i] = str(err)
    if not images:
        raise UserError(f"every one of the {len(source)} training images failed to load")
    sizes = {tuple(img.shape) for img in images.values()}
    if len(sizes) != 1:
        raise UserError(
            f"data.device_resident=true needs images of one size, found {len(sizes)} sizes"
        )
    store = torch.zeros((len(source), *sizes.pop()), dtype=torch.uint8)
    for i, img in images.items():
        store[i] = img
    if bad:
        log.warning("%d corrupt training image(s) held out of memory and skipped (bad_images=skip)",
                    len(bad))  # fmt: skip
    return store, bad


class IndexSource:
    """A source whose ``load`` returns the index: the loader hands out indices only. A corrupt
    file's index raises the error its decoding raised, for ``bad_images=skip`` to replace it."""

    def __init__(self, source, bad: dict[int, str] | None = None):
        self.source, self.targets, self.names = source, source.targets, source.names
        self.classes, self.bad = source.classes, bad or {}
        if hasattr(source, "paths"):
            self.paths = source.paths

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> int:
        if index in self.bad:
            raise UserError(self.bad[index])
        return index


class IndexViews:
    """Worker side of ``device_resident``: ``views`` copies of the index (0: the index alone)."""

    def __init__(self, views: int):
        self.views = views

    def __call__(self, index: int, rng):
        one = torch.tensor(index, dtype=torch.long)
        return [one] * self.views if self.views else one


class ResidentTransform(DeviceTransform):
    """``augment_on=device`` with the data set on the device: batches hold indices; every view
    is cropped (one ``random_resized_crop`` call per view, crop boxes from the step generator,
    rows split by rank like the photometric parameters), flipped and augmented here."""

    def __init__(self, images: torch.Tensor, view_specs, labeled_spec, mean, std, rank=0,
                 world_size=1, mode="fused"):  # fmt: skip
        super().__init__(view_specs, labeled_spec, mean, std, rank, world_size, True, mode)
        self.images = images  # moved to the batch's device on first use

    def _crop(self, index: torch.Tensor, spec: ViewSpec, generator) -> torch.Tensor:
        if self.images.device != index.device:
            self.images = self.images.to(index.device)
        n = index.shape[0]
        return random_resized_crop(
            self.images[index], spec.size, spec.scale, generator, offset=self.rank * n,
            total=self.world * n,
        )  # fmt: skip

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        batch = dict(batch)
        views = batch.get("unlabeled", [])
        batch["unlabeled"] = [self._crop(i, s, generator) for i, s in zip(views, self.view_specs)]
        if "labeled" in batch:
            batch["labeled"] = self._crop(batch["labeled"], self.labeled_spec, generator)
        return super().__call__(batch, generator)
