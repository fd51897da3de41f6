"""Per-step host syncs (issue 20): on a GPU, reading a device tensor back to Python (``.item()``,
``float()``, ``bool()``, ``.tolist()``, ``.cpu()``) stalls the host until the device has caught
up, so the next kernels start late. Outside logging and checkpoint steps the engine and the
methods read nothing back. Proven on CPU by counting those calls during a real short run."""

from __future__ import annotations

import traceback
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import main_daino
import main_suave
from common.engine import Trainer
from tests.reliability_utils import DAINO, SUAVE

pytestmark = pytest.mark.usefixtures("one_thread")

READ_BACKS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
ROOT = Path(__file__).resolve().parents[1]


def count_read_backs(monkeypatch, run) -> dict[int, list[str]]:
    """Call sites (file:function) of every read-back, by the step whose work was in progress."""
    calls: dict[int, list[str]] = defaultdict(list)
    state = {"step": None}
    original_step = Trainer.train_step

    def train_step(self, batch, ctx):
        state["step"] = ctx.step
        return original_step(self, batch, ctx)

    def wrap(name):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            if state["step"] is not None:
                frame = next(f for f in reversed(traceback.extract_stack()[:-1])
                             if "/torch/" not in f.filename)  # fmt: skip
                where = f"{Path(frame.filename).relative_to(ROOT)}:{frame.name}"
                calls[state["step"]].append(f"{where} {name}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    for name in READ_BACKS:
        wrap(name)
    run()
    monkeypatch.undo()
    return calls


HOST_ONLY = {
    # the per-step seed is drawn from the step's CPU generator: a host tensor on every device
    "common/engine.py:train_step __int__",
}
DATA = ("common/data/", "torchvision/transforms", "torch/utils/data")  # loader: host tensors


def run_method(main, base, tiny_data, tmp_path, monkeypatch) -> dict[int, list[str]]:
    args = [*base, f"data.root={tiny_data}", "--output_dir", str(tmp_path), "--name", "run",
            "train.epochs=2", "log.print_every=4", "train.checkpoint_every_steps=0"]  # fmt: skip
    return count_read_backs(monkeypatch, lambda: main.main(args))


@pytest.mark.parametrize("method", ["suave", "daino"])
def test_no_read_back_outside_logging_and_checkpoint_steps(
    method, tiny_data, tmp_path, monkeypatch
):
    main, base = {"suave": (main_suave, SUAVE), "daino": (main_daino, DAINO)}[method]
    calls = run_method(main, base, tiny_data, tmp_path, monkeypatch)
    assert sorted(calls) == list(range(8))  # 2 epochs of 4 steps
    for step, sites in calls.items():
        device_sites = {s for s in sites if not any(d in s for d in DATA)}
        if (step + 1) % 4:  # not a logging / epoch-end step: nothing read back
            assert device_sites <= HOST_ONLY, (step, sorted(device_sites - HOST_ONLY))
        else:  # the counter does see the reads where they belong
            assert "common/engine.py:raise_first_non_finite __bool__" in device_sites, step
            assert any("_log_step" in s for s in device_sites), step
