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
        resumed = start_entry("main_suave.py", [*args, "train.epochs=200", "train.max_steps=2",
                                                "--resume"])  # fmt: skip
        out, err = resumed.communicate(timeout=180)
        assert resumed.returncode == 0, err[-2000:]
        assert "resumed from" in out
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
