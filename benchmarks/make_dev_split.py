"""Build a development split: hold out part of an ImageFolder's *training* images as its val/.

Recipes are chosen on a dev split and only then measured on the real ``val/``, so that no
setting is tuned on the folder it is reported on (benchmarks/RESULTS.md, issue 15). The dev split
is a new ImageFolder of symbolic links: ``OUT/val/<class>/`` holds a seeded random share of each
class's training images, ``OUT/train/<class>/`` the rest; nothing is copied and the source's own
``val/`` is never read.

    python benchmarks/make_dev_split.py ../shared/data/cifar10-mini /tmp/dev/cifar10-mini-dev
    python benchmarks/make_dev_split.py SRC OUT --val_fraction 0.2 --seed 0

The same source, fraction and seed give the same split on any machine (files are sorted by name
and each class draws from its own seeded generator), so a dev result can be rebuilt from its
command alone.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from benchlib import ROOT  # noqa: F401  (puts the repository on sys.path)

from common.data.sources import IMAGE_EXTENSIONS  # the files a run's ImageFolder loads


class SplitError(ValueError):
    """A source or destination the split cannot be built from; the message names it."""


def class_images(train: Path) -> dict[str, list[Path]]:
    """Images per class folder of ``train``, sorted by name (the split's fixed order)."""
    if not train.is_dir():
        raise SplitError(f"{train} is not a folder: expected an ImageFolder with train/<class>/")
    classes = sorted(d for d in train.iterdir() if d.is_dir())
    if not classes:
        raise SplitError(f"{train} has no class folders")
    images = {}
    for d in classes:
        files = sorted(
            f for f in d.iterdir() if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if len(files) < 2:
            raise SplitError(f"class '{d.name}' has {len(files)} image(s); a split needs >= 2")
        images[d.name] = files
    return images


def held_out_count(n_images: int, val_fraction: float) -> int:
    """At least one image on each side of the split."""
    return min(n_images - 1, max(1, round(n_images * val_fraction)))


def split_class(files: list[Path], val_fraction: float, seed: int, name: str):
    """(train, val) lists of one class; the draw depends only on (seed, class name, files)."""
    rng = random.Random(f"{seed}:{name}")
    val = set(rng.sample(range(len(files)), held_out_count(len(files), val_fraction)))
    return (
        [f for i, f in enumerate(files) if i not in val],
        [f for i, f in enumerate(files) if i in val],
    )


def make_dev_split(src: Path, out: Path, val_fraction: float = 0.2, seed: int = 0):
    """Write ``out/train`` and ``out/val`` (symlinks into ``src/train``); returns the counts."""
    if not 0.0 < val_fraction < 1.0:
        raise SplitError(f"--val_fraction must be in (0, 1), got {val_fraction}")
    images = class_images(src / "train")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SplitError(f"{out} exists and is not an empty folder; name another one")
    counts = {"train": 0, "val": 0}
    for name, files in images.items():
        for part, chosen in zip(("train", "val"), split_class(files, val_fraction, seed, name)):
            folder = out / part / name
            try:
                folder.mkdir(parents=True, exist_ok=True)
                for f in chosen:
                    (folder / f.name).symlink_to(f.resolve())
            except OSError as err:
                raise SplitError(f"cannot write the split into {out}: {err}") from None
            counts[part] += len(chosen)
    counts["classes"] = len(images)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="ImageFolder root with train/<class>/ (val/ unread)")
    p.add_argument("out", type=Path, help="new folder for the dev split (train/ and val/)")
    p.add_argument("--val_fraction", type=float, default=0.2, help="share held out per class")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out draw")
    args = p.parse_args(argv)
    try:
        counts = make_dev_split(args.src, args.out, args.val_fraction, args.seed)
    except SplitError as err:
        print(f"make_dev_split: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {counts['classes']} classes, {counts['train']} train / {counts['val']} val "
        f"images (held out from {args.src}/train, fraction {args.val_fraction}, seed {args.seed})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
