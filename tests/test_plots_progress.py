"""Run plots (real PNGs from synthetic metrics) and the terminal progress bar."""

from __future__ import annotations

import io
import logging
import math
import os
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tqdm import tqdm

from common.logging_utils import MetricsCSV
from common.plots import main as plots_main
from common.plots import plot_run, plot_runs, smooth
from common.progress import ProgressBar
from tests.helpers import assert_cli_error


def synthetic_run(run_dir, steps=60, epochs=3, scale=1.0, head=False):
    """Rows as the trainer writes them: ``step`` counts the steps done (1..steps)."""
    run_dir.mkdir(exist_ok=True)
    noise = np.random.default_rng(0).normal(0, 0.3, steps + 1)
    step_csv = MetricsCSV(run_dir / "metrics_step.csv")
    for s in range(1, steps + 1):
        row = {"step": s, "epoch": (s - 1) // 20, "lr": 0.1 * scale * (1 - s / (steps + 1)),
               "loss": scale * (4 * math.exp(-s / 30) + 0.5 + noise[s]),
               "loss_unlabeled": scale * (4 * math.exp(-s / 25) + 0.4)}  # fmt: skip
        if s >= 10:  # a term that appears later: the CSV header grows
            row["loss_labeled"] = 3 * math.exp(-s / 15) + 0.2
        row["images_per_s"] = 100.0
        step_csv.write(row)
    epoch_csv = MetricsCSV(run_dir / "metrics_epoch.csv")
    for e in range(epochs):
        row = {"step": 20 * e + 20, "epoch": e, "val_top1": 10 + 15 * e * scale,
               "val_top5": 40 + 20 * e}  # fmt: skip
        if head:  # an online-head column, as evaluate() may add
            row["val_top1_head_linear"] = 5 + 12 * e
        epoch_csv.write(row)


def assert_real_plot(path):
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (700, 420)
        pixels = np.asarray(img.convert("RGB"))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 20  # lines, text, antialiasing: not a blank or flat image
    non_white = np.any(pixels < 250, axis=2).mean()
    assert 0.02 < non_white < 0.6, non_white
    # coloured curves: some pixels are clearly not grey
    spread = pixels.max(axis=2).astype(int) - pixels.min(axis=2).astype(int)
    assert (spread > 80).mean() > 0.001


def test_plots_are_real_pngs(tmp_path):
    synthetic_run(tmp_path)
    written = plot_run(tmp_path)
    assert [p.name for p in written] == ["loss.png", "lr.png", "accuracy.png"]
    for path in written:
        assert_real_plot(path)


def test_plots_cli_and_missing_data(tmp_path, capsys):
    run = tmp_path / "run"
    synthetic_run(run, epochs=0)  # no epoch rows: no accuracy plot
    assert plots_main([str(run)]) == [run / "loss.png", run / "lr.png"]
    assert_cli_error(capsys, plots_main, [str(tmp_path / "nope")], r"run directory not found")
    (tmp_path / "empty").mkdir()
    assert_cli_error(capsys, plots_main, [str(tmp_path / "empty")], r"nothing to plot")


def test_smoothing_is_a_debiased_ema():
    assert smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0
    assert smooth([1.0, 3.0], 0.0) == [1.0, 3.0]
    noisy = list(np.random.default_rng(1).normal(5, 1, 400))
    assert np.std(smooth(noisy, 0.9)[50:]) < 0.4 * np.std(noisy)


def pixels_near(pixels, colour, tol=12):
    return (np.abs(pixels.astype(int) - np.array(colour)).max(axis=2) <= tol).sum()


