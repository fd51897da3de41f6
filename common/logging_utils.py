"""Console/file logging, metrics CSV files and wandb (online, offline or disabled)."""

from __future__ import annotations

import csv
import json
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class LogConfig:
    print_every: int = 10
    wandb_mode: Literal["disabled", "offline", "online"] = "disabled"
    wandb_project: str = "suave-daino"
    wandb_entity: str | None = None
    plots: bool = True


def setup_logging(run_dir: Path | None, rank: int, name: str = "train") -> None:
    """Rank 0 logs INFO to the console and ``<run_dir>/<name>.log``; other ranks only warnings."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    root.addHandler(console)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if run_dir is not None and rank == 0:
        file_handler = logging.FileHandler(Path(run_dir) / f"{name}.log")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)


class MetricsCSV:
    """Append-only CSV whose header grows when new metric names appear.

    ``truncate_after(step)`` drops rows logged after a checkpoint, so a resumed run's file reads
    like an uninterrupted one.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fields: list[str] = []
        if self.path.is_file():
            with self.path.open(newline="") as handle:
                self.fields = next(csv.reader(handle), [])

    def _rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        new = [k for k in row if k not in self.fields]
        if new:
            rows = self._rows()
            self.fields += new
            self._rewrite(rows)
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            if handle.tell() == 0:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in row.items()})

    def merge(self, row: dict) -> None:
        """Add ``row``'s columns to the row of the same ``step`` (appended when there is none):
        results computed later (evaluate.py --log_to_run) join the epoch row they belong to."""
        rows = self._rows()
        same = [r for r in rows if r.get("step", "") != "" and int(r["step"]) == int(row["step"])]
        if not same:
            self.write(row)
            return
        self.fields += [k for k in row if k not in self.fields]
        same[-1].update({k: _fmt(v) for k, v in row.items()})
        self._rewrite(rows)

    def truncate_after(self, step: int) -> None:
        rows = [r for r in self._rows() if r.get("step", "") == "" or int(r["step"]) <= step]
        if self.fields:
            self._rewrite(rows)


def wandb_key(section: str, column: str) -> str:
    """The one key scheme: CSV column ``val_top1`` is wandb ``val/top1``, ``loss`` of the step
    file is ``train/loss``, ``train_labeled_acc`` is ``train/labeled_acc`` (no doubled prefix)."""
    return f"{section}/{column.removeprefix(section + '_')}"


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def log_into_run(run_dir: Path, ckpt: dict, values: dict, wandb_mode: str | None = None) -> dict:
    """Results about checkpoint ``ckpt`` of the run in ``run_dir`` (e.g. ``val_knn_top1``): one
    row at the checkpoint's step in ``metrics_epoch.csv``, ``summary.json`` when the checkpoint is
    the run's final one, and, with ``wandb_mode``, the run's own wandb id resumed (``val/...``).
    Returns the row."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    step = int(ckpt["step"])
    row = {"step": step, "epoch": max(int(ckpt.get("epoch", 1)) - 1, 0), **values}
    MetricsCSV(run_dir / "metrics_epoch.csv").merge(row)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("step") == step:  # an earlier checkpoint does not speak for the run
            summary.update(values)
            summary_path.write_text(json.dumps(summary, indent=2))
    if wandb_mode and wandb_mode != "disabled":
        config = ckpt.get("config") or {}
        log_cfg = config.get("log", {}) if isinstance(config, dict) else {}
        cfg = LogConfig(wandb_mode=wandb_mode,
                        wandb_project=log_cfg.get("wandb_project", LogConfig.wandb_project),
                        wandb_entity=log_cfg.get("wandb_entity"))  # fmt: skip
        logger = WandbLogger(cfg, run_dir, run_dir.name, config)
        logger.log_row("val", row)
        if logger.run is not None:
            logger.run.summary.update({wandb_key("val", k): v for k, v in values.items()})
        logger.finish()
    return row


class WandbLogger:
    """Thin wrapper; ``disabled`` never imports wandb; the run id is kept for resumes.

    ``offline`` (no network, e.g. compute nodes) writes ``<run_dir>/wandb/offline-run-*``;
    upload it later with ``wandb sync <run_dir>/wandb/offline-run-*``.
    """

    def __init__(self, cfg: LogConfig, run_dir: Path, name: str, config: dict):
        self.run = None
        self.first_new_step = 0
        if cfg.wandb_mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed: logging to CSV only")
            return
        id_file = Path(run_dir) / "wandb_id.txt"
        # Our own id (wandb.util.generate_id is gone in recent wandb releases).
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id)
        self.run = wandb.init(
            project=cfg.wandb_project,
            entity=cfg.wandb_entity,
            name=name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
            mode=cfg.wandb_mode,
        )
        self.first_new_step = self._first_new_step()

    def _first_new_step(self) -> int:
        """After a resume, wandb already holds the steps the previous process logged past its
        last checkpoint; replaying them (identical values: resume is exact) would only make
        wandb warn once per row that steps must increase. 0 for a new run."""
        try:
            if not self.run.resumed:
                return 0
            step = int(self.run.step)
        except Exception:  # e.g. wandb's shared mode, which has no step counter
            return 0
        if step > 0:
            log.info("wandb run resumed at step %d: steps before it are not sent again", step)
        return step

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None and step >= self.first_new_step:
            self.run.log(metrics, step=step)

    def log_row(self, section: str, row: dict) -> None:
        """A CSV row (``train``: metrics_step.csv, ``val``: metrics_epoch.csv) at its ``step``."""
        self.log({wandb_key(section, k): v for k, v in row.items() if k != "step"}, row["step"])

    def finish(self) -> None:
        if self.run is not None:
            offline_dir = Path(self.run.dir).parent if self.run.settings.mode == "offline" else None
            self.run.finish()
            if offline_dir is not None:  # offline runs are uploaded later, from any machine
                log.info("wandb offline run in %s; upload it with: wandb sync %s", offline_dir,
                         offline_dir)  # fmt: skip
