"""PNG plots of runs' metrics CSV files: loss terms, learning rate, accuracies; one run or several.

    python -m common.plots RUN_DIR                       # loss.png, lr.png, accuracy.png in it
    python -m common.plots RUN_A RUN_B ... [--output PNG] # all runs on one chart (comparison.png)

Loss terms (``loss`` and every ``loss_*`` column of ``metrics_step.csv``) are drawn raw (faint)
and smoothed by a debiased exponential moving average (``--smoothing``, 0.9 as TensorBoard's
default), since step losses are noisy. ``lr`` is drawn against the step; every ``val_*`` column of
``metrics_epoch.csv`` (``val_top1``, ``val_top5``, any ``val_top1_head_*``) against the epochs
completed. With several runs each run keeps one colour, each metric one line style, and the
legend names both. Matplotlib draws off-screen (no display, no global backend switch), so this
runs on cluster nodes and at the end of training (``log.plots``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from pathlib import Path

from common.errors import UserError, run_cli

log = logging.getLogger(__name__)

STYLES = ("-", "--", ":", "-.")


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


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased so the first points are not pulled towards 0."""
    out, avg = [], 0.0
    for i, value in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * value
        out.append(avg / (1 - weight**i) if weight > 0 else value)
    return out


def _check_smoothing(weight: float) -> None:
    if not 0 <= weight < 1:
        raise UserError(f"--smoothing must be in [0, 1), got {weight}")


class RunData:
    """The step and epoch columns of one run directory."""

    def __init__(self, run_dir: str | Path, label: str | None = None):
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise UserError(f"run directory not found: {self.dir}")
        self.label = label or self.dir.name
        step_csv, epoch_csv = self.dir / "metrics_step.csv", self.dir / "metrics_epoch.csv"
        self.step = read_columns(step_csv) if step_csv.is_file() else {}
        self.epoch = read_columns(epoch_csv) if epoch_csv.is_file() else {}
        if not self.step and not self.epoch:
            raise UserError(
                f"nothing to plot in {self.dir} (no metrics_step.csv / metrics_epoch.csv)"
            )

    def losses(self) -> list[str]:
        return [n for n in self.step if n == "loss" or n.startswith("loss_")]

    def accuracies(self) -> list[str]:
        return [n for n in self.epoch if n.startswith("val_")] if "epoch" in self.epoch else []

    def accuracy_curve(self, name: str) -> tuple[list[float], list[float]]:
        epoch_of = dict(self.epoch["epoch"])  # step -> epoch index
        xs = [epoch_of.get(x, x) + 1 for x, _ in self.epoch[name]]  # epochs completed
        return xs, [y for _, y in self.epoch[name]]


def _axes(fig, title: str, xlabel: str, ylabel: str, position=111):
    ax = fig.add_subplot(position)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return ax


def _name(run: RunData, metric: str, runs: list[RunData]) -> str:
    return metric if len(runs) == 1 else f"{run.label}: {metric}"


def draw_losses(ax, runs: list[RunData], smoothing: float) -> bool:
    drawn = False
    for i, run in enumerate(runs):
        for j, name in enumerate(run.losses()):
            xs, ys = zip(*run.step[name])
            colour = f"C{i % 10}" if len(runs) > 1 else f"C{j % 10}"
            style = STYLES[j % len(STYLES)] if len(runs) > 1 else "-"
            width = 2.0 if name == "loss" else 1.4
            marker = "o" if len(xs) < 3 else None
            ax.plot(xs, ys, color=colour, linestyle=style, linewidth=0.8, alpha=0.3)
            ax.plot(xs, smooth(list(ys), smoothing), color=colour, linestyle=style,
                    linewidth=width, marker=marker, label=_name(run, name, runs))  # fmt: skip
            drawn = True
    return drawn


def draw_lr(ax, runs: list[RunData]) -> bool:
    drawn = False
    for i, run in enumerate(runs):
        if "lr" in run.step:
            xs, ys = zip(*run.step["lr"])
            ax.plot(xs, ys, color=f"C{i % 10}", linewidth=1.6, label=run.label)
            drawn = True
    return drawn


