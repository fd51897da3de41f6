"""Multi-crop data loading: images/s one loader worker produces vs what the model consumes.

Per worker: one process, one torch thread (what a DataLoader worker gets), decoding real files
from cifar100-mini and producing every view of an unlabeled sample. Compared, on the same files
and crops, with two plain torchvision pipelines:
- ``tv_same``: torchvision's RandomResizedCrop / flip / ColorJitter / grayscale / GaussianBlur
  / ToTensor / Normalize with our probabilities (the same work, global torch RNG);
- ``tv_rrc``: RandomResizedCrop + flip + ToTensor + Normalize only (the floor of any pipeline).
Model consumption: images/s of the backbone forward+backward on the same crops (a quick measure
on this machine), or ``--model_rate`` (e.g. images/s that bench_step.py printed on a GPU).

Device path (``data.augment_on=device``, issue 16), on the same files and crops: ``geometric``
is what a worker then does (decode + crop + flip to uint8, images/s per worker); the photometric
part is timed three ways per image (all its views): ``pil_photo`` (the worker path's PIL ops after
crop/flip, one thread), and ``DeviceTransform`` in ``fused`` and ``exact`` mode on one batch of
the images' uint8 views, with one torch thread on a CPU (``--device``: on a GPU when there is
one; ``--device cpu`` forces the CPU); ``resident``: ``data.device_resident`` (the data set on the
device as uint8, crops there too, from indices).

Scenarios: ``cifar`` 2x32 + 4x16 px crops of the 32 px images (the CIFAR recipe) and ``paper``
2x224 + 8x96 px crops (the ImageNet recipe) of the same images upsampled by the crop.
  python benchmarks/bench_data.py [--scenarios cifar,paper] [--model_rate 1200]
The last lines printed are the ratios.
"""

from __future__ import annotations

import argparse
import math

import benchlib  # sets sys.path and the torchvision shim first
import numpy as np
import torch
from benchlib import SHARED_DATA, environment, interleaved, median, pick_device, spread
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from common.data.device_aug import (
    MAX_RADIUS,
    DeviceTransform,
    GeometricMultiCrop,
    ResidentTransform,
    aug_generator,
    load_all,
)
from common.data.loaders import DataConfig, SemiSupervisedDataset
from common.data.sources import ImageFolderSource
from common.data.transforms import MultiCrop, ViewTransform
from common.models.factory import build_backbone
from common.models.multicrop import forward_multicrop

SCENARIOS = {
    "cifar": dict(
        num_global=2, global_size=32, global_scale=(0.25, 1.0), num_local=4, local_size=16,
        local_scale=(0.08, 0.25), jitter=(0.4, 0.4, 0.4, 0.1), global_blur=(0.0, 0.0),
        local_blur=0.0, labeled_size=32, labeled_scale=(0.25, 1.0), normalization="cifar",
    ),
    "paper": dict(
        num_global=2, global_size=224, global_scale=(0.14, 1.0), num_local=8, local_size=96,
        local_scale=(0.05, 0.14), labeled_size=224, normalization="imagenet",
    ),
}  # fmt: skip
MODEL_BACKBONE = {"cifar": "resnet18_cifar", "paper": "resnet50"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default=str(SHARED_DATA / "cifar100-mini" / "train"))
    p.add_argument("--scenarios", default="cifar,paper")
    p.add_argument("--images", type=int, default=0, help="images per rep (0: per scenario)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--model_rate",
        type=float,
        default=0.0,
        help="model images/s to compare with (0: measure the backbone here)",
    )
    p.add_argument("--model_backbone", default="", help="backbone of the quick measure")
    p.add_argument(
        "--model_batch",
        type=int,
        default=0,
        help="unlabeled batch of the measure (0: 32 cifar, 4 paper)",
    )
    p.add_argument(
        "--model_threads",
        type=int,
        default=1,
        help="torch threads of the measure (1: images per core, like a worker)",
    )
    p.add_argument("--device", default="auto")
    benchlib.add_clock_argument(p)
    return p.parse_args(argv)


def torchvision_view(cfg: DataConfig, size: int, scale, blur: float, full: bool):
    """A plain torchvision pipeline for one view (``full``: same augmentations as ours)."""
    mean, std = cfg.mean_std
    steps = [T.RandomResizedCrop(size, scale=scale, antialias=True), T.RandomHorizontalFlip()]
    if full:
        steps += [T.RandomApply([T.ColorJitter(*cfg.jitter)], p=0.8), T.RandomGrayscale(0.2)]
        if blur > 0:
            kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
            steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def torchvision_multicrop(cfg: DataConfig, full: bool):
    """Globals then locals, as ``MultiCrop``, built from torchvision transforms."""
    blur = cfg.global_blur[0]
    globals_ = [torchvision_view(cfg, cfg.global_size, cfg.global_scale, blur, full)]
    local = torchvision_view(cfg, cfg.local_size, cfg.local_scale, cfg.local_blur, full)
    views = globals_ * cfg.num_global + [local] * cfg.num_local
    return lambda img: [view(img) for view in views]


