"""Which training images carry labels: N per class with a seed, or a SimCLR subset list."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.errors import UserError


def labels_per_class_split(targets, per_class: int, seed: int, classes=None) -> np.ndarray:
    """Indices of exactly ``per_class`` images of every class, drawn reproducibly from ``seed``.

    ``classes`` (names by index) lets errors name the class instead of its index."""
    targets = np.asarray(targets)
    if per_class <= 0:
        raise UserError(f"labels per class must be positive, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        if len(members) < per_class:
            name = f"'{classes[cls]}'" if classes is not None and cls < len(classes) else str(cls)
            raise UserError(
                f"labels per class ({per_class}) is larger than class {name} "
                f"({len(members)} images)"
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def label_list_names(list_file: str | Path) -> list[tuple[int, str]]:
    """(line number, file name) of every name in a label list: one per line, blank lines and
    ``#`` comments skipped; a missing or non-UTF-8 file, or a name listed twice, is an error."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise UserError(f"label list not found: {list_file}")
    try:  # utf-8-sig: a byte-order mark from a Windows editor is not part of the first name
        text = list_file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"label list {list_file} is not UTF-8 text (one name per line)") from None
    except OSError as err:
        raise UserError(f"cannot read label list {list_file}: {err.strerror or err}") from None
    seen: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in seen:  # a merged duplicate would silently shrink the labeled set
            raise UserError(
                f"{list_file} line {line_no}: '{name}' is listed twice (first at line {seen[name]})"
            )
        seen[name] = line_no
    return [(line_no, name) for name, line_no in seen.items()]


def subset_from_list(names: list[str], classes: list[str], list_file: str | Path) -> np.ndarray:
    """Indices of the images named in a SimCLR subset list (one ``n0xxxxx_yyy.JPEG`` per line).

    The class is the file-name prefix before ``_``; an unknown class or a file the data set lacks
    is an error naming the list line, never a silently smaller labeled set.
    """
    index_of = {name: i for i, name in enumerate(names)}
    known = set(classes)
    chosen = []
    for line_no, name in label_list_names(list_file):
        cls = name.split("_")[0]
        if cls not in known:
            raise UserError(f"{list_file} line {line_no}: class '{cls}' is not in the dataset")
        if name not in index_of:
            raise UserError(f"{list_file} line {line_no}: file '{name}' not found in the dataset")
        chosen.append(index_of[name])
    if not chosen:
        raise UserError(f"label list {list_file} names no images")
    return np.unique(np.asarray(chosen, dtype=np.int64))
