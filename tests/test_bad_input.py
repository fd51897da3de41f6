"""Bad input -> one clear error line, exit code 2, no traceback (main_suave.py)."""

import re
import shutil
from pathlib import Path

import pytest
import torch

import main_daino
import main_suave
from common.checkpoint import load_file
from common.errors import UserError
from common.models.factory import build_backbone
from tests.helpers import TINY_SUAVE, assert_cli_error, assert_one_line_error, run_entry
from tests.reliability_utils import DAINO, SUAVE

CFG = "suave/configs/cpu_demo.yaml"


def suave(tmp_path, *extra):
    return run_entry(
        "main_suave.py",
        ["--config", CFG, "--output_dir", str(tmp_path / "runs"), *TINY_SUAVE, *extra],
    )


def test_missing_data_dir(tmp_path):
    proc = suave(tmp_path, f"data.root={tmp_path / 'nope'}")
    assert_one_line_error(proc, r"data directory not found: .*nope/train")


def test_empty_class_folder(tmp_path):
    (tmp_path / "data" / "train" / "cat").mkdir(parents=True)
    proc = suave(tmp_path, f"data.root={tmp_path / 'data'}")
    assert_one_line_error(proc, r"class folder .*cat has no images")


def make_small_folder(src, dst, per_class=12):
    for split in ("train", "val"):
        for cls_dir in sorted((src / split).iterdir())[:3]:
            out = dst / split / cls_dir.name
            out.mkdir(parents=True)
            for f in sorted(cls_dir.iterdir())[:per_class]:
                shutil.copy(f, out / f.name)


