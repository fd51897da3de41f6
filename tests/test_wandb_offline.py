"""wandb offline mode: no network, everything lands in a local run directory for `wandb sync`;
the keys and steps a real run logs there agree with its CSV files and checkpoints."""

from __future__ import annotations

import csv
import json
import sys
import time
import types
from pathlib import Path

import pytest

from common.checkpoint import load_file
from common.logging_utils import LogConfig, WandbLogger, wandb_key

OFFLINE_ENV = {
    "WANDB_MODE": "offline",
    "WANDB_DIR": "",
    "WANDB_SILENT": "true",
    "WANDB_API_KEY": "",
}  # fmt: skip  (an empty key: never talk to a server)


def test_wandb_keys_have_one_scheme():
    assert wandb_key("val", "val_top1") == "val/top1"
    assert wandb_key("val", "val_top1_head_linear") == "val/top1_head_linear"
    assert wandb_key("train", "loss") == "train/loss"
    assert wandb_key("train", "train_labeled_acc") == "train/labeled_acc"


class _FakeRun:
    def __init__(self, resumed: bool, step):
        self.resumed, self._step, self.rows = resumed, step, []

    @property
    def step(self) -> int:
        if isinstance(self._step, Exception):
            raise self._step
        return self._step

    def log(self, metrics: dict, step: int) -> None:
        self.rows.append(step)


@pytest.mark.parametrize(
    "resumed, next_step, sent",
    [(True, 131, [131, 140]),  # resumed: wandb holds steps up to 130 from the killed process
     (False, 0, [100, 120, 131, 140]),  # a new run: everything
     (True, AssertionError("shared mode"), [100, 120, 131, 140])],  # no step counter: everything
)  # fmt: skip
def test_resumed_run_does_not_resend_steps_wandb_has(tmp_path, monkeypatch, resumed, next_step,
                                                      sent):  # fmt: skip
    """A run resumed from its checkpoint at step 100 replays steps 101-130 that the killed
    process had already logged; wandb refuses them with one warning each, so they are not sent."""
    run = _FakeRun(resumed, next_step)
    fake = types.SimpleNamespace(init=lambda **kwargs: run)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = WandbLogger(LogConfig(wandb_mode="online"), tmp_path, "resumed", {})
    for step in (100, 120, 131, 140):
        logger.log_row("train", {"step": step, "loss": 1.0})
    assert run.rows == sent


def test_offline_run_keeps_logged_metrics(tmp_path, monkeypatch, caplog):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_API_KEY", "")  # never talk to a server
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logger = WandbLogger(LogConfig(wandb_mode="offline"), run_dir, "offline-test", {"seed": 3})
    assert logger.run is not None
    for step in range(3):
        logger.log({"train/loss": 2.5 - step, "val/top1": 11.0 * step}, step)
    with caplog.at_level("INFO", logger="common.logging_utils"):
        logger.finish()

    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list(run_dir.rglob("*"))
    record_files = list(offline[0].glob("run-*.wandb"))
    assert len(record_files) == 1
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert record_files[0].name == f"run-{run_id}.wandb"
    history = wandb_history(record_files[0])
    assert history == {0: {"train/loss": 2.5, "val/top1": 0},
                       1: {"train/loss": 1.5, "val/top1": 11},
                       2: {"train/loss": 0.5, "val/top1": 22}}, history  # fmt: skip
    assert any("wandb sync" in r.getMessage() for r in caplog.records)


