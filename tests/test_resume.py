"""Exact resume: SIGKILL right after a checkpoint, then ``--resume``, ends bitwise like a run that
was never interrupted (weights, EMA/teacher, queue, center, optimizer, scaler, lr, data order,
metrics files). Everything runs single-threaded on CPU, where every op used is deterministic, so
the comparison is ``torch.equal``, not a tolerance.

The kill uses the engine's test-only hook ``SUAVEDAINO_TEST_KILL_AT_STEP`` (a real SIGKILL, at a
chosen step, without racing a file watcher).
"""

from __future__ import annotations

import csv
import re
import signal

import pytest
import torch

import main_daino
import main_suave
from common.checkpoint import load_file
from tests.helpers import assert_cli_error
from tests.reliability_utils import DAINO, SUAVE, start_entry

KILL_AT = 7  # checkpoints at 3, 4, 6, 8, ...: step 6 is saved, the 7th is computed and lost
TOTAL = 12


pytestmark = pytest.mark.usefixtures("one_thread")


def killed_run(script: str, args: list[str], kill_at: int) -> None:
    proc = start_entry(script, args, SUAVEDAINO_TEST_KILL_AT_STEP=str(kill_at))
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err[-2000:])


def read_csv(path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_checkpoint(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] and a["meta"] == b["meta"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    opt_a, opt_b = a["optimizer"], b["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]  # lr / wd of the same step included
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for idx, state in opt_a["state"].items():
        for key, value in state.items():
            other = opt_b["state"][idx][key]
            same = torch.equal(value, other) if torch.is_tensor(value) else value == other
            assert same, (idx, key)
    assert a["scaler"] == b["scaler"]


def check_resume(tmp_path, main, script: str, args: list[str], expect_buffers: list[str]):
    out = ["--output_dir", str(tmp_path)]
    main([*args, *out, "--name", "straight"])
    killed_run(script, [*args, *out, "--name", "resumed"], KILL_AT)
    run = tmp_path / "resumed"
    saved = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("checkpoint_*"))
    assert saved[-1] == 6 and not (run / "summary.json").exists()
    before = {int(r["step"]): r for r in read_csv(run / "metrics_step.csv")}
    assert max(before) == KILL_AT  # rows count steps done, like the checkpoint names

    summary = main([*args, *out, "--name", "resumed", "--resume"])
    assert summary["step"] == TOTAL
    found = re.findall(r"resumed from \S+ at step (\d+)", (run / "train.log").read_text())
    assert found == ["6"], found

    straight_dir = tmp_path / "straight" / "checkpoints"
    for step in (8, 9, TOTAL):  # checkpoints written after the resume
        a = load_file(straight_dir / f"checkpoint_{step:08d}.pth")
        b = load_file(run / "checkpoints" / f"checkpoint_{step:08d}.pth")
        assert_same_checkpoint(a, b)
    for name in expect_buffers:  # the method's state between steps is really checkpointed
        assert name in a["model"], name
    assert a["optimizer"]["state"], "optimizer state (momentum / Adam moments) was not saved"

    for name in ("metrics_step.csv", "metrics_epoch.csv"):
        rows_a = read_csv(tmp_path / "straight" / name)
        rows_b = read_csv(run / name)
        for rows in (rows_a, rows_b):
            for row in rows:
                for timing in ("images_per_s", "data_wait"):  # wall clock: may change
                    row.pop(timing, None)
        assert rows_a == rows_b, name
    steps = [int(r["step"]) for r in read_csv(run / "metrics_step.csv")]
    assert steps == list(range(1, TOTAL + 1))  # no step twice, none missing
    return a, before


def test_suave_resume_is_exact(tmp_path, tiny_data):
    """Queue (from epoch 0), EMA network, LARS momentum, warm-up lr and the online heads (with
    their optimiser state) all continue exactly."""
    args = [*SUAVE, f"data.root={tiny_data}", "suave.online_heads=true"]
    buffers = ["queue.embeddings", "queue.filled", "ema.prototypes.weight",
               "online_heads.heads.proj1.weight"]  # fmt: skip
    final, _ = check_resume(tmp_path, main_suave.main, "main_suave.py", args, buffers)
    assert int(final["model"]["queue.filled"]) == 16  # the queue was in use, full


def test_daino_resume_is_exact(tmp_path, tiny_data):
    """Teacher, center, teacher-temperature warm-up, last-layer freeze and the online heads
    continue exactly."""
    args = [*DAINO, f"data.root={tiny_data}", "daino.online_heads=true"]
    buffers = ["loss.center", "teacher.head.last_layer.parametrizations.weight.original0",
               "online_heads.heads.bottleneck.weight"]  # fmt: skip
    final, _ = check_resume(tmp_path, main_daino.main, "main_daino.py", args, buffers)
    assert final["model"]["loss.center"].abs().sum() > 0


def test_resume_with_another_config_is_refused(tmp_path, tiny_data, capsys):
    """--resume continues the saved run with its config: a changed recipe is refused in one line,
    while an allowed change (train.max_steps, a path) continues from the saved step."""
    args = [*SUAVE, f"data.root={tiny_data}", "--output_dir", str(tmp_path), "--name", "r",
            "train.epochs=1"]  # fmt: skip
    assert main_suave.main([*args, "train.max_steps=2"])["step"] == 2
    assert_cli_error(capsys, main_suave.main, [*args, "--resume", "optim.base_lr=0.1"],
                     r"already holds a different config \(optim.base_lr")  # fmt: skip
    assert_cli_error(capsys, main_suave.main, [*args, "train.max_steps=3"],
                     r"already holds checkpoints: pass --resume")  # fmt: skip
    assert main_suave.main([*args, "--resume", "train.max_steps=3"])["step"] == 3
    log_text = (tmp_path / "r" / "train.log").read_text()
    assert re.findall(r"resumed from \S+ at step (\d+)", log_text) == ["2"]


def test_resume_of_a_run_saved_by_another_version(tmp_path, tiny_data, capsys):
    """A run saved before a config key existed (or with a key since removed) is not "a different
    config": the error says which version-drift it is and gives the override that continues it."""
    import yaml

    args = [*SUAVE, f"data.root={tiny_data}", "--output_dir", str(tmp_path), "--name", "old",
            "train.epochs=1"]  # fmt: skip
    assert main_suave.main([*args, "train.max_steps=2"])["step"] == 2
    saved_file = tmp_path / "old" / "config.yaml"
    original = yaml.safe_load(saved_file.read_text())
    older = yaml.safe_load(saved_file.read_text())
    scale = older["data"].pop("global_scale")  # as if written before the key existed
    saved_file.write_text(yaml.safe_dump(older))
    missing = r"saved by a version without config key 'data.global_scale'"
    resume3 = [*args, "--resume", "train.max_steps=3"]
    err = assert_cli_error(capsys, main_suave.main, resume3, missing)
    suggested = re.search(r"--override_on_resume '([^']+)'", err).group(1)
    assert suggested == f"data.global_scale=[{scale[0]}, {scale[1]}]"
    resumed = main_suave.main([*resume3, "--override_on_resume", suggested])
    assert resumed["step"] == 3
    assert "global_scale" in yaml.safe_load(saved_file.read_text())["data"]  # saved: next resume
    assert main_suave.main([*args, "--resume", "train.max_steps=4"])["step"] == 4  # needs no flag
    newer = dict(original, data={**original["data"], "retired_key": 7})
    saved_file.write_text(yaml.safe_dump(newer))
    assert_cli_error(capsys, main_suave.main, [*args, "--resume", "train.max_steps=5"],
                     r"saved with config key 'data.retired_key' \(7\), which this version no "
                     r"longer has")  # fmt: skip
