"""Issue 17, cases 1, 3, 4, 5, 6 and 10: each test failed before its fix."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from common.checkpoint import save_checkpoint
from tests.reliability_utils import SUAVE, start_entry

pytestmark = pytest.mark.usefixtures("one_thread")


def _wait_for(predicate, proc, timeout=120.0):
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


# case 1: a second run in the same directory refuses at once; a killed run's lock does not block
def test_concurrent_runs_in_one_directory_are_refused(tmp_path, tiny_data):
    import main_suave
    from common.checkpoint import load_file

    run = tmp_path / "run"
    args = [*SUAVE, f"data.root={tiny_data}", "--output_dir", str(tmp_path), "--name", "run"]
    first = start_entry("main_suave.py", [*args, "train.epochs=200"])
    try:
        _wait_for(lambda: (run / "checkpoints" / "last.pth").is_file(), first)
        # --resume as a requeued job would: before the lock, both trained into one directory
        second = start_entry("main_suave.py", [*args, "train.epochs=200", "--resume"])
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err[-2000:]
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
        assert f"run directory {run} is in use by another run (pid {first.pid} on" in lines[0]
        assert first.poll() is None  # the first run is untouched and still training
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        # the dead run's lock is gone with it: --resume continues in the same directory
        saved = load_file(run / "checkpoints" / "last.pth")["step"]
        more = [f"train.max_steps={saved + 1}", "--resume"]
        assert main_suave.main([*args, "train.epochs=200", *more])["step"] == saved + 1
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_checkpoint_cleanup_spares_a_live_writers_temp_file(tmp_path):
    """Only the partial files of dead writers are debris; another process's in-flight temp file
    survives (before: every ``.*.tmp`` was deleted, killing the other run's save)."""
    import torch

    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_tmp = ckpt_dir / f".checkpoint_00000009.pth.{sleeper.pid}.abc123.tmp"
        dead_tmp = ckpt_dir / f".checkpoint_00000009.pth.{dead.pid}.abc123.tmp"
        old_tmp = ckpt_dir / ".checkpoint_00000009.pth.abc123.tmp"  # before pids were named
        for path in (live_tmp, dead_tmp, old_tmp):
            path.write_bytes(b"PK partial")
        save_checkpoint({"model": {"w": torch.ones(2)}, "meta": {}, "step": 1}, ckpt_dir, 1)
        assert live_tmp.exists() and not dead_tmp.exists() and not old_tmp.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_checkpoints_are_written_like_other_run_files(tmp_path):
    import torch

    old = os.umask(0o022)
    try:
        path = save_checkpoint({"model": {"w": torch.ones(2)}, "meta": {}, "step": 1}, tmp_path, 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "last.pth").stat().st_mode) == 0o644


def _copy_tree(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# case 3: a corrupt val image fails (or is skipped) after the epoch's checkpoint is written
def test_corrupt_val_image_keeps_the_epochs_checkpoint(tmp_path, tiny_data, capsys):
    import main_suave
    from tests.helpers import assert_cli_error

    data = _copy_tree(tiny_data, tmp_path / "data")
    victim = sorted((data / "val").glob("*/*"))[4]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated image
    args = [*SUAVE, f"data.root={data}", "--output_dir", str(tmp_path), "train.epochs=1"]
    assert_cli_error(capsys, main_suave.main, [*args, "--name", "fail"],
                     rf"corrupt image file .*{victim.name}")  # fmt: skip
    assert (tmp_path / "fail" / "checkpoints" / "checkpoint_00000004.pth").is_file()
    summary = main_suave.main([*args, "--name", "skip", "data.bad_images=skip"])
    assert summary["step"] == 4 and "val_top1" in summary
    assert f"skipping corrupt image {victim}" in capsys.readouterr().out


def _big_png(path, side):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), (90, 20, 200)).save(path)


# case 4: an image over PIL's pixel limit is a bad image like a corrupt one
@pytest.mark.parametrize("side", [12, 16])  # 144 px: PIL's warning zone; 256 px: its error
def test_image_over_the_pixel_limit_is_a_bad_image(tmp_path, monkeypatch, caplog, side):
    from PIL import Image

    from common.data.loaders import EvalDataset, SemiSupervisedDataset
    from common.data.sources import ImageFolderSource
    from common.errors import UserError

    for cls in ("a", "b"):
        for i in range(2):
            _big_png(tmp_path / cls / f"{i}.png", 8)
    _big_png(tmp_path / "a" / "0.png", side)  # replaces a's first image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    source = ImageFolderSource(tmp_path)
    with pytest.raises(UserError, match=r"corrupt image file .*a/0.png: over PIL's pixel limit"):
        source.load(0)
    identity = lambda img, rng: img.size  # noqa: E731
    train = SemiSupervisedDataset(source, identity, identity, seed=0, bad_images="skip")
    assert train[(0, 0, 0, 0)] == (0, (8, 8), 0, (0,))  # replaced by a/1.png, its own label
    val = EvalDataset(source, lambda img: img.size, bad_images="skip")
    assert val[0] == ((8, 8), 0)
    assert "skipping corrupt image" in caplog.text
    # met again (the next epoch / evaluation): still skipped and counted, not warned again
    assert val[0] == ((8, 8), 0) and train[(0, 0, 0, 0)][3] == (0,)
    assert caplog.text.count("skipping corrupt image") == 2  # once per dataset
    with pytest.raises(UserError, match="over PIL's pixel limit"):
        EvalDataset(source, lambda img: img.size)[0]  # bad_images=fail


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    """One tiny Suave run (4 steps): its directory."""
    import main_suave

    out = tmp_path_factory.mktemp("trained")
    main_suave.main([*SUAVE, f"data.root={tiny_data}", "--output_dir", str(out), "--name", "r",
                     "train.max_steps=4"])  # fmt: skip
    return out / "r"


