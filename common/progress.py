"""Per-epoch progress bar for interactive terminals; nothing extra in logs and batch jobs.

On a terminal (``stream.isatty()``) one line is redrawn in place at most every ``min_interval``
seconds: steps done, rate, time left and the latest values passed to ``update``. Log records that
the console handler prints meanwhile first erase the bar and then let it redraw below them, so
the two never share a line. Elsewhere (Slurm logs, pipes, files) the bar draws nothing and only
``close`` writes one plain summary line through ``logging``; the trainer's periodic step lines
carry the rest. Values are converted with ``float`` only when drawn, so passing a GPU tensor
costs one synchronisation per redraw, not one per step.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time

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


class _BarAwareStream:
    """Wraps the console stream: erase the bar before a log record, redraw it after."""

    def __init__(self, stream, bar: ProgressBar):
        self.stream, self.bar = stream, bar

    def write(self, text: str) -> int:
        if self.bar.active:
            self.bar.erase()
        written = self.stream.write(text)
        if self.bar.active and text.endswith("\n"):
            self.bar.draw(force=True)
        return written

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


class ProgressBar:
    """``update(done, **values)`` per step, ``close()`` at the end of the epoch."""

    def __init__(
        self,
        total: int,
        desc: str = "",
        start: int = 0,
        stream=None,
        enabled: bool | None = None,
        min_interval: float = 0.2,
        width: int = 25,
    ):
        self.stream = stream if stream is not None else sys.stdout
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled, self.total, self.desc = enabled, max(total, 1), desc
        self.start = self.done = start
        self.width, self.min_interval = width, min_interval
        self.values: dict = {}
        self.t0 = self.last_draw = time.perf_counter()
        self.active = False
        self._wrapped: list[tuple[logging.StreamHandler, object]] = []
        if self.enabled:
            self.active = True
            self._wrap_console_handlers()
            self.draw(force=True)

    def _wrap_console_handlers(self) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                self._wrapped.append(
                    (handler, handler.setStream(_BarAwareStream(self.stream, self)))
                )

    def text(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        filled = int(self.width * min(self.done, self.total) / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        parts = [f"{self.desc} [{bar}] {self.done}/{self.total}",
                 f"{_duration(elapsed)}<{_duration(left)} {rate:.2f} it/s"]  # fmt: skip
        parts += [f"{k} {_scalar(v):.4g}" for k, v in self.values.items()]
        return " | ".join(parts).strip()

    def erase(self) -> None:
        self.stream.write("\r\x1b[K")

    def draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.active or (not force and now - self.last_draw < self.min_interval):
            return
        self.last_draw = now
        columns = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r" + self.text()[: max(columns - 1, 10)] + "\x1b[K")
        self.stream.flush()

    def update(self, done: int, **values) -> None:
        self.done = done
        if self.enabled:
            self.values = values
            self.draw(force=done >= self.total)

    def close(self) -> None:
        """Finish the line (terminal) or log one summary line (anywhere else); idempotent."""
        if self.active:
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
            self.active = False
            for handler, original in self._wrapped:
                handler.setStream(original)
            self._wrapped = []
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
