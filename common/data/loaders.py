"""Labeled and unlabeled data iterated together, one batch per step, reproducibly.

One DataLoader serves both streams: for every step, the batch sampler emits this rank's keys for
the unlabeled images (an epoch-wise permutation of all training images) and for the labeled ones
(an endless chain of permutations of the labeled subset). Keys carry the global step and the
position in the *global* batch, which seeds each sample's augmentations. Consequences:
- resuming at step s restarts the sampler at s: same images, same crops, nothing re-read;
- W processes with per-rank batch B see exactly what 1 process with batch W*B sees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common.data.sources import build_source
from common.data.splits import labels_per_class_split, subset_from_list
from common.data.transforms import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    MultiCrop,
    ViewSpec,
    ViewTransform,
)
from common.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    dataset: Literal["imagefolder", "imagenet", "cifar10", "cifar100"] = "imagefolder"
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    download: bool = False
    # labeled subset: N images per class (seeded) or a SimCLR list file; neither = no labels
    labels_per_class: int | None = None
    label_list: str | None = None
    split_seed: int = 0
    normalization: Literal["imagenet", "cifar"] = "imagenet"
    # multi-crop
    num_global: int = 2
    global_size: int = 224
    global_scale: tuple[float, float] = (0.14, 1.0)
    num_local: int = 6
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.14)
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    global_blur: tuple[float, float] = (0.5, 0.5)
    global_solarize: tuple[float, float] = (0.0, 0.0)
    local_blur: float = 0.5
    # false = unlabeled views without colour jitter, grayscale or blur (official
    # --color_jit_unlab false, used by the fine-tuning recipes); crops and flips are kept
    unlabeled_color_aug: bool = True
    # crop resize interpolation of every training view (bicubic in the official Daino/ViT code)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    # labeled views. "strong": crop + flip + labeled_jitter (p labeled_jitter_prob) + grayscale
    # labeled_grayscale + blur labeled_blur; "light" (fine-tuning, official): crop + flip +
    # ColorJitter(0.1, 0.1, 0.1, 0.1) with p 0.8, no grayscale, no blur.
    labeled_size: int = 224
    labeled_scale: tuple[float, float] = (0.08, 1.0)
    labeled_aug: Literal["strong", "light"] = "strong"
    labeled_jitter: tuple[float, float, float, float] | None = None  # None = data.jitter
    labeled_jitter_prob: float = 0.8
    labeled_grayscale: float = 0.2
    labeled_blur: float | None = None  # None = global_blur[0] (the pre-fidelity behaviour)
    # evaluation
    eval_size: int = 224
    eval_resize: int = 256
    # loading
    num_workers: int = 4
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2
    bad_images: Literal["fail", "skip"] = "fail"
    # where the photometric augmentation runs (issue 16): "workers" (PIL, in the loader) or
    # "device" (workers decode + crop/flip to uint8; common/data/device_aug.py on the training
    # device). "device" is meant as the CUDA default once proven on a GPU.
    augment_on: Literal["workers", "device"] = "workers"
    # photometric part with augment_on=device: "fused" (brightness / contrast / saturation as
    # per-sample affine maps, a clamp after each jitter stage, HSV hue; ~7x faster on a CPU at
    # CIFAR crops) or "exact" (op by op, torchvision's functional ops to float32 rounding).
    # Measured difference and speeds: benchmarks/RESULTS.md (issue 16).
    device_aug_mode: Literal["fused", "exact"] = "fused"
    # with augment_on=device: the whole data set as uint8 on the training device (CIFAR-sized
    # sets of equal-size images); workers only hand out indices, crops run there too
    device_resident: bool = False

    def validate(self) -> None:
        if self.device_resident and self.augment_on != "device":
            raise UserError("data.device_resident=true needs data.augment_on=device")
        if self.labels_per_class is not None and self.label_list is not None:
            raise UserError("set data.labels_per_class or data.label_list, not both")
        if self.num_global < 1:
            raise UserError("data.num_global must be at least 1")
        if self.split_seed < 0:
            raise UserError("data.split_seed must be >= 0")
        if self.num_local < 0 or self.num_workers < 0:
            raise UserError("data.num_local and data.num_workers must be >= 0")
        for name in ("global_scale", "local_scale", "labeled_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise UserError(f"data.{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        if self.labeled_jitter is not None and (
            len(self.labeled_jitter) != 4 or min(self.labeled_jitter) < 0
        ):
            raise UserError("data.labeled_jitter needs 4 values >= 0 (or null = data.jitter)")
        for name in ("labeled_jitter_prob", "labeled_grayscale"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"data.{name} must be a probability in [0, 1]")
        if self.labeled_blur is not None and not 0 <= self.labeled_blur <= 1:
            raise UserError("data.labeled_blur must be a probability in [0, 1] (or null)")
        for name in ("global_size", "local_size", "labeled_size", "eval_size"):
            if getattr(self, name) < 1:
                raise UserError(f"data.{name} must be positive")

    @property
    def mean_std(self):
        if self.normalization == "cifar":
            return CIFAR_MEAN, CIFAR_STD
        return IMAGENET_MEAN, IMAGENET_STD

    def view_specs(self) -> list[ViewSpec]:
        """Global crops then local crops (SwAV/DINO order)."""
        specs = []
        color = self.unlabeled_color_aug
        jitter = self.jitter if color else (0.0, 0.0, 0.0, 0.0)
        gray = 0.2 if color else 0.0
        for i in range(self.num_global):
            specs.append(
                ViewSpec(
                    self.global_size,
                    self.global_scale,
                    jitter=jitter,
                    grayscale_prob=gray,
                    blur_prob=self.global_blur[min(i, len(self.global_blur) - 1)] if color else 0.0,
                    solarize_prob=(
                        self.global_solarize[min(i, len(self.global_solarize) - 1)]
                        if color
                        else 0.0
                    ),
                    interpolation=self.interpolation,
                )
            )
        local = ViewSpec(
            self.local_size,
            self.local_scale,
            jitter=jitter,
            grayscale_prob=gray,
            blur_prob=self.local_blur if color else 0.0,
            interpolation=self.interpolation,
        )
        return specs + [local] * self.num_local

    def labeled_spec(self) -> ViewSpec:
        if self.labeled_aug == "light":  # official fine-tuning: crop + flip + jitter 0.1 p 0.8
            return ViewSpec(
                self.labeled_size,
                self.labeled_scale,
                jitter=(0.1, 0.1, 0.1, 0.1),
                jitter_prob=0.8,
                grayscale_prob=0.0,
                blur_prob=0.0,
                interpolation=self.interpolation,
            )
        return ViewSpec(
            self.labeled_size,
            self.labeled_scale,
            jitter=self.jitter if self.labeled_jitter is None else tuple(self.labeled_jitter),
            jitter_prob=self.labeled_jitter_prob,
            grayscale_prob=self.labeled_grayscale,
            blur_prob=self.global_blur[0] if self.labeled_blur is None else self.labeled_blur,
            interpolation=self.interpolation,
        )


def sample_seed(run_seed: int, stream: int, step: int, position: int) -> np.random.Generator:
    return np.random.default_rng([run_seed, stream, step, position])


class StepBatchSampler(Sampler):
    """Yields, per step of one epoch, this rank's list of sample keys.

    Key: (stream, index, global_step, position) with stream 0 = unlabeled, 1 = labeled.
    """

    def __init__(
        self,
        num_unlabeled: int,
        labeled_indices: np.ndarray,
        batch_unlabeled: int,
        batch_labeled: int,
        rank: int,
        world_size: int,
        seed: int,
        emit_unlabeled: bool = True,
    ):
        self.n_u = num_unlabeled
        # False: steps are still counted over the unlabeled set, but only labeled keys are
        # yielded (a method that never looks at unlabeled crops; labeled keys are unchanged)
        self.emit_unlabeled = emit_unlabeled
        self.labeled = np.asarray(labeled_indices, dtype=np.int64)
        self.b_u, self.b_l = batch_unlabeled, batch_labeled if len(self.labeled) else 0
        self.rank, self.world = rank, world_size
        self.seed = seed
        self.steps_per_epoch = num_unlabeled // (batch_unlabeled * world_size)
        if self.steps_per_epoch < 1:
            raise UserError(
                f"{num_unlabeled} unlabeled images are fewer than one global batch "
                f"({batch_unlabeled} x {world_size} processes)"
            )
        self.epoch, self.start_iter = 0, 0
        self._labeled_perm_cache: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int, start_iter: int = 0) -> None:
        self.epoch, self.start_iter = epoch, start_iter

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_iter

    def _labeled_perm(self, k: int) -> np.ndarray:
        if k not in self._labeled_perm_cache:
            rng = np.random.default_rng([self.seed, 1, k])
            self._labeled_perm_cache = {k: self.labeled[rng.permutation(len(self.labeled))]}
        return self._labeled_perm_cache[k]

    def _labeled_batch(self, step: int) -> list[int]:
        n = len(self.labeled)
        start = step * self.b_l * self.world + self.rank * self.b_l
        return [int(self._labeled_perm(t // n)[t % n]) for t in range(start, start + self.b_l)]

    def __iter__(self):
        perm = np.random.default_rng([self.seed, 0, self.epoch]).permutation(self.n_u)
        global_u = self.b_u * self.world
        for it in range(self.start_iter, self.steps_per_epoch):
            step = self.epoch * self.steps_per_epoch + it
            base_u = it * global_u + self.rank * self.b_u
            keys = [
                (0, int(perm[base_u + j]), step, self.rank * self.b_u + j) for j in range(self.b_u)
            ] if self.emit_unlabeled else []  # fmt: skip
            labeled = self._labeled_batch(step) if self.b_l else []
            keys += [(1, idx, step, self.rank * self.b_l + j) for j, idx in enumerate(labeled)]
            yield keys


def warn_skipped_once(source, index: int, warned: set[int]) -> None:
    """Warn that a corrupt file is skipped, once per file and process (not every epoch or
    evaluation that meets it again); the full path, since names repeat across class folders."""
    if index not in warned:
        warned.add(index)
        log.warning("skipping corrupt image %s", getattr(source, "paths", source.names)[index])


class SemiSupervisedDataset(Dataset):
    """Maps a sample key to (stream, views, target, indices of the corrupt files skipped).

    With bad_images=skip a corrupt file is replaced by the next loadable one, and the target is
    that of the image returned; a labeled image is replaced by the next image of the labeled set
    (``labeled_indices``), so no label outside the labeled subset is ever used.
    """

    def __init__(
        self, source, multicrop: MultiCrop, labeled_view, seed: int, bad_images="fail",
        labeled_indices=None,
    ):  # fmt: skip
        self.source, self.multicrop, self.labeled_view = source, multicrop, labeled_view
        self.seed, self.bad_images = seed, bad_images
        self.labeled = np.sort(np.asarray([] if labeled_indices is None else labeled_indices))
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def _candidates(self, index: int, labeled: bool):
        if labeled and len(self.labeled):
            start = int(np.searchsorted(self.labeled, index))
            n = len(self.labeled)
            return (int(self.labeled[(start + k) % n]) for k in range(n))
        n = len(self.source)
        return ((index + k) % n for k in range(n))

    def _load(self, index: int, labeled: bool = False):
        """(image, indices of the corrupt files skipped, index of the image returned). Indices,
        not a count: the trainer counts each corrupt file once, not once per epoch it is met."""
        bad: list[int] = []
        for current in self._candidates(index, labeled):
            try:
                return self.source.load(current), tuple(bad), current
            except UserError:
                if self.bad_images != "skip":
                    raise
                bad.append(current)
                warn_skipped_once(self.source, current, self._warned)
        what = "labeled image" if labeled and len(self.labeled) else "image of the data set"
        raise UserError(f"every {what} failed to load")

    def __getitem__(self, key):
        stream, index, step, position = key
        img, bad, loaded = self._load(index, labeled=stream == 1)
        rng = sample_seed(self.seed, 2 + stream, step, position)
        target = int(self.source.targets[loaded])  # the label of the image actually returned
        if stream == 0:
            return 0, self.multicrop(img, rng), target, bad
        return 1, self.labeled_view(img, rng), target, bad


def collate_semisupervised(items) -> dict:
    unl = [it for it in items if it[0] == 0]
    lab = [it for it in items if it[0] == 1]
    n_views = len(unl[0][1]) if unl else 0
    batch = {
        "unlabeled": [torch.stack([it[1][v] for it in unl]) for v in range(n_views)],
        "bad_image_indices": sorted({i for it in items for i in it[3]}),
    }
    if unl:  # for the pseudo-label accuracy monitor only (common.losses.target_stats)
        batch["unlabeled_labels"] = torch.tensor([it[2] for it in unl], dtype=torch.long)
    if lab:
        batch["labeled"] = torch.stack([it[1] for it in lab])
        batch["labels"] = torch.tensor([it[2] for it in lab], dtype=torch.long)
    return batch


class EvalDataset(Dataset):
    """Centre crops and labels. With bad_images=skip a corrupt file is replaced by the next
    loadable image *with that image's label* (feature extraction needs one row per index)."""

    def __init__(self, source, transform, bad_images="fail"):
        self.source, self.transform, self.bad_images = source, transform, bad_images
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):
        n = len(self.source)
        for current in ((index + k) % n for k in range(n)):
            try:
                img = self.source.load(current)
            except UserError:
                if self.bad_images != "skip":
                    raise
                warn_skipped_once(self.source, current, self._warned)
                continue
            return self.transform(img), int(self.source.targets[current])
        raise UserError("every image of the evaluation set failed to load")


