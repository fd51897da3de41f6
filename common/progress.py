"""Per-epoch progress bar (tqdm) for interactive terminals; nothing extra in logs and batch jobs.

On a terminal (``stream.isatty()``) a tqdm bar shows steps done, rate, time left and the latest
values passed to ``update``. While it is open, console log records go through ``tqdm.write``
(``tqdm.contrib.logging.logging_redirect_tqdm``), so a log line never lands in the middle of the
bar; the log file handler is left alone. Elsewhere (Slurm logs, pipes, files) no bar is drawn and
``close`` writes one plain summary line through ``logging``; the trainer's periodic step lines
carry the rest. Values are converted with ``float`` only when tqdm redraws, so passing a GPU
tensor costs one synchronisation per redraw, not one per step.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return (
        f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
        if hours
        else f"{rest // 60:02d}:{rest % 60:02d}"
    )


def _scalar(value) -> float:
    detach = getattr(value, "detach", None)  # a tensor that may still require grad
    return float(detach() if detach is not None else value)


class _LazyValues:
    """tqdm's postfix object: formats the values (``float`` on tensors) only when drawn."""

    def __init__(self):
        self.values: dict = {}

    def __str__(self) -> str:
        return ", ".join(f"{k} {_scalar(v):.4g}" for k, v in self.values.items())

    def __bool__(self) -> bool:
        return bool(self.values)

    def __radd__(self, prefix: str) -> str:  # tqdm's ``", " + postfix``
        return prefix + str(self)


def _fixed_width(stream) -> int | None:
    """None: tqdm follows the terminal's size. A terminal that reports 0x0 (a pty nobody sized,
    e.g. under ``script`` or some CI runners) would hide the bar (tqdm takes it for a bar below
    the last row): 100 columns and 20 rows then."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return None if columns > 0 else int(os.environ.get("COLUMNS", "0") or 0) or 100


def _console_handler_on(stream) -> bool:
    """``logging_redirect_tqdm`` redirects only handlers writing to sys.stdout / sys.stderr."""
    return stream in (sys.stdout, sys.stderr) and any(
        isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
        for h in logging.getLogger().handlers
    )


class ProgressBar:
    """``update(done, **values)`` per step, ``close()`` at the end of the epoch.

    ``enabled=None`` draws only on a terminal; the trainer passes ``False`` on ranks other than 0.
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        start: int = 0,
        stream=None,
        enabled: bool | None = None,
        min_interval: float = 0.2,
    ):
        self.stream = stream if stream is not None else sys.stdout
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled, self.total, self.desc = enabled, max(total, 1), desc
        self.start = self.done = start
        self.t0 = time.perf_counter()
        self._postfix = _LazyValues()
        self._redirect = contextlib.ExitStack()
        self.bar: tqdm | None = None
        if self.enabled:
            if _console_handler_on(self.stream):
                self._redirect.enter_context(logging_redirect_tqdm())
            width = _fixed_width(self.stream)
            self.bar = tqdm(
                total=self.total, initial=start, desc=desc, file=self.stream, ncols=width,
                nrows=None if width is None else 20, dynamic_ncols=width is None,
                mininterval=min_interval, unit="step", leave=True,
            )  # fmt: skip
            self.bar.postfix = self._postfix  # tqdm formats it with str() at each redraw

    @property
    def active(self) -> bool:
        return self.bar is not None

    def text(self) -> str:
        """What the bar shows (also when it is not drawn): for tests and summaries."""
        elapsed = time.perf_counter() - self.t0
        rate = (self.done - self.start) / elapsed if elapsed > 0 else None
        values = str(self._postfix) or None
        return tqdm.format_meter(self.done, self.total, elapsed, prefix=self.desc, unit="step",
                                 rate=rate, postfix=values)  # fmt: skip

    def update(self, done: int, **values) -> None:
        self._postfix.values = values
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        """Finish the bar (terminal) or log one summary line (anywhere else); idempotent."""
        if self.bar is not None:
            self.bar.refresh()  # the last values, whatever mininterval skipped
            self.bar.close()
            self.bar = None
            self._redirect.close()  # console handlers back as they were
        elif not self.enabled and self.done > self.start:
            elapsed = time.perf_counter() - self.t0
            log.info(
                "%s: %d/%d steps in %s (%.2f it/s)",
                self.desc or "progress",
                self.done,
                self.total,
                _duration(elapsed),
                (self.done - self.start) / max(elapsed, 1e-9),
            )
            self.start = self.done  # a second close logs nothing new
