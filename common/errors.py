"""User-facing errors: bad input is reported as one line, never as a deep traceback."""

from __future__ import annotations

import functools
import logging
import os
import sys


class UserError(Exception):
    """An error caused by user input (data, config, checkpoint); reported as one line."""


class ProcessGroupLostError(UserError):
    """A peer died or stalled: the process group is broken and cannot be torn down cleanly.

    ``run_cli`` ends such a process with ``os._exit`` after its one line: the interpreter's
    normal exit destroys c10d/gloo objects whose threads still wait on the lost peer, which was
    seen to abort the process (SIGABRT, "terminate called without an active exception")
    instead of exiting with code 2.
    """


class NonFiniteLossError(UserError):
    """The loss became NaN/inf; training stops and the last good checkpoint is kept."""


def one_line(err: BaseException) -> str:
    """The user-facing message of ``err`` on one line.

    Errors raised inside DataLoader workers come back with the worker's traceback folded into
    the message; only its last line (the original message) is meant for the user.
    """
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
    return " ".join(text.split())


def run_cli(main):
    """Decorate a CLI ``main``: UserError -> ``error: <message>`` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
            if isinstance(err, ProcessGroupLostError):
                _exit_now(2)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper


def _exit_now(code: int) -> None:
    """Flush what Python would flush at exit, then leave without running C++ destructors."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