@dataclass
class TrainData:
    loader: DataLoader
    sampler: StepBatchSampler
    num_classes: int
    classes: list[str]
    labeled_indices: np.ndarray
    num_unlabeled: int
    device_transform: object = None  # (batch, generator) -> batch, run by the Trainer on device

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch


def stop_workers(loader: DataLoader, iterator=None) -> None:
    """Shut a loader's worker processes down now (after an exception in the training loop).

    Otherwise the iterator, kept alive by persistent_workers and by the traceback, is only
    cleaned up at interpreter exit, after multiprocessing has started joining its queue threads:
    the process can then hang instead of exiting (seen on a GPU with pin_memory; the pattern of
    pytorch issue 48666), and torchrun or Slurm never learns that the run failed.
    """
    for it in (iterator, getattr(loader, "_iterator", None)):
        shutdown = getattr(it, "_shutdown_workers", None)  # multi-process iterators only
        if shutdown is not None:
            shutdown()
    if getattr(loader, "_iterator", None) is not None:
        loader._iterator = None


def select_labeled(cfg: DataConfig, source) -> np.ndarray:
    """The labeled subset: a list file, N images per class, or none (0 or unset: whether the
    run uses labels at all is ``RunConfig.has_labels``, settled when the config was loaded)."""
    if cfg.label_list:
        return subset_from_list(source.names, source.classes, cfg.label_list)
    if cfg.labels_per_class:
        return labels_per_class_split(
            source.targets, cfg.labels_per_class, cfg.split_seed, source.classes
        )
    return np.zeros(0, dtype=np.int64)


