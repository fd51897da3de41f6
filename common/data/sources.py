"""Image sources: an indexable list of (image, class) with a uniform interface.

A source knows its ``classes``, per-sample ``targets`` and ``names`` (file names, used by the
SimCLR subset lists), and loads the PIL image of index ``i``. Bad data (missing directory, empty
class folder, corrupt file) raises a one-line ``UserError`` that names the path.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolderSource:
    """``root/<class>/<image>`` layout (ImageNet, the CIFAR minis, any user data set)."""

    def __init__(self, root: str | Path, classes: list[str] | None = None):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"data directory not found: {root}")
        found = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        if not found:
            raise UserError(f"data directory {root} has no class sub-folders")
        if classes is not None:  # the validation split must use the training class indices
            extra = sorted(set(found) - set(classes))
            if extra:
                raise UserError(f"{root} has class folder '{extra[0]}' that the training set lacks")
        self.root = root
        self.classes = list(classes) if classes is not None else found
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        paths, targets = [], []
        for name in found:
            files = sorted(
                entry.name
                for entry in os.scandir(root / name)
                if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not files:
                raise UserError(f"class folder {root / name} has no images")
            paths.extend(str(root / name / f) for f in files)
            targets.extend([self.class_to_idx[name]] * len(files))
        self.paths = paths
        self.targets = np.asarray(targets, dtype=np.int64)
        self.names = [os.path.basename(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with warnings.catch_warnings():  # PIL only warns between its limit and twice it
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    return img.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise UserError(  # a bad image like any other: fail, or skipped with bad_images=skip
                f"corrupt image file {path}: over PIL's pixel limit "
                f"(Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}): {err}"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise UserError(f"corrupt image file {path}: {err}") from None


class ArraySource:
    """Images held in memory as a uint8 array N×H×W×3 (torchvision CIFAR-10/100)."""

    def __init__(self, images: np.ndarray, targets, classes: list[str], name: str):
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        self.names = [f"{name}_{i:05d}" for i in range(len(images))]
        self.root = name

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])


def cifar_source(name: str, root: str | Path, train: bool, download: bool) -> ArraySource:
    """torchvision's CIFAR-10/100 files; ``download`` fetches them when missing (needs internet)."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    try:
        ds = cls(root=str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted..."
        hint = "" if download else " (set data.download=true to fetch it)"
        raise UserError(f"{name} not found under {root}{hint}: {err}") from None
    except OSError as err:  # network failure while downloading
        raise UserError(f"could not download {name} into {root}: {err}") from None
    return ArraySource(ds.data, ds.targets, ds.classes, name)


def build_source(dataset: str, root: str | Path, split: str, download: bool = False, classes=None):
    """Source for ``dataset`` in {imagefolder, imagenet, cifar10, cifar100}, split train/val."""
    if not str(root):
        raise UserError("data.root is not set: point it at your data directory")
    if dataset in ("cifar10", "cifar100"):
        return cifar_source(dataset, root, train=split == "train", download=download)
    if dataset in ("imagefolder", "imagenet"):
        return ImageFolderSource(Path(root) / split, classes=classes)
    raise UserError(
        f"unknown dataset '{dataset}' (choose imagefolder, imagenet, cifar10, cifar100)"
    )