def wandb_history(record_file: Path, timeout: float = 60.0) -> dict[int, dict]:
    """History rows of an offline ``run-*.wandb`` file: {step: {key: value}}, without wandb's
    own ``_step`` / ``_runtime`` / ``_timestamp``. wandb-core may still be writing the file after
    ``finish`` returns (seen on a loaded machine): it is read again until its ``exit`` record."""
    deadline = time.monotonic() + timeout
    while True:
        rows, complete = _read_history(record_file)
        if complete or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def _read_history(record_file: Path) -> tuple[dict[int, dict], bool]:
    """The file is a LevelDB-style log (7-byte header, 32 KiB blocks of checksummed chunks) of
    ``wandb_internal_pb2.Record`` messages; rows logged at the same step are merged."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = record_file.read_bytes()
    assert data[:4] == b":W&B", data[:8]  # wandb's magic, then a version, then the log
    pos, block, pending, rows, complete = 7, 32768, b"", {}, False
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a chunk header
            pos += block - pos % block
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: one whole record
            record = pb.Record()
            record.ParseFromString(pending)
            complete |= record.WhichOneof("record_type") == "exit"
            if record.WhichOneof("record_type") == "history":
                row = rows.setdefault(record.history.step.num, {})
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    if not key.startswith("_"):
                        row[key] = json.loads(item.value_json)
    return rows, complete


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.usefixtures("one_thread")
def test_training_run_keys_and_steps_agree_everywhere(tmp_path, tiny_data, monkeypatch):
    """A real Daino run with wandb offline: one key scheme (``train/loss``, ``val/top1``, never
    ``val/val_top1``), the extra scalars, and one step numbering (steps done) shared by the
    CSV files, wandb, the checkpoints and summary.json."""
    pytest.importorskip("wandb")
    import main_daino
    from tests.reliability_utils import DAINO

    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value if key != "WANDB_DIR" else str(tmp_path / "wandb_dir"))
    summary = main_daino.main([*DAINO, f"data.root={tiny_data}", "--output_dir", str(tmp_path),
                               "--name", "run", "train.epochs=2", "log.wandb_mode=offline",
                               "log.plots=false"])  # fmt: skip
    run_dir = tmp_path / "run"
    (record_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_history(record_file)
    step_rows = read_csv(run_dir / "metrics_step.csv")
    epoch_rows = read_csv(run_dir / "metrics_epoch.csv")
    ckpt_steps = sorted(
        load_file(p)["step"] for p in (run_dir / "checkpoints").glob("checkpoint_*")
    )

    # 2 epochs x 4 steps, a row after every step, checkpoints every 3 steps and at epoch ends
    assert [int(r["step"]) for r in step_rows] == list(range(1, 9))
    assert [int(r["step"]) for r in epoch_rows] == [4, 8]
    assert ckpt_steps == [3, 4, 6, 8]
    assert summary["step"] == 8 == load_file(run_dir / "checkpoints" / "last.pth")["step"]
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 8
    assert sorted(history) == list(range(1, 9))  # wandb steps = CSV steps
    for row in step_rows:
        logged = history[int(row["step"])]
        assert logged["train/loss"] == pytest.approx(float(row["loss"]), rel=1e-5)
        assert logged["train/epoch"] == int(row["epoch"])
    for row in epoch_rows:  # validation lands on the step of the epoch's checkpoint
        assert int(row["step"]) in ckpt_steps
        assert history[int(row["step"])]["val/top1"] == pytest.approx(float(row["val_top1"]))

    keys = set().union(*history.values())
    expected = {"train/loss", "train/loss_unlabeled", "train/loss_labeled", "train/lr",
                "train/weight_decay", "train/grad_norm", "train/teacher_temp",
                "train/teacher_momentum", "train/labeled_acc", "val/top1", "val/top5"}  # fmt: skip
    assert expected <= keys, expected - keys
    assert not [k for k in keys if k.startswith(("train/train_", "val/val_"))], keys
    assert set(step_rows[0]) >= {"grad_norm", "weight_decay", "teacher_temp", "teacher_momentum"}
    # the values are the schedules', not placeholders
    assert all(float(r["grad_norm"]) > 0 for r in step_rows)
    assert float(step_rows[0]["teacher_momentum"]) < float(step_rows[-1]["teacher_momentum"])
    assert float(step_rows[0]["teacher_temp"]) < float(step_rows[-1]["teacher_temp"])

    # evaluate.py --log_to_run: k-NN / prototype results join the run at the checkpoint's step
    from evaluate import main as evaluate_main

    eval_args = ["--evaluators", "knn,prototype", "--num_workers", "0", "--knn_k", "5"]
    evaluate_main([str(run_dir / "checkpoints" / "checkpoint_00000006.pth"), "--log_to_run",
                   *eval_args])  # fmt: skip
    results = evaluate_main([str(run_dir / "checkpoints" / "last.pth"), "--log_to_run", *eval_args])
    epoch_rows = {int(r["step"]): r for r in read_csv(run_dir / "metrics_epoch.csv")}
    assert sorted(epoch_rows) == [4, 6, 8]  # the final row gained columns, step 6 is new
    knn = results["knn"]["top1"]
    assert float(epoch_rows[8]["val_knn_top1"]) == pytest.approx(knn, abs=1e-4)
    assert float(epoch_rows[8]["val_prototype_top1"]) == pytest.approx(
        float(epoch_rows[8]["val_top1"])
    )
    assert epoch_rows[6]["val_top1"] == "" and epoch_rows[6]["val_knn_top1"] != ""
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["step"] == 8 and saved["val_knn_top1"] == pytest.approx(knn)
    runs = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert len(runs) == 3 and all(p.name == f"run-{run_id}.wandb" for p in runs)  # same run id
    logged = {}
    for path in runs[1:]:
        for step, row in wandb_history(path).items():
            logged.setdefault(step, {}).update(row)
    assert logged[8]["val/knn_top1"] == pytest.approx(knn) and "val/knn_top5" in logged[6]