class Pipelines:
    """The three per-sample pipelines over the same files."""

    def __init__(self, cfg: DataConfig, source: ImageFolderSource, images: int):
        mean, std = cfg.mean_std
        self.ours = SemiSupervisedDataset(
            source, MultiCrop(cfg.view_specs(), mean, std),
            ViewTransform(cfg.labeled_spec(), mean, std), seed=0,
        )  # fmt: skip
        self.source = source
        self.tv = {"tv_same": torchvision_multicrop(cfg, True),
                   "tv_rrc": torchvision_multicrop(cfg, False)}  # fmt: skip
        self.images, self.offset = images, 0

    def _indices(self) -> range:
        start = self.offset % len(self.source)
        self.offset += self.images
        return range(start, start + self.images)

    def run_ours(self) -> None:
        for i in self._indices():
            self.ours[(0, i % len(self.source), 0, i)]

    def runner(self, name: str):
        pipeline = self.tv[name]

        def run() -> None:
            for i in self._indices():
                pipeline(self.source.load(i % len(self.source)))

        return run


class DevicePath:
    """``augment_on=device`` on the same files: worker (geometric) part and photometric part."""

    def __init__(self, cfg: DataConfig, source: ImageFolderSource, images: int, device):
        mean, std = cfg.mean_std
        self.specs = cfg.view_specs()
        self.geometric_views = GeometricMultiCrop(self.specs)
        self.pil_views = [ViewTransform(spec, mean, std) for spec in self.specs]
        self.source, self.images, self.device = source, images, device
        self.offset = 0
        crops = [self._crops(i) for i in range(images)]  # the views of each image, uint8
        self.pil = [[TF.to_pil_image(v) for v in views] for views in crops]
        self.batch = {"unlabeled": [torch.stack(vs).to(device) for vs in zip(*crops)]}
        self.transforms = {
            mode: DeviceTransform(self.specs, cfg.labeled_spec(), mean, std, flip=False, mode=mode)
            for mode in ("fused", "exact")
        }
        self.step = 0
        store, _ = load_all(source)  # the data set on the device: crops there too
        self.resident = ResidentTransform(store, self.specs, cfg.labeled_spec(), mean, std)
        index = torch.arange(images, device=device) % len(store)
        self.index_batch = {"unlabeled": [index] * len(self.specs)}
        self.kornia = kornia_views(self.specs, mean, std)

    def run_kornia(self) -> None:
        for view, aug in zip(self.batch["unlabeled"], self.kornia):
            aug(view.float().div_(255))

    def run_resident(self) -> None:
        self.step += 1
        self.resident(self.index_batch, aug_generator(0, self.step))

    def _crops(self, i: int) -> list[torch.Tensor]:
        img = self.source.load(i % len(self.source))
        return self.geometric_views(img, np.random.default_rng(i))

    def run_geometric(self) -> None:
        start = self.offset
        self.offset += self.images
        for i in range(start, start + self.images):
            self._crops(i)

    def run_pil_photometric(self) -> None:
        rng = np.random.default_rng(self.step)
        self.step += 1
        for views in self.pil:
            for view, img in zip(self.pil_views, views):
                view.photometric(img, rng)

    def runner(self, mode: str):
        transform = self.transforms[mode]

        def run() -> None:
            self.step += 1
            transform(self.batch, aug_generator(0, self.step))

        return run


def kornia_views(specs, mean, std) -> list | None:
    """kornia's batched equivalent of each view's photometric part, or None without kornia."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    views = []
    for s in specs:
        radius = MAX_RADIUS  # ceil(3 sigma_max), the kernel our blur and PIL's truncate to
        ops = [
            K.ColorJitter(*s.jitter[:3], min(s.jitter[3], 0.5), p=s.jitter_prob),
            K.RandomGrayscale(p=s.grayscale_prob),
            K.RandomGaussianBlur((2 * radius + 1,) * 2, (0.1, 2.0), p=s.blur_prob),
            K.RandomSolarize(0.0, 0.0, p=s.solarize_prob),
            K.Normalize(torch.tensor(mean), torch.tensor(std)),
        ]
        views.append(torch.nn.Sequential(*[op for op in ops if getattr(op, "p", 1.0) > 0]))
    return views


def device_rates(cfg: DataConfig, source, images: int, reps: int, device) -> dict[str, float]:
    """Images/s of the device path's parts (one torch thread on a CPU)."""
    path = DevicePath(cfg, source, images, device)
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = {"geometric": path.run_geometric, "pil_photo": path.run_pil_photometric}
        worker = interleaved(parts, reps, cpu, warmup=1)
        photo = {m: path.runner(m) for m in path.transforms}
        if path.kornia is not None:
            photo["kornia"] = path.run_kornia
        photo = interleaved({**photo, "resident": path.run_resident}, reps, device, warmup=1)
    finally:
        torch.set_num_threads(threads)
    return {name: images / median(t) for name, t in {**worker, **photo}.items()}


