"""Bad input -> one clear error line, exit code 2, no traceback (main_suave.py)."""

import shutil

import torch

from tests.helpers import TINY_SUAVE, assert_one_line_error, run_entry

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
    proc = suave(tmp_path, *args, "data.bad_images=skip", "--name", "skip")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipping corrupt image" in proc.stdout + proc.stderr


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
