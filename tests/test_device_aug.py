"""Device-side augmentation (issue 16) against torchvision's functional ops on real images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from common.data import device_aug as D
from common.data.transforms import ViewSpec

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = ViewSpec(32, (0.2, 1.0), blur_prob=0.5, solarize_prob=0.2)


@pytest.fixture(scope="module")
def images(cifar10_mini):
    paths = sorted((cifar10_mini / "train").glob("*/*.jpg"))[:16]
    return torch.stack([TF.pil_to_tensor(Image.open(p).convert("RGB")) for p in paths])


@pytest.mark.parametrize("op,tv,f", [
    (D.adjust_brightness, TF.adjust_brightness, 1.4), (D.adjust_contrast, TF.adjust_contrast, 0.5),
    (D.adjust_saturation, TF.adjust_saturation, 1.6), (D.adjust_hue, TF.adjust_hue, 0.15),
])  # fmt: skip
def test_jitter_ops_match_torchvision(images, op, tv, f):
    x = images.float() / 255
    ours = op(x, torch.full((len(x),), f))
    ref = torch.stack([tv(img, f) for img in x])
    assert (ours - ref).abs().max() < 1e-4  # tolerance: float32 rounding


def test_blur_matches_torchvision(images):
    x = images.float() / 255
    ours = D.gaussian_blur(x, torch.full((len(x),), 1.5))
    ref = torch.stack(
        [TF.gaussian_blur(img, [11, 11], [1.5, 1.5]) for img in x]
    )  # r = ceil(4.5) = 5
    assert (ours - ref).abs().max() < 1e-5


def test_same_seed_same_output_and_disjoint_ranks(images):
    def run(seed, offset=0):
        p = D.draw_params(SPEC, 16, torch.Generator().manual_seed(seed), offset, 32)
        return p, D.photometric(images, p)

    (p0, a), (_, b) = run(3), run(3)
    assert torch.equal(a, b)
    p1, _ = run(3, 16)
    assert not torch.isin(p0.sigma, p1.sigma).any()
    assert ((p0.sigma >= 0.1) & (p0.sigma <= 2.0)).all()


def test_rates_within_binomial_tolerance():
    p = D.draw_params(SPEC, 20000, torch.Generator().manual_seed(0))
    for mask, rate in ((p.flip, 0.5), (p.gray, 0.2), (p.jitter, 0.8), (p.blur, 0.5)):
        assert abs(mask.float().mean() - rate) < 4 * (rate * (1 - rate) / 20000) ** 0.5
    assert (p.factors[:, 3].abs() <= 0.2).all() and (p.factors[:, :3] >= 0.2).all()


def test_suave_trains_with_device_augmentation(tmp_path, tiny_data):
    import main_suave
    from tests.reliability_utils import SUAVE

    args = [*SUAVE, f"data.root={tiny_data}", "data.augment_on=device", "train.max_steps=3",
            "--output_dir", str(tmp_path), "--name", "dev"]  # fmt: skip
    summary = main_suave.main(args)
    assert summary["step"] == 3