def model_rate(cfg: DataConfig, backbone_name: str, batch: int, device, reps: int = 3) -> float:
    """Images/s (unlabeled + half as many labeled) of backbone forward+backward on these crops."""
    backbone, _ = build_backbone(backbone_name)
    backbone.to(device)
    b_l = max(1, batch // 2)
    sizes = [cfg.labeled_size] + [cfg.global_size] * cfg.num_global
    sizes += [cfg.local_size] * cfg.num_local
    crops = [torch.randn(b_l if i == 0 else batch, 3, s, s, device=device)
             for i, s in enumerate(sizes)]  # fmt: skip

    def step() -> None:
        backbone.zero_grad(set_to_none=True)
        forward_multicrop(backbone, crops).mean().backward()

    times = interleaved({"model": step}, reps, device, warmup=1)["model"]
    return (batch + b_l) / median(times)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    benchlib.set_clock(args.clock)
    source = ImageFolderSource(args.root)
    model_threads = torch.get_num_threads()
    results = {}
    lines = []
    for name in [s for s in args.scenarios.split(",") if s]:
        cfg = DataConfig(**SCENARIOS[name])
        images = args.images or (128 if name == "cifar" else 16)
        pipes = Pipelines(cfg, source, images)
        torch.set_num_threads(1)  # a DataLoader worker runs with one torch thread
        variants = {"ours": pipes.run_ours, **{k: pipes.runner(k) for k in pipes.tv}}
        times = interleaved(variants, args.reps, torch.device("cpu"), warmup=1)
        torch.set_num_threads(model_threads)
        rates = {k: images / median(v) for k, v in times.items()}
        views = cfg.num_global + cfg.num_local
        if args.model_rate:
            consume, how = args.model_rate, "given"
        else:
            backbone = args.model_backbone or MODEL_BACKBONE[name]
            batch = args.model_batch or (32 if name == "cifar" else 4)
            torch.set_num_threads(args.model_threads)
            consume = model_rate(cfg, backbone, batch, device)
            torch.set_num_threads(model_threads)
            how = f"{backbone} fwd+bwd, batch {batch}+{max(1, batch // 2)}"
            if device.type == "cpu":
                how += f", {args.model_threads} thread(s)"
        dev = device_rates(cfg, source, images, args.reps, device)
        results[name] = {"rates": rates, "model_rate": consume, "device_path": dev}
        crops = f"{cfg.num_global}x{cfg.global_size} + {cfg.num_local}x{cfg.local_size} px"
        print(f"\n[{name}] {crops} crops of {args.root} ({images} images/rep, "
              f"median [IQR] {args.clock} s)")  # fmt: skip
        for k, v in times.items():
            print(f"  {k:8s} {spread(v)} s/rep -> {rates[k]:8.1f} images/s per worker "
                  f"({rates[k] * views:.0f} crops/s)")  # fmt: skip
        print(f"  model    {consume:8.1f} images/s ({how}, {device.type})")
        print(f"  device path (augment_on=device): geometric worker {dev['geometric']:.1f}, "
              f"photometric: PIL {dev['pil_photo']:.1f}, fused {dev['fused']:.1f}, "
              f"exact {dev['exact']:.1f}; resident crops + photometric {dev['resident']:.1f} "
              f"images/s ({device.type}, 1 thread on a CPU)")  # fmt: skip
        workers = math.ceil(consume / rates["ours"])
        lines += [
            f"RATIO {name} ours/tv_same = {rates['ours'] / rates['tv_same']:.2f}",
            f"RATIO {name} ours/tv_rrc = {rates['ours'] / rates['tv_rrc']:.2f}",
            f"RATIO {name} worker/model = {rates['ours'] / consume:.3f} "
            f"(workers needed to feed the model: {workers})",
            f"RATIO {name} photometric {device.type} fused/PIL = "
            f"{dev['fused'] / dev['pil_photo']:.2f} "
            f"(exact/PIL {dev['exact'] / dev['pil_photo']:.2f})",
            *(
                [f"RATIO {name} photometric {device.type} fused/kornia = "
                 f"{dev['fused'] / dev['kornia']:.2f} (kornia/PIL "
                 f"{dev['kornia'] / dev['pil_photo']:.2f})"]
                if "kornia" in dev else []
            ),  # fmt: skip
            f"RATIO {name} resident {device.type}/full worker = "
            f"{dev['resident'] / rates['ours']:.2f}",
            f"RATIO {name} worker geometric/full = {dev['geometric'] / rates['ours']:.2f} "
            f"(device-path workers needed: {math.ceil(consume / dev['geometric'])})",
        ]
    print(f"\nenvironment: {environment(device)}")
    for line in lines:
        print(line)
    return results


if __name__ == "__main__":
    main()
