"""The phase profile of ``benchmarks/bench_step.py --profile`` (CPU): every phase found, the
backward work given to the network part that recorded it."""

from __future__ import annotations

import sys

import torch

from tests.reliability_utils import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_step  # noqa: E402


def test_phase_breakdown_names_the_daino_step_parts(tmp_path, one_thread):
    args = bench_step.parse_args(["--methods", "daino", "--backbone", "resnet_mini",
                                  "--global_size", "16", "--local_size", "8", "--num_local", "2",
                                  "--batch", "4+2", "--num_classes", "3"])  # fmt: skip
    torch.manual_seed(0)
    bench = bench_step.MethodBench("daino", args, torch.device("cpu"), str(tmp_path))
    bench.train_step()
    phases = bench_step.phase_breakdown(bench, 2)
    for name in ("backbone", "backbone (backward)", "head", "head (backward)", "teacher backbone",
                 "teacher head", "optimiser", "after step (EMA / prototype norm)"):  # fmt: skip
        assert phases.get(name, 0) > 0, (name, phases)
    assert "teacher head (backward)" not in phases  # the teacher gets no gradients
    # the head's gradient products (2048 wide) are the head's, not the losses' or the glue's
    assert phases["head (backward)"] > 5 * phases.get("losses, targets, metrics (backward)", 0)