def _evaluate(*args):
    import evaluate

    return evaluate.main([*args, "--num_workers", "0", "--device", "cpu"])


# case 5: checkpoints carry the class names; evaluate.py refuses data whose classes differ
def test_evaluate_refuses_other_class_names_or_order(tmp_path, tiny_data, trained, capsys):
    import torch

    from common.checkpoint import load_file
    from tests.helpers import assert_cli_error

    ckpt = trained / "checkpoints" / "last.pth"
    classes = load_file(ckpt)["meta"]["classes"]
    assert classes == sorted(p.name for p in (tiny_data / "train").iterdir())
    renamed = _copy_tree(tiny_data, tmp_path / "renamed")
    for split in ("train", "val"):  # the first class renamed: names and order both change
        (renamed / split / classes[0]).rename(renamed / split / "zebra")
    dirs = ["--train_dir", str(renamed / "train"), "--val_dir", str(renamed / "val")]
    argv = [str(ckpt), *dirs, "--evaluators", "prototype"]
    line = assert_cli_error(capsys, lambda a: _evaluate(*a), argv, "has other classes than")
    assert f"#0 '{classes[0]}' vs '{classes[1]}'" in line and "'zebra'" in line, line
    assert "knn" in _evaluate(str(ckpt), *dirs, "--evaluators", "knn")  # other data: k-NN is fine
    # a checkpoint from before class names were recorded still loads, saying so in one line
    old = load_file(ckpt)
    del old["meta"]["classes"]
    torch.save(old, tmp_path / "old.pth")
    capsys.readouterr()
    result = _evaluate(str(tmp_path / "old.pth"), *dirs, "--evaluators", "prototype")
    assert "top1" in result["prototype"]
    assert capsys.readouterr().out.count("records no class names (older run)") == 1


def test_resume_refuses_a_checkpoint_of_other_classes():
    from common.checkpoint import check_compatible
    from common.errors import UserError

    ckpt = {"meta": {"method": "suave", "classes": ["cat", "dog", "fox"]}}
    check_compatible(ckpt, {"method": "suave", "classes": ["cat", "dog", "fox"]}, "c.pth")
    check_compatible({"meta": {"method": "suave"}}, {"classes": ["a"]}, "old.pth")  # no names
    with pytest.raises(UserError, match=r"other classes than this run: .*#1 'dog' vs 'fox'"):
        check_compatible(ckpt, {"method": "suave", "classes": ["cat", "fox", "dog"]}, "c.pth")


# case 6: after a blow-up the checkpoint from before it is kept, named, and resumed from with a
# lower learning rate; evaluate.py warns about an exploded one
def test_blow_up_keeps_a_sane_checkpoint_and_resumes_with_a_lower_lr(tmp_path, tiny_data, capsys):
    import main_suave
    from common.checkpoint import is_sane, load_file
    from tests.helpers import assert_cli_error

    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    args = [*SUAVE, f"data.root={tiny_data}", "--output_dir", str(tmp_path), "--name", "run",
            "train.checkpoint_every_steps=1", "suave.use_momentum=false",
            "optim.warmup_epochs=0"]  # fmt: skip
    main_suave.main([*args, "train.max_steps=3"])
    # a changed learning rate is refused on resume unless named explicitly
    assert_cli_error(capsys, main_suave.main, [*args, "optim.base_lr=0.1", "--resume"],
                     r"different config \(optim.base_lr.*--override_on_resume")  # fmt: skip
    assert_cli_error(capsys, main_suave.main, [*args, "--override_on_resume", "optim.base_lr=1"],
                     "add --resume")  # fmt: skip
    # lr 1e30 from step 3: the weights after step 3 are finite but exploded, step 4 is NaN
    line = assert_cli_error(
        capsys, main_suave.main,
        [*args, "--resume", "--override_on_resume", "optim.base_lr=1e30"], r"non-finite",
    )  # fmt: skip
    assert f"last good checkpoint (sane weights) is {ckpts / 'stable.pth'} (step 3)" in line, line
    exploded = load_file(ckpts / "checkpoint_00000004.pth")
    assert not is_sane(exploded["health"]) and exploded["health"]["max_abs_weight"] > 1e10
    stable = load_file(ckpts / "stable.pth")
    assert stable["step"] == 3 and is_sane(stable["health"])
    assert stable["health"]["loss"] is not None
    # evaluate.py names the problem instead of scoring chance silently
    result = _evaluate(str(ckpts / "checkpoint_00000004.pth"), "--evaluators", "prototype")
    assert any("exploded weights" in note for note in result["notes"])
    assert "exploded weights" in capsys.readouterr().out
    # --resume goes back to step 3 by itself; the lower lr is logged and saved
    summary = main_suave.main([*args, "train.max_steps=5", "--resume",
                               "--override_on_resume", "optim.base_lr=0.1"])  # fmt: skip
    out = capsys.readouterr().out
    assert summary["step"] == 5
    assert "optim.base_lr 1e+30 -> 0.1 (--override_on_resume)" in out, out[-3000:]
    assert f"resumed from {ckpts / 'checkpoint_00000003.pth'} at step 3" in out
    assert "base_lr: 0.1" in (run / "config.yaml").read_text()
    assert is_sane(load_file(ckpts / "last.pth")["health"])


