"""Helpers for tests that run the command-line entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A tiny, fast Suave recipe on 32 px images (cifar10-mini / cifar100-mini).
TINY_SUAVE = [
    "data.normalization=cifar", "data.global_size=32", "data.local_size=16", "data.num_local=2",
    "data.global_scale=[0.3,1.0]", "data.local_scale=[0.1,0.3]", "data.labeled_size=32",
    "data.labeled_scale=[0.3,1.0]", "data.global_blur=[0.0,0.0]", "data.local_blur=0.0",
    "data.eval_size=32", "data.eval_resize=0", "data.num_workers=0",
    "model.backbone=resnet_mini", "suave.projector_hidden_dim=128", "suave.embed_dim=64",
    "suave.queue_length=0", "train.eval_batch_size=250", "log.print_every=5",
]  # fmt: skip


def run_entry(script: str, args: list[str], timeout: float = 300, env_extra=None):
    """Run ``python <script> args`` from the repo root; returns CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def assert_one_line_error(proc, pattern: str) -> str:
    """Exit code 2, exactly one ``error:`` line on stderr matching ``pattern``, no traceback."""
    import re

    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


def assert_cli_error(capsys, main, argv: list[str], pattern: str) -> str:
    """In-process ``main(argv)`` (a ``run_cli`` entry point) exits 2 with one ``error:`` line."""
    import re

    import pytest

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


def random_multicrop_batch(b_u=8, b_l=4, num_classes=10, seed=0) -> dict:
    """A loader-shaped batch: 2 globals (32 px) + 2 locals (16 px) unlabeled, labeled 32 px."""
    import torch

    g = torch.Generator().manual_seed(seed)
    crops = [torch.randn(b_u, 3, 32, 32, generator=g) for _ in range(2)]
    crops += [torch.randn(b_u, 3, 16, 16, generator=g) for _ in range(2)]
    return {
        "unlabeled": crops,
        "labeled": torch.randn(b_l, 3, 32, 32, generator=g),
        "labels": torch.randint(0, num_classes, (b_l,), generator=g),
    }


def randomize(module):
    """Give every float tensor (BN statistics too) distinct random values, so copies show."""
    import torch

    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.normal_()
    return module