def draw_accuracies(ax, runs: list[RunData]) -> bool:
    drawn = False
    for i, run in enumerate(runs):
        for j, name in enumerate(run.accuracies()):
            xs, ys = run.accuracy_curve(name)
            colour = f"C{i % 10}" if len(runs) > 1 else f"C{j % 10}"
            style = STYLES[j % len(STYLES)] if len(runs) > 1 else "-"
            ax.plot(xs, ys, color=colour, linestyle=style, marker="o", linewidth=1.6,
                    label=_name(run, name, runs))  # fmt: skip
            drawn = True
    return drawn


def val_top1_per_epoch(epoch_csv: Path) -> list[tuple[int, float]]:
    """(epochs completed, val_top1) of every evaluated epoch of a run."""
    columns = read_columns(epoch_csv)
    epoch_of = dict(columns.get("epoch", []))
    return [(int(epoch_of.get(x, x)) + 1, y) for x, y in columns.get("val_top1", [])]


def plot_comparison(curves: dict[str, list[tuple[int, float]]], title: str, out: Path) -> Path:
    """Validation top-1 per epoch of several runs on one chart (the demo: method vs baseline)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=100, layout="constrained")
    ax = _axes(fig, title, "epoch", "validation top-1 (%)")
    for label, points in curves.items():
        ax.plot([x for x, _ in points], [y for _, y in points], label=label, marker="o")
    ax.legend()
    fig.savefig(out)
    return out


def plot_runs(run_dirs, output: str | Path | None = None, smoothing: float = 0.9):
    """All runs on one figure (loss terms, lr, accuracy panels); returns the matplotlib Figure
    and writes it to ``output`` when given."""
    from matplotlib.figure import Figure  # no pyplot: no display, no global state

    _check_smoothing(smoothing)
    paths = [Path(p) for p in run_dirs]
    names = [p.name for p in paths]
    labels = [str(p) if names.count(p.name) > 1 else p.name for p in paths]  # unique in legends
    runs = [RunData(p, label) for p, label in zip(paths, labels)]
    fig = Figure(figsize=(18, 5), dpi=100, layout="constrained")
    panels = [
        (_axes(fig, "training loss (faint: raw)", "step", "loss", 131), draw_losses, (smoothing,)),
        (_axes(fig, "learning rate", "step", "lr", 132), draw_lr, ()),
        (_axes(fig, "validation accuracy", "epoch", "%", 133), draw_accuracies, ()),
    ]
    for ax, draw, extra in panels:
        if draw(ax, runs, *extra):
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if output is not None:
        try:
            fig.savefig(output)
        except OSError as err:
            raise UserError(f"cannot write {output}: {err.strerror}") from None
    return fig


def plot_run(run_dir: str | Path, smoothing: float = 0.9) -> list[Path]:
    """``loss.png``, ``lr.png`` and ``accuracy.png`` into ``run_dir`` (each one if it has data)."""
    from matplotlib.figure import Figure

    _check_smoothing(smoothing)
    run = RunData(run_dir)
    charts = [
        ("loss.png", f"training loss: {run.label} (faint: raw)", "step", "loss",
         lambda ax: draw_losses(ax, [run], smoothing)),
        ("lr.png", f"learning rate: {run.label}", "step", "lr", lambda ax: draw_lr(ax, [run])),
        ("accuracy.png", f"validation accuracy: {run.label}", "epoch", "%",
         lambda ax: draw_accuracies(ax, [run])),
    ]  # fmt: skip
    written = []
    for filename, title, xlabel, ylabel, draw in charts:
        fig = Figure(figsize=(7, 4.2), dpi=100, layout="constrained")
        ax = _axes(fig, title, xlabel, ylabel)
        if draw(ax):
            ax.legend()
            fig.savefig(run.dir / filename)
            written.append(run.dir / filename)
    if not written:
        raise UserError(f"nothing to plot in {run.dir} (no loss, lr or val_* columns)")
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


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


@run_cli
def main(argv: list[str] | None = None) -> list[Path]:
    p = _Parser(prog="python -m common.plots", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--output", default=None,
                   help="one PNG with all runs (default: comparison.png for several runs, the "
                        "run's own loss/lr/accuracy PNGs for one)")  # fmt: skip
    p.add_argument("--smoothing", type=float, default=0.9, help="EMA weight of the loss curves")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.output is None and len(args.runs) == 1:
        written = plot_run(args.runs[0], args.smoothing)
    else:
        output = Path(args.output or "comparison.png")
        plot_runs(args.runs, output, args.smoothing)
        written = [output]
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