def test_several_runs_on_one_chart(tmp_path, capsys):
    """Two runs in one PNG: each panel holds both runs' curves (legend labels from the Figure,
    and the two run colours C0 / C1 found in the loss and accuracy panels of the image)."""
    synthetic_run(tmp_path / "run_a")
    synthetic_run(tmp_path / "run_b", steps=40, epochs=2, scale=0.5, head=True)
    out = tmp_path / "both.png"
    fig = plots_main([str(tmp_path / "run_a"), str(tmp_path / "run_b"), "--output", str(out)])
    assert fig == [out]
    fig = plot_runs([tmp_path / "run_a", tmp_path / "run_b"], out)
    loss_ax, lr_ax, acc_ax = fig.axes
    labels = [[line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
              for ax in fig.axes]  # fmt: skip
    assert labels[0] == ["run_a: loss", "run_a: loss_unlabeled", "run_a: loss_labeled",
                         "run_b: loss", "run_b: loss_unlabeled", "run_b: loss_labeled"]  # fmt: skip
    assert labels[1] == ["run_a", "run_b"]
    assert labels[2] == ["run_a: val_top1", "run_a: val_top5", "run_b: val_top1",
                         "run_b: val_top5", "run_b: val_top1_head_linear"]  # fmt: skip
    raw, smoothed = loss_ax.get_lines()[:2]  # raw (faint) and EMA of run_a's loss
    assert np.std(np.diff(smoothed.get_ydata())) < 0.5 * np.std(np.diff(raw.get_ydata()))
    assert list(lr_ax.get_lines()[1].get_xdata()) == list(range(1, 41))

    with Image.open(out) as img:
        pixels = np.asarray(img.convert("RGB"))
    width = pixels.shape[1]
    blue, orange = (31, 119, 180), (255, 127, 14)  # matplotlib C0 (run_a), C1 (run_b)
    for panel in (pixels[:, : width // 3], pixels[:, 2 * width // 3 :]):  # loss, accuracy
        assert pixels_near(panel, blue) > 200 and pixels_near(panel, orange) > 200
    synthetic_run(tmp_path / "seed1", steps=5, epochs=0)
    synthetic_run(tmp_path / "seed1" / "run_a", steps=5, epochs=0)  # same name, other folder
    same = plot_runs([tmp_path / "run_a", tmp_path / "seed1" / "run_a"])  # no file: Figure only
    legend = [t.get_text() for t in same.axes[1].get_legend().get_texts()]
    assert legend == [str(tmp_path / "run_a"), str(tmp_path / "seed1" / "run_a")]
    assert_cli_error(capsys, plots_main, [str(tmp_path / "run_a"), "--smoothing", "1"],
                     r"--smoothing must be in \[0, 1\)")  # fmt: skip


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.filterwarnings("error")  # a loss tensor that requires grad is read without a warning
def test_progress_bar_on_a_terminal_keeps_log_lines_apart(monkeypatch):
    stream = FakeTTY()
    monkeypatch.setattr(sys, "stdout", stream)  # the console, as setup_logging wires it
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        bar = ProgressBar(10, "epoch 0", min_interval=0.0)
        assert bar.enabled and isinstance(bar.bar, tqdm)
        assert handler not in root.handlers  # console records go through tqdm.write meanwhile
        for i in range(1, 11):
            bar.update(i, loss=torch.tensor(2.0 / i, requires_grad=True) * 1)
            if i == 5:
                logging.getLogger("test").info("a log record")
        bar.close()
        assert handler in root.handlers  # console handler restored
        bar.close()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = stream.getvalue()
    assert re.search(r"epoch 0:  50%\|#+ +\| 5/10 \[.*step/s, loss 0\.4\]", text), text
    assert "10/10" in text and "loss 0.2]" in text
    # tqdm clears the bar, the record gets a line of its own, then the bar is redrawn
    assert re.search(r"\r +\ra log record\n\repoch 0:  50%", text), text
    assert text.endswith("\n")


def test_progress_bar_on_an_unsized_terminal_still_draws(monkeypatch):
    """A pty that reports 0x0 (``script``, some CI runners) made tqdm hide the bar entirely."""

    class UnsizedTTY(FakeTTY):
        def fileno(self):
            return 1

    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    stream = UnsizedTTY()
    bar = ProgressBar(4, "epoch 2", stream=stream, min_interval=0.0)
    for i in range(1, 5):
        bar.update(i, loss=0.5)
    bar.close()
    assert "epoch 2: 100%" in stream.getvalue() and "4/4" in stream.getvalue()


def test_progress_bar_elsewhere_only_logs_a_summary(caplog):
    stream = io.StringIO()  # not a terminal
    bar = ProgressBar(8, "epoch 3", start=2, stream=stream)
    assert not bar.enabled
    with caplog.at_level(logging.INFO, logger="common.progress"):
        for i in range(3, 9):
            bar.update(i, loss=1.0)
        bar.close()
        bar.close()
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "common.progress"]
    assert len(lines) == 1 and lines[0].startswith("epoch 3: 8/8 steps in")


@pytest.mark.parametrize("done", [0, 4])
def test_progress_text_before_and_during(done):
    bar = ProgressBar(4, "e", stream=io.StringIO(), enabled=False)
    bar.update(done, loss=0.5)
    assert f"{done}/4" in bar.text() and "loss 0.5" in bar.text()