def test_corrupt_image_fails_or_is_skipped(tmp_path, cifar10_mini):
    root = tmp_path / "data"
    make_small_folder(cifar10_mini, root)
    victim = sorted((root / "train").glob("*/*"))[5]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated JPEG
    args = [f"data.root={root}", "data.labels_per_class=2", "train.batch_size_unlabeled=36",
            "train.batch_size_labeled=6", "train.epochs=1"]  # fmt: skip
    proc = suave(tmp_path, *args, "--name", "fail")
    assert_one_line_error(proc, rf"corrupt image file .*{victim.name}")
    assert not any((tmp_path / "runs" / "fail" / "checkpoints").iterdir())  # nothing trained
    proc = suave(tmp_path, *args, "data.bad_images=skip", "train.epochs=2", "--name", "skip")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipping corrupt image {victim}" in proc.stdout + proc.stderr  # the full path
    rows = (tmp_path / "runs" / "skip" / "metrics_step.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    # met in both epochs (every image is unlabeled once per epoch), counted once: one bad file
    assert int(last[header.index("bad_images")]) == 1


def test_corrupt_image_with_the_data_in_memory(tmp_path, cifar10_mini):
    """device_resident decodes every image up front: a corrupt file stops it there, naming the
    file; with bad_images=skip it is held out of memory and replaced like on the loader path
    (warned with its path, counted once). Old code: refused skip with this setting."""
    root = tmp_path / "data"
    make_small_folder(cifar10_mini, root)
    victim = sorted((root / "train").glob("*/*"))[5]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated JPEG
    args = [f"data.root={root}", "data.labels_per_class=2", "train.batch_size_unlabeled=36",
            "train.batch_size_labeled=6", "data.augment_on=device",
            "data.device_resident=true", "data.num_workers=0"]  # fmt: skip
    proc = suave(tmp_path, *args, "train.epochs=1", "--name", "fail")
    assert_one_line_error(proc, rf"corrupt image file .*{victim.name}")
    proc = suave(tmp_path, *args, "data.bad_images=skip", "train.epochs=2", "--name", "skip")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipping corrupt image {victim}" in proc.stdout + proc.stderr  # the full path
    rows = (tmp_path / "runs" / "skip" / "metrics_step.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert int(last[header.index("bad_images")]) == 1  # met in both epochs, counted once


def test_in_memory_skip_replaces_within_its_stream():
    """In memory the data set hands out indices: a corrupt one becomes the next loadable index,
    a labeled one the next labeled index (never an unlabeled image's label), with its target."""
    from common.data.device_aug import IndexSource, IndexViews
    from common.data.loaders import SemiSupervisedDataset

    class Five:
        classes, names, targets = ["a", "b"], [f"{i}.png" for i in range(6)], [0, 1, 0, 1, 0, 1]

        def __len__(self):
            return 6

    source = IndexSource(Five(), {1: "corrupt image file 1.png", 2: "corrupt image file 2.png"})
    data = SemiSupervisedDataset(source, IndexViews(2), IndexViews(0), seed=0, bad_images="skip",
                                 labeled_indices=[1, 4])  # fmt: skip
    stream, views, target, bad = data[(0, 1, 0, 0)]
    assert [int(v) for v in views] == [3, 3] and target == 1 and bad == (1, 2)
    stream, view, target, bad = data[(1, 1, 0, 0)]
    assert int(view) == 4 and target == 0 and bad == (1,)
    strict = SemiSupervisedDataset(source, IndexViews(2), IndexViews(0), seed=0)
    with pytest.raises(UserError, match="corrupt image file 1.png"):
        strict[(0, 1, 0, 0)]


def test_unknown_key_and_bad_value(tmp_path):
    assert_one_line_error(suave(tmp_path, "train.epochz=3"), r"unknown config key 'train.epochz'")
    assert_one_line_error(suave(tmp_path, "train.epochs=three"), r"train.epochs' must be int")
    assert_one_line_error(suave(tmp_path, "--bogus"), r"unknown option '--bogus'|unrecognized")
    proc = run_entry("main_suave.py", ["--config", "nope.yaml"])
    assert_one_line_error(proc, r"config file not found: nope.yaml")


def test_wrong_architecture_checkpoint(tmp_path):
    fake = tmp_path / "resnet18_swav.pth"
    from torchvision.models import resnet18

    torch.save({f"module.{k}": v for k, v in resnet18().state_dict().items()}, fake)
    proc = suave(tmp_path, f"model.init={fake}", "model.backbone=resnet50")
    assert_one_line_error(proc, rf"{fake.name}")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    assert_one_line_error(suave(tmp_path, f"--init={garbage}"), r"garbage.pth")


# In-process cases (seconds, not a Python start-up each): every refusal happens before the run
# directory is created or changed.


def snapshot(directory: Path) -> dict:
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.usefixtures("one_thread")
def test_bad_data_is_refused_before_the_run_dir_exists(tmp_path, tiny_data, capsys):
    runs = tmp_path / "runs"
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    label_list = tmp_path / "1percent.txt"
    label_list.write_text("n01440764_10026.JPEG\n")  # an ImageNet class this data set lacks
    no_list = ["data.labels_per_class=null"]
    cases = [
        ([f"data.root={tmp_path / 'nope'}"], r"data directory not found: .*nope/train"),
        ([f"data.root={empty}"], r"data directory .*empty/train has no class sub-folders"),
        ([f"data.root={tiny_data}", "data.labels_per_class=13"],
         r"labels per class \(13\) is larger than class .* \(12 images\)"),
        ([f"data.root={tiny_data}", *no_list, f"data.label_list={label_list}"],
         r"1percent.txt line 1: class 'n01440764' is not in the dataset"),
        ([f"data.root={tiny_data}", *no_list, f"data.label_list={tmp_path / 'none.txt'}"],
         r"label list not found: .*none.txt"),
        ([f"data.root={tiny_data}", "train.epochz=3"], r"unknown config key 'train.epochz'"),
    ]  # fmt: skip
    for extra, pattern in cases:
        argv = [*SUAVE, *extra, "--output_dir", str(runs), "--name", "r"]
        assert_cli_error(capsys, main_suave.main, argv, pattern)
        assert not runs.exists(), extra


@pytest.mark.usefixtures("one_thread")
def test_checkpoint_of_another_method_or_backbone(tmp_path, tiny_data, capsys):
    """A ViT checkpoint given to a ResNet Suave run (--init or --resume), or a Daino one to
    --resume: one line, and the run directory is left exactly as it was. (A Daino checkpoint's
    backbone is a valid --init: tests/test_cross_init.py.)"""
    runs, data = tmp_path / "runs", f"data.root={tiny_data}"
    suave_args = [*SUAVE, data, "--output_dir", str(runs), "--name", "s", "train.max_steps=1"]
    main_suave.main(suave_args)
    main_daino.main([*DAINO, data, "--output_dir", str(runs), "--name", "d", "train.max_steps=1"])
    daino_ckpt = runs / "d" / "checkpoints" / "checkpoint_00000001.pth"
    vit_ckpt = tmp_path / "vit_suave.pth"  # a Suave checkpoint whose backbone is a ViT
    ckpt = load_file(runs / "s" / "checkpoints" / "checkpoint_00000001.pth")
    vit, _ = build_backbone("vit_tiny")
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if ".backbone." not in f".{k}"}
    ckpt["model"].update({f"net.backbone.{k}": v for k, v in vit.state_dict().items()})
    ckpt["meta"]["backbone"] = "vit_tiny"
    torch.save(ckpt, vit_ckpt)

    argv = [*SUAVE, data, "--output_dir", str(runs), "--name", "i", "--init", str(vit_ckpt)]
    assert_cli_error(capsys, main_suave.main, argv, re.escape(vit_ckpt.name))
    assert not (runs / "i").exists()

    ckpt_dir = runs / "s" / "checkpoints"
    cases = [
        (daino_ckpt, r"made with method='daino', but this run has method='suave'"),
        (vit_ckpt, r"made with backbone='vit_tiny', but this run has backbone='resnet_mini'"),
    ]
    for foreign, pattern in cases:
        for path in ckpt_dir.iterdir():
            path.unlink()
        shutil.copy(foreign, ckpt_dir / "checkpoint_00000001.pth")
        before = snapshot(runs / "s")
        argv = [*suave_args, "--resume", "train.max_steps=2"]
        assert_cli_error(capsys, main_suave.main, argv, pattern)
        assert snapshot(runs / "s") == before