# case 10: the smaller items
def test_evaluate_on_other_data_keeps_both_results(tmp_path, tiny_data, trained):
    import json

    other = _copy_tree(tiny_data, tmp_path / "other")
    next(iter(sorted((other / "val").glob("*/*")))).unlink()  # other data: one image fewer
    ckpt, out = str(trained / "checkpoints" / "last.pth"), tmp_path / "out"
    common = ["--evaluators", "prototype", "--output_dir", str(out)]
    first = _evaluate(ckpt, *common)  # the run's own data
    _evaluate(ckpt, *common)  # same data again: same file, rewritten
    dirs = ["--train_dir", str(other / "train"), "--val_dir", str(other / "val")]
    second = _evaluate(ckpt, *dirs, *common)
    outputs = sorted(p.name for p in out.glob("eval_*.json"))
    assert len(outputs) == 2 and "eval_last.json" in outputs, outputs
    kept = json.loads((out / "eval_last.json").read_text())
    assert kept["data"] == first["data"] and kept["prototype"]["num_images"] == 36
    named = next(p for p in out.glob("eval_last_other-val-*.json"))
    assert json.loads(named.read_text())["prototype"]["num_images"] == 35 == second[
        "prototype"]["num_images"]  # fmt: skip
    assert str(other / "val") in named.with_suffix(".csv").read_text()  # rows name their data


def test_fresh_start_over_a_failed_runs_files_does_not_repeat_steps(tmp_path, tiny_data):
    import csv

    import main_suave

    args = [*SUAVE, f"data.root={tiny_data}", "--output_dir", str(tmp_path), "--name", "run",
            "train.checkpoint_every_steps=0"]  # fmt: skip
    proc = start_entry("main_suave.py", args, SUAVEDAINO_TEST_KILL_AT_STEP="2")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL  # steps 1 and 2 done and logged, no checkpoint yet
    main_suave.main([*args, "train.max_steps=3"])  # allowed: same config, no checkpoint
    with (tmp_path / "run" / "metrics_step.csv").open(newline="") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == [1, 2, 3]  # rows are numbered by steps done, each once


def test_labels_per_class_error_names_the_class():
    import numpy as np

    from common.data.splits import labels_per_class_split
    from common.errors import UserError

    targets = np.array([0, 0, 0, 1, 2, 2, 2])
    with pytest.raises(UserError, match=r"larger than class 'dog' \(1 images\)"):
        labels_per_class_split(targets, 2, 0, ["cat", "dog", "fox"])


def test_labeled_batch_larger_than_the_labeled_set_warns(tiny_data, caplog):
    import logging

    import torch

    from common.data.loaders import DataConfig, build_train_data

    cfg = DataConfig(root=str(tiny_data), labels_per_class=1, num_workers=0)
    with caplog.at_level(logging.WARNING):
        build_train_data(cfg, 8, 4, 0, 0, 1, torch.device("cpu"))
    assert "batch_size_labeled (4 x 1 processes) is larger than the labeled set (3" in caplog.text


def test_launcher_dry_run_validates_config_keys(tmp_path, capsys):
    from registry import launch as cli

    recipe = tmp_path / "r.sh"
    recipe.write_text("--config suave/configs/cpu_demo.yaml\n")
    argv = ["--mode", "local", "--method", "suave", "--script_file", str(recipe), "--dry_run",
            "--output_dir", str(tmp_path / "runs")]  # fmt: skip
    assert cli([*argv, "optim.base_lr=0.1"]) == 0
    capsys.readouterr()
    assert cli([*argv, "optim.base_lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown config key 'optim.base_lrr'" in err, err
