"""The methods of this project, by name: the one module that knows them all.

``common/`` never imports a method (``tests/test_layering.py`` holds it to that). What needs
every method looks it up here and hands it down: ``evaluate.py`` (which rebuilds a checkpoint's
network with its ``Method.eval_network``), ``job_launcher.py`` (a recipe's ``config_cls``), the
demo, the CIFAR protocol and the benchmarks (``config_cls`` and ``build``).
"""

from __future__ import annotations

import sys

from common.method import Method
from daino.method import Daino
from suave.method import Suave
from supervised.method import Supervised

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Suave, Daino, Supervised)}
# the methods with an entry point of their own (main_<name>.py): what job_launcher.py starts
LAUNCHABLE: dict[str, type[Method]] = {name: METHODS[name] for name in ("suave", "daino")}


def evaluate(argv: list[str] | None = None) -> dict:
    """``python evaluate.py ...``: ``common/probes/cli.py`` with every method known."""
    from common.probes import cli

    return cli.main(argv, METHODS)


def launch(argv: list[str] | None = None) -> int:
    """``python job_launcher.py ...``: ``common/launcher.py`` with the launchable methods."""
    from common import launcher

    return launcher.cli(argv, LAUNCHABLE)


def evaluate_console() -> None:
    """``suave-daino-eval``: same as ``python evaluate.py``."""
    evaluate(sys.argv[1:])


def launch_console() -> None:
    """``suave-daino-launch``: same as ``python job_launcher.py``."""
    sys.exit(launch(sys.argv[1:]))
