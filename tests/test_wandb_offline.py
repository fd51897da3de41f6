"""wandb offline mode: no network, everything lands in a local run directory for `wandb sync`."""

from __future__ import annotations

import re

import pytest

from common.logging_utils import LogConfig, WandbLogger


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
        logger.log({"train/loss": 2.5 - step, "val/val_top1": 11.0 * step}, step)
    with caplog.at_level("INFO", logger="common.logging_utils"):
        logger.finish()

    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list(run_dir.rglob("*"))
    record_files = list(offline[0].glob("run-*.wandb"))
    assert len(record_files) == 1
    data = record_files[0].read_bytes()
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert record_files[0].name == f"run-{run_id}.wandb"
    # history records hold each key followed by its JSON value
    for key, values in (("train/loss", {b"2.5", b"1.5", b"0.5"}), ("val/val_top1", {b"11", b"22"})):
        found = set(re.findall(re.escape(key.encode()) + rb"[\x00-\x1f\x80-\xff]{1,4}([0-9.]+)",
                               data))  # fmt: skip
        assert values <= found, (key, found)
    assert any("wandb sync" in r.getMessage() for r in caplog.records)