def _loader_kwargs(cfg: DataConfig, device: torch.device) -> dict:
    kwargs = {
        "num_workers": cfg.num_workers,
        "pin_memory": cfg.pin_memory and torch.device(device).type == "cuda",
    }
    if cfg.num_workers > 0:
        kwargs["persistent_workers"] = cfg.persistent_workers
        kwargs["prefetch_factor"] = cfg.prefetch_factor
    return kwargs


def build_train_data(
    cfg: DataConfig,
    batch_unlabeled: int,
    batch_labeled: int,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
    unlabeled_views: bool = True,
) -> TrainData:
    """The train loader. ``unlabeled_views=False`` (a method without an unlabeled loss): the
    same steps per epoch and labeled batches, and no unlabeled image is loaded or cropped."""
    source = build_source(cfg.dataset, cfg.root, cfg.train_split, cfg.download)
    labeled = select_labeled(cfg, source)
    if batch_labeled > 0 and len(labeled) == 0:
        raise UserError(
            "train.batch_size_labeled > 0 but no labels selected: set data.labels_per_class or "
            "data.label_list (or batch_size_labeled=0 for self-supervised pre-training)"
        )
    if 0 < len(labeled) < batch_labeled * world_size:  # legal, but rarely what was meant
        log.warning(
            "train.batch_size_labeled (%d x %d processes) is larger than the labeled set (%d "
            "images): every labeled batch repeats images", batch_labeled, world_size, len(labeled),
        )  # fmt: skip
    mean, std = cfg.mean_std
    multicrop, labeled_view = MultiCrop(cfg.view_specs(), mean, std), None
    labeled_view = ViewTransform(cfg.labeled_spec(), mean, std)
    store = None
    if cfg.augment_on == "device":
        from common.data import device_aug

        multicrop = device_aug.GeometricMultiCrop(cfg.view_specs())
        labeled_view = device_aug.GeometricView(cfg.labeled_spec())
        if cfg.device_resident:
            store, bad = device_aug.load_all(source, cfg.bad_images)
            source = device_aug.IndexSource(source, bad)
            multicrop = device_aug.IndexViews(len(cfg.view_specs()))
            labeled_view = device_aug.IndexViews(0)
    dataset = SemiSupervisedDataset(
        source,
        multicrop,
        labeled_view,
        seed=seed,
        bad_images=cfg.bad_images,
        labeled_indices=labeled,
    )
    sampler = StepBatchSampler(
        len(source),
        labeled,
        batch_unlabeled,
        batch_labeled,
        rank,
        world_size,
        seed,
        emit_unlabeled=unlabeled_views,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_semisupervised,
        **_loader_kwargs(cfg, device),
    )
    log.info(
        "train data: %d images, %d classes, %d labeled (%s), %d steps/epoch",
        len(source), len(source.classes), len(labeled),
        cfg.label_list or f"{cfg.labels_per_class} per class", sampler.steps_per_epoch,
    )  # fmt: skip
    data = TrainData(loader, sampler, len(source.classes), source.classes, labeled, len(source))
    if cfg.augment_on == "device":
        from common.data.device_aug import DeviceTransform, ResidentTransform

        kind = DeviceTransform if store is None else partial(ResidentTransform, store)
        data.device_transform = kind(
            cfg.view_specs(),
            cfg.labeled_spec(),
            mean,
            std,
            rank,
            world_size,
            mode=cfg.device_aug_mode,
        )
    return data


def build_val_loader(
    cfg: DataConfig, classes: list[str], batch_size: int, rank: int, world_size: int, device
) -> DataLoader | None:
    """Validation images sharded rank::world (no padding, so distributed accuracy is exact)."""
    if cfg.dataset in ("imagefolder", "imagenet"):
        if not (Path(cfg.root) / cfg.val_split).is_dir():
            log.warning(
                "no validation folder %s: evaluation disabled", Path(cfg.root) / cfg.val_split
            )
            return None
    source = build_source(cfg.dataset, cfg.root, cfg.val_split, cfg.download, classes=classes)
    mean, std = cfg.mean_std
    resize = cfg.eval_resize if cfg.eval_resize > 0 else None
    dataset = EvalDataset(source, EvalTransform(cfg.eval_size, resize, mean, std), cfg.bad_images)
    shard = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world_size)))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, **_loader_kwargs(cfg, device))
