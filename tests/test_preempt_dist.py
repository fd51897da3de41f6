"""Preemption with several processes (2 gloo ranks on CPU, started like ``srun`` would): the flag
is all-reduced only every ``train.preempt_check_every`` steps and at log / save / epoch-end steps,
yet a signal to one rank still stops both at the same step, after a checkpoint of that step."""

from __future__ import annotations

import json
import re

import pytest

from common.config import from_dict
from common.errors import UserError
from suave.method import SuaveRunConfig
from tests.dist_utils import free_port
from tests.reliability_utils import start_entry
from tests.test_dist_faults import BASE, wait_exit


def test_check_interval_must_be_positive():
    with pytest.raises(UserError, match="train.preempt_check_every must be >= 1"):
        from_dict(SuaveRunConfig, {"train": {"preempt_check_every": 0}}).validate()


def test_signal_to_one_rank_stops_both_at_the_next_check(tmp_path, tiny_data):
    # 2 ranks x 2 unlabeled images: 9 steps per epoch, no logging before step 100, so steps 6
    # and 7 are no boundary. Rank 1 alone gets SIGUSR1 before step 6 (5 done): checking every
    # step would stop at 6; every 4 steps, both ranks stop at 8. Had they disagreed, one would
    # wait in the next collective and fail after train.dist_timeout_s instead of exiting 0.
    runs = tmp_path / "runs"
    args = [*BASE, f"data.root={tiny_data}", "train.batch_size_unlabeled=2",
            "train.batch_size_labeled=2", "train.epochs=2", "log.print_every=100",
            "train.preempt_check_every=4", "train.dist_timeout_s=60", "--output_dir", str(runs),
            "--name", "run"]  # fmt: skip
    port = str(free_port())
    procs = [
        start_entry("main_suave.py", args, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=port, SUAVEDAINO_TEST_USR1_AT_STEP="5:1")
        for r in range(2)
    ]  # fmt: skip
    results = [wait_exit(p, 240) for p in procs]
    for rank, (code, _, err, _) in enumerate(results):
        assert code == 0, (rank, err[-3000:])
    text = results[0][1] + results[0][2]  # rank 0 logs for both
    assert "9 steps/epoch" in text, text[-3000:]
    assert re.findall(r"stopping at step (\d+) after a preemption signal", text) == ["8"], text
    saved = sorted(p.name for p in (runs / "run" / "checkpoints").glob("checkpoint_*.pth"))
    assert saved == ["checkpoint_00000008.pth"], saved
    summary = json.loads((runs / "run" / "summary.json").read_text())
    assert summary.get("preempted") is True, summary
