"""``benchmarks/make_dev_split.py``: a dev split holds out training images only, per class, the
same ones on every machine, and refuses what it cannot split with a one-line message."""

from __future__ import annotations

import re
import sys

import pytest

from tests.reliability_utils import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import make_dev_split  # noqa: E402


def image_folder(root, per_class=(10, 5, 3)):
    for c, n in enumerate(per_class):
        for part, count in (("train", n), ("val", 2)):
            d = root / part / f"class{c}"
            d.mkdir(parents=True)
            for i in range(count):
                (d / f"{part}_{i:03d}.png").write_bytes(b"x")
            (d / "notes.txt").write_text("not an image")
    return root


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))


def test_holds_out_a_share_of_each_training_class_as_links(tmp_path):
    src = image_folder(tmp_path / "src")
    counts = make_dev_split.make_dev_split(src, tmp_path / "dev", val_fraction=0.2, seed=0)
    assert counts == {"train": 14, "val": 4, "classes": 3}
    dev = tmp_path / "dev"
    for c, (n, held) in enumerate(((10, 2), (5, 1), (3, 1))):
        train = {p.name for p in (dev / "train" / f"class{c}").iterdir()}
        val = {p.name for p in (dev / "val" / f"class{c}").iterdir()}
        assert len(val) == held and len(train) == n - held and not train & val
        assert train | val == {f"train_{i:03d}.png" for i in range(n)}  # never the source's val/
    link = next((dev / "val" / "class0").iterdir())
    assert link.is_symlink() and link.resolve() == (src / "train" / "class0" / link.name).resolve()


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    src = image_folder(tmp_path / "src", per_class=(50, 50))
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        make_dev_split.make_dev_split(src, tmp_path / name, seed=seed)
    a, b, c = (listing(tmp_path / n / "val") for n in "abc")
    assert a == b and a != c and len(a) == 20


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("no_train", r"is not a folder: expected an ImageFolder"),
        ("one_image", r"class 'class0' has 1 image\(s\)"),
        ("out_not_empty", r"exists and is not an empty folder"),
        ("out_is_file", r"exists and is not an empty folder"),
        ("out_unwritable", r"cannot write the split into"),
        ("fraction", r"--val_fraction must be in \(0, 1\)"),
    ],
)
def test_refusals_are_one_line(tmp_path, capsys, case, pattern):
    src = tmp_path / "src"
    out = tmp_path / "dev"
    argv = [str(src), str(out)]
    if case == "one_image":
        image_folder(src, per_class=(1, 4))
    elif case != "no_train":
        image_folder(src)
    if case == "out_not_empty":
        out.mkdir()
        (out / "old").write_text("")
    if case == "out_is_file":
        out.write_text("")
    if case == "out_unwritable":  # its parent is a file (root ignores permission bits)
        (tmp_path / "a_file").write_text("")
        argv[1] = str(tmp_path / "a_file" / "dev")
    if case == "fraction":
        argv += ["--val_fraction", "1.0"]
    assert make_dev_split.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("make_dev_split: ")
    assert re.search(pattern, err), err


def test_command_prints_the_counts(tmp_path, capsys):
    src = image_folder(tmp_path / "src")
    assert make_dev_split.main([str(src), str(tmp_path / "dev"), "--seed", "3"]) == 0
    assert "3 classes, 14 train / 4 val images" in capsys.readouterr().out
