"""PNG plots of a run's metrics CSV files: loss curves and validation accuracy.

    python -m common.plots RUN_DIR [RUN_DIR ...]

``loss.png``: the total loss and every ``loss_*`` term of ``metrics_step.csv`` against the step;
``accuracy.png``: ``val_top1`` / ``val_top5`` (and any other ``val_*`` accuracy) of
``metrics_epoch.csv`` against the epoch. Matplotlib draws off-screen (no display, no global
backend switch), so this runs on cluster nodes and at the end of training (``log.plots``).
"""

from __future__ import annotations

import csv
import logging
import math
import sys
from pathlib import Path

from common.errors import UserError, run_cli

log = logging.getLogger(__name__)


def read_columns(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Numeric columns of a metrics CSV as (x, value) pairs; x is ``step`` (or the row number)."""
    try:
        with Path(path).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    columns: dict[str, list[tuple[float, float]]] = {}
    for i, row in enumerate(rows):
        x = _number(row.get("step"))
        x = float(i) if x is None else x
        for key, raw in row.items():
            value = _number(raw)
            if key and value is not None:
                columns.setdefault(key, []).append((x, value))
    return columns


def _number(raw) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _figure(title: str, xlabel: str, ylabel: str):
    from matplotlib.figure import Figure  # no pyplot: no display, no global state

    fig = Figure(figsize=(7, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_losses(step_csv: Path, out: Path) -> Path | None:
    """Total loss (bold) and each loss term per step; None when the file has no loss column."""
    columns = read_columns(step_csv)
    names = [n for n in columns if n == "loss" or n.startswith("loss_")]
    if not names:
        return None
    fig, ax = _figure(f"training loss: {Path(step_csv).parent.name}", "step", "loss")
    for name in names:
        xs, ys = zip(*columns[name])
        bold = name == "loss"
        ax.plot(xs, ys, label=name, linewidth=2.0 if bold else 1.2, zorder=3 if bold else 2,
                marker="o" if len(xs) < 3 else None)  # fmt: skip
    ax.legend()
    fig.savefig(out)
    return out


def plot_accuracy(epoch_csv: Path, out: Path) -> Path | None:
    """Validation accuracy per epoch; None when nothing was evaluated."""
    columns = read_columns(epoch_csv)
    names = [n for n in columns if n.startswith("val_")]
    if not names or "epoch" not in columns:
        return None
    epoch_of = dict(columns["epoch"])  # step -> epoch
    fig, ax = _figure(f"validation accuracy: {Path(epoch_csv).parent.name}", "epoch", "%")
    for name in names:
        xs = [epoch_of.get(x, x) + 1 for x, _ in columns[name]]  # epochs completed
        ax.plot(xs, [y for _, y in columns[name]], label=name, marker="o")
    ax.legend()
    fig.savefig(out)
    return out


def val_top1_per_epoch(epoch_csv: Path) -> list[tuple[int, float]]:
    """(epochs completed, val_top1) of every evaluated epoch of a run."""
    columns = read_columns(epoch_csv)
    epoch_of = dict(columns.get("epoch", []))
    return [(int(epoch_of.get(x, x)) + 1, y) for x, y in columns.get("val_top1", [])]


def plot_comparison(curves: dict[str, list[tuple[int, float]]], title: str, out: Path) -> Path:
    """Validation top-1 per epoch of several runs on one chart (the demo: method vs baseline)."""
    fig, ax = _figure(title, "epoch", "validation top-1 (%)")
    for label, points in curves.items():
        ax.plot([x for x, _ in points], [y for _, y in points], label=label, marker="o")
    ax.legend()
    fig.savefig(out)
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` and ``accuracy.png`` into ``run_dir`` (each only if it has data)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    written = []
    step_csv, epoch_csv = run_dir / "metrics_step.csv", run_dir / "metrics_epoch.csv"
    if step_csv.is_file():
        written.append(plot_losses(step_csv, run_dir / "loss.png"))
    if epoch_csv.is_file():
        written.append(plot_accuracy(epoch_csv, run_dir / "accuracy.png"))
    written = [p for p in written if p is not None]
    if not written:
        raise UserError(f"nothing to plot in {run_dir} (no metrics_step.csv / metrics_epoch.csv)")
    return written


def plot_run_quietly(run_dir: str | Path) -> list[Path]:
    """``plot_run`` for the end of training: a failure is a warning, never a failed run."""
    try:
        paths = plot_run(run_dir)
    except Exception as err:  # noqa: BLE001 - plots are a convenience
        log.warning("plots not written: %s", err)
        return []
    log.info("plots: %s", ", ".join(str(p) for p in paths))
    return paths


@run_cli
def main(argv: list[str] | None = None) -> list[Path]:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any(a.startswith("-") for a in argv):
        raise UserError("usage: python -m common.plots RUN_DIR [RUN_DIR ...]")
    written = []
    for run_dir in argv:
        for path in plot_run(run_dir):
            print(f"wrote {path}")
            written.append(path)
    return written


if __name__ == "__main__":
    main()
