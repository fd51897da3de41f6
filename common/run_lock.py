"""One process trains into a run directory at a time: an OS lock held for the run's lifetime.

``fcntl.flock`` on ``<run_dir>/.lock`` is released by the kernel when the holder exits, however it
exits (SIGKILL, node crash with a local disk, Slurm requeue), so a dead run's lock never blocks a
``--resume``. The file also records who holds it, for the one-line refusal. File systems without
locks (some network mounts) give a warning and no lock, never a refusal.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

from common.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunLock:
    """``acquire()`` creates the run directory if needed and locks it; ``release(failed)`` unlocks
    and, after a failed start, removes the directories this lock created (if still empty)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.created: list[Path] = []
        self.previous: bytes | None = None  # the lock file's text before this start

    def acquire(self) -> None:
        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.created = missing  # deepest first: the order to remove them in
            existed = self.path.is_file()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"cannot write run directory {self.run_dir}: {err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(
                    f"run directory {self.run_dir} is in use by another run ({holder}): wait for "
                    "it to finish or choose a new --name"
                ) from None
            log.warning("cannot lock %s (%s): concurrent runs of this name are not detected",
                        self.path, err.strerror or err)  # fmt: skip
            return
        if not _same_file(fd, self.path):  # the holder removed it between our open and lock
            os.close(fd)
            return self.acquire()
        self.previous = os.pread(fd, 4096, 0) if existed else None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        self.fd = fd

    def release(self, failed: bool = False) -> None:
        if self.fd is None:
            return
        if failed:  # a refused start leaves the directory as it found it
            if self.previous is None:
                self.path.unlink(missing_ok=True)
            else:
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, self.previous, 0)
            for folder in self.created:
                try:
                    folder.rmdir()
                except OSError:
                    break  # something else lives there now: leave it
        os.close(self.fd)  # closing the descriptor releases the lock
        self.fd = None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False
