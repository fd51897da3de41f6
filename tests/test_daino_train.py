"""Short real Daino runs on CIFAR-10 images (../shared/data/cifar10-mini), through the CLI entry.

Images are trained at 24 px (locals 12 px) to keep each run within seconds on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import main_daino

ROOT = Path(__file__).resolve().parents[1]

TINY_DAINO = [
    "data.labels_per_class=50", "data.normalization=cifar", "data.num_workers=0",
    "data.global_size=24", "data.global_scale=[0.3,1.0]", "data.num_local=2",
    "data.local_size=12", "data.local_scale=[0.1,0.3]", "data.global_blur=[0.0,0.0]",
    "data.local_blur=0.0", "data.labeled_size=24", "data.labeled_scale=[0.3,1.0]",
    "data.eval_size=24", "data.eval_resize=24", "model.backbone=resnet_mini",
    "daino.head_hidden_dim=256", "daino.head_bottleneck_dim=64",
    "daino.warmup_teacher_temp_epochs=0", "daino.freeze_last_layer_epochs=0",
    "daino.teacher_momentum=0.9", "daino.teacher_momentum_final=0.99",
    "optim.base_lr=5e-3", "optim.final_lr=1e-5", "optim.warmup_epochs=0.2",
    "optim.weight_decay=0.04", "train.epochs=1", "train.eval_batch_size=500",
]  # fmt: skip
CONFIG = str(ROOT / "daino" / "configs" / "cpu_demo.yaml")


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_short_training_learns(tmp_path, cifar10_mini):
    """~100 steps (about 40 s): the loss falls and the teacher beats chance (10%) by far; so
    does each online head (on the student), in metrics_epoch.csv and summary.json."""
    summary = main_daino.main([
        "--config", CONFIG, "--output_dir", str(tmp_path), "--name", "run",
        f"data.root={cifar10_mini}", *TINY_DAINO, "train.batch_size_unlabeled=48",
        "train.batch_size_labeled=48", "train.checkpoint_every_steps=0", "log.print_every=4",
        "daino.online_heads=true",
    ])  # fmt: skip
    assert summary["step"] == 104  # 5000 images // 48
    rows = read_csv(tmp_path / "run" / "metrics_step.csv")
    loss = [float(r["loss"]) for r in rows]
    labeled = [float(r["loss_labeled"]) for r in rows]
    # DINO's usual start: a brief dip while teacher and student agree on few classes, a rise once
    # centering spreads the targets, then a steady fall. The labeled term falls from the start.
    end = sum(loss[-5:]) / 5
    assert end < max(loss[: len(loss) // 2]) - 0.1, loss
    assert end < math.log(10) - 0.08, loss  # ln K: what predicting nothing costs
    assert sum(labeled[-5:]) / 5 < sum(labeled[:5]) / 5 - 0.3, labeled
    assert summary["val_top1"] > 22.0, summary  # measured ~30%
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["val_top1"] == summary["val_top1"]
    last = read_csv(tmp_path / "run" / "metrics_epoch.csv")[-1]
    for head in ("backbone", "hidden", "bottleneck"):
        key = f"val_top1_head_{head}"
        assert saved[key] == summary[key] == float(last[key])
        assert summary[key] > 15.0, summary  # chance 10%


@pytest.mark.slow  # tests/test_resume.py checks Daino resume bitwise in CI
def test_resume_after_kill_continues_from_saved_step(tmp_path, cifar10_mini):
    """SIGKILL after the first checkpoint, then --resume: the run continues where it was saved,
    recomputes the lost steps identically and ends like an uninterrupted run would."""
    args = [
        "--config", CONFIG, "--output_dir", str(tmp_path), "--name", "run",
        f"data.root={cifar10_mini}", *TINY_DAINO, "train.batch_size_unlabeled=32",
        "train.batch_size_labeled=16", "train.max_steps=30", "train.checkpoint_every_steps=5",
        "log.print_every=1",
    ]  # fmt: skip
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main_daino.py"), *args], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    first_ckpt = run_dir / "checkpoints" / "checkpoint_00000005.pth"
    step_csv = run_dir / "metrics_step.csv"
    deadline = time.monotonic() + 120
    try:
        # Kill once two steps past the checkpoint are logged: they must be recomputed the same.
        while time.monotonic() < deadline and proc.poll() is None:
            if first_ckpt.exists() and step_csv.exists():
                if any(int(r["step"]) >= 7 for r in read_csv(step_csv)):
                    break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {int(r["step"]): r for r in read_csv(step_csv)}
    saved = max(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("checkpoint_*"))
    assert saved >= 5 and max(before) >= 7
    assert not (run_dir / "summary.json").exists()

    summary = main_daino.main([*args[:6], "--resume", *args[6:]])
    assert summary["step"] == 30
    log_text = (run_dir / "train.log").read_text()
    found = re.findall(r"resumed from \S+ at step (\d+)", log_text)
    assert found and int(found[-1]) == saved, found
    after = read_csv(step_csv)
    steps = [int(r["step"]) for r in after]
    assert steps == list(range(1, 31)), steps  # each step once: rows after the checkpoint replaced
    for row in after:
        step = int(row["step"])
        if saved < step <= max(before):  # computed before the kill and again after the resume
            assert (
                float(row["loss"]) == float(before[step]["loss"])
                or abs(float(row["loss"]) / float(before[step]["loss"]) - 1) < 1e-4
            ), (step, row["loss"], before[step]["loss"])
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 30
