"""Small helpers shared by the benchmark scripts: paths, timing on a shared machine, environment.

Machines running these scripts are often shared, so compared variants are timed *interleaved*
(A, B, A, B, ... in alternating order) and summarised by medians: a burst of load from another
process then hits every variant alike instead of skewing one of them.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import common  # noqa: E402,F401  (torchvision CPU shim, before any torchvision import)

SHARED_DATA = ROOT.parent / "shared" / "data"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# "wall": elapsed time. "cpu": CPU seconds of this process (all its threads), which a busy
# shared machine inflates far less than wall time; meaningless on a GPU (wall is used there).
CLOCK = {"name": "wall"}


def set_clock(name: str) -> None:
    if name not in ("wall", "cpu"):
        raise ValueError(f"unknown clock {name}")
    CLOCK["name"] = name


def add_clock_argument(parser) -> None:
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU seconds (steadier on a busy shared CPU)",
    )


def clock(device: torch.device) -> Callable[[], float]:
    if CLOCK["name"] == "cpu" and device.type != "cuda":
        return time.process_time
    return time.perf_counter


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call (see ``CLOCK``), with the device drained before and after."""
    now = clock(device)
    synchronize(device)
    tic = now()
    fn()
    synchronize(device)
    return now() - tic


def interleaved(
    variants: dict[str, Callable[[], object]], reps: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Time every variant ``reps`` times, alternating the order each round; returns all times."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            times[name].append(timed(variants[name], device))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """Median with the inter-quartile range, as text."""
    if len(values) < 4:
        return f"{median(values):.4f}"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{median(values):.4f} [IQR {q1:.4f}-{q3:.4f}]"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(device: torch.device) -> str:
    """One line naming the hardware and software the figures come from."""
    where = f"CPU {cpu_model()} x{os.cpu_count()}"
    if device.type == "cuda":
        where = f"GPU {torch.cuda.get_device_name(device)}; {where}"
    return (
        f"{where}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"python {platform.python_version()}"
    )


def parse_batch(text: str) -> tuple[int, int]:
    """``"16+8"`` -> (16 unlabeled, 8 labeled)."""
    unlabeled, _, labeled = text.partition("+")
    return int(unlabeled), int(labeled or 0)
