"""Distributed faults (2 gloo processes on CPU, started like ``srun`` would: one process per rank,
no torchrun agent to clean up): a rank that dies, stalls or never comes makes the others exit
with one ``error:`` line and code 2 within ``train.dist_timeout_s``, instead of hanging forever.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from tests.dist_utils import free_port
from tests.reliability_utils import ROOT, entry_env, start_entry

BASE = [
    "--config", "suave/configs/cpu_demo.yaml", "data.normalization=cifar", "data.global_size=16",
    "data.local_size=8", "data.labeled_size=16", "data.eval_size=16", "data.num_local=2",
    "data.num_workers=0", "model.backbone=resnet_mini", "suave.projector_hidden_dim=64",
    "suave.embed_dim=32", "data.labels_per_class=2", "train.batch_size_unlabeled=4",
    "train.batch_size_labeled=2", "train.epochs=30", "log.print_every=1", "train.device=cpu",
]  # fmt: skip


def start_ranks(tmp_path, tiny_data, ranks, timeout_s: float, **env) -> list[subprocess.Popen]:
    port = str(free_port())
    args = [*BASE, f"data.root={tiny_data}", f"train.dist_timeout_s={timeout_s}",
            "--output_dir", str(tmp_path / "runs"), "--name", "run"]  # fmt: skip
    return [
        start_entry("main_suave.py", args, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env)  # fmt: skip
        for r in ranks
    ]


def wait_exit(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str, float]:
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err, time.monotonic() - start


def assert_one_error_line(code: int, err: str, pattern: str) -> str:
    import re

    assert code == 2, (code, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), err[-3000:]
    return errors[0]


def test_dead_rank_makes_the_other_exit(tmp_path, tiny_data):
    """Rank 1 is SIGKILLed at step 3 (test hook); rank 0 notices the closed connection."""
    rank0, rank1 = start_ranks(tmp_path, tiny_data, [0, 1], 20, SUAVEDAINO_TEST_KILL_AT_STEP="3:1")
    try:
        code1, _, err1, _ = wait_exit(rank1, 180)
        assert code1 == -signal.SIGKILL, err1[-2000:]
        code0, out0, err0, waited = wait_exit(rank0, 20 + 25)
    finally:
        for proc in (rank0, rank1):
            if proc.poll() is None:
                proc.kill()
    assert_one_error_line(code0, err0, r"^error: rank 0 lost contact with the process group .*"
                                       r"train.dist_timeout_s=20 s")  # fmt: skip
    assert "step 2 " in out0  # it trained until the peer died


def test_stalled_rank_is_given_up_after_the_timeout(tmp_path, tiny_data):
    """Rank 1 freezes (SIGSTOP) mid-run: rank 0's next collective times out after 8 s."""
    rank0, rank1 = start_ranks(tmp_path, tiny_data, [0, 1], 8)
    log_file = tmp_path / "runs" / "run" / "train.log"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and rank0.poll() is None:
            if log_file.is_file() and " step 2 " in log_file.read_text():
                break
            time.sleep(0.1)
        rank1.send_signal(signal.SIGSTOP)
        code0, _, err0, waited = wait_exit(rank0, 8 + 30)
    finally:
        for proc in (rank0, rank1):
            if proc.poll() is None:
                proc.kill()
        rank1.communicate()
    line = assert_one_error_line(code0, err0, r"^error: rank 0 lost contact with the process group")
    reason = line.split("(", 1)[1].split(")", 1)[0]  # gloo words a timeout either way
    assert re.search(r"timed out|timeout", reason, re.IGNORECASE), line
    assert "train.dist_timeout_s=8 s" in line, line
    assert waited < 8 + 30


@pytest.mark.slow
def test_missing_rank_at_start_times_out_without_touching_the_run(tmp_path, tiny_data):
    """Only rank 0 of 2 starts: it gives up forming the group after the timeout, in one line,
    before anything is written."""
    (rank0,) = start_ranks(tmp_path, tiny_data, [0], 4)
    code, _, err, waited = wait_exit(rank0, 120)
    assert_one_error_line(code, err, r"rank 0 could not form the process group of 2 at "
                                     r"127.0.0.1:\d+ within train.dist_timeout_s=4 s")  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_lost_group_exits_without_interpreter_teardown(tmp_path):
    """A broken process group ends the process with os._exit(2) after its one line, the log
    flushed: the normal exit ran c10d destructors that aborted rank 0 (SIGABRT) once in CI."""
    log_file = tmp_path / "run.log"
    code = f"""
import atexit, logging
from common.errors import ProcessGroupLostError, run_cli
logging.basicConfig(filename={str(log_file)!r}, level=logging.INFO)
atexit.register(lambda: print("atexit ran", flush=True))
@run_cli
def main():
    logging.getLogger("t").info("before the loss of the group")
    raise ProcessGroupLostError("rank 0 lost contact with the process group (test)")
main()
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=entry_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert_one_error_line(proc.returncode, proc.stderr, r"^error: rank 0 lost contact")
    assert "atexit ran" not in proc.stdout  # the interpreter's teardown was skipped
    assert "before the loss of the group" in log_file.read_text()  # but the log was flushed
