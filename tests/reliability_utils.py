"""Shared pieces of the reliability tests (resume, NaN, faults, bad input, fuzzing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# With tests/conftest.py's ``tiny_data`` (3 classes x 12 images: 4 steps/epoch of 8 unlabeled),
# 16 px crops, 3 epochs = 12 steps of a few tens of milliseconds.
TINY = [
    "data.normalization=cifar", "data.global_size=16", "data.local_size=8", "data.num_local=2",
    "data.global_scale=[0.3,1.0]", "data.local_scale=[0.1,0.3]", "data.labeled_size=16",
    "data.labeled_scale=[0.3,1.0]", "data.global_blur=[0.0,0.0]", "data.local_blur=0.0",
    "data.eval_size=16", "data.eval_resize=0", "data.num_workers=0", "data.labels_per_class=2",
    "model.backbone=resnet_mini", "train.batch_size_unlabeled=8", "train.batch_size_labeled=4",
    "train.epochs=3", "train.checkpoint_every_steps=3", "train.keep_checkpoints=20",
    "train.eval_batch_size=50", "log.print_every=1",
]  # fmt: skip
SUAVE = [
    "--config", "suave/configs/cpu_demo.yaml", *TINY, "suave.projector_hidden_dim=64",
    "suave.embed_dim=32", "suave.queue_length=16", "suave.queue_start_epoch=0",
    "suave.use_momentum=true", "optim.warmup_epochs=1",
]  # fmt: skip
DAINO = [
    "--config", "daino/configs/cpu_demo.yaml", *TINY, "daino.head_hidden_dim=64",
    "daino.head_bottleneck_dim=32", "daino.warmup_teacher_temp_epochs=2",
    "daino.freeze_last_layer_epochs=1", "optim.warmup_epochs=1",
]  # fmt: skip


def entry_env(**extra: str) -> dict:
    """Environment of a CLI subprocess: the repo importable, one thread (deterministic, and kind
    to the shared CPUs)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def start_entry(script: str, args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), *args], cwd=ROOT, env=entry_env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
