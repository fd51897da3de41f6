"""Per-iteration schedules as plain arrays (DINO style): index with the global step."""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: float = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Linear warm-up from ``start_warmup_value`` to ``base_value``, then cosine to ``final_value``.

    The last entry equals ``final_value`` exactly; the array has ``epochs * iters_per_epoch`` items.
    """
    total = int(epochs * iters_per_epoch)
    warmup = min(int(round(warmup_epochs * iters_per_epoch)), total)
    warm = np.linspace(start_warmup_value, base_value, warmup, endpoint=False)
    rest = total - warmup
    if rest == 1:
        cos = np.array([final_value])
    else:
        progress = np.arange(rest) / max(rest - 1, 1)
        cos = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * progress))
    out = np.concatenate([warm, cos]).astype(np.float64)
    assert len(out) == total
    return out


def linear_then_constant(
    start: float, end: float, ramp_epochs: float, epochs: int, iters_per_epoch: int
) -> np.ndarray:
    """Linear ramp ``start`` -> ``end`` over ``ramp_epochs``, then constant (DINO teacher temp)."""
    total = int(epochs * iters_per_epoch)
    ramp = min(int(round(ramp_epochs * iters_per_epoch)), total)
    values = np.full(total, float(end))
    values[:ramp] = np.linspace(start, end, ramp, endpoint=False) if ramp else values[:ramp]
    return values


def sigmoid_rampup(step: int, rampup_steps: float) -> float:
    """Weight of the unlabeled loss at ``step``: exp(-5 (1 - t)^2), t = step / rampup_steps
    clipped to 1 (Laine & Aila's ramp-up, as Mean Teacher's); 1 from the start without a ramp.

    The targets of the first steps come from a random network; a ramp lets the labeled images
    line the prototypes / head up with the classes before those targets count in full.
    """
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step / rampup_steps, 0.0), 1.0)
    return float(np.exp(-5.0 * (1.0 - t) ** 2))
