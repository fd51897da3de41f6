"""The package installs (no network: --no-deps --no-build-isolation) and its console scripts
answer ``--help`` from a directory outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "suave-train": "--config",
    "daino-train": "--config",
    "suave-daino-eval": "--checkpoint",
    "suave-daino-launch": "--script_file",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install --no-deps .`` of a copy of the sources into a temporary target."""
    pytest.importorskip("setuptools")
    work = tmp_path_factory.mktemp("pkg")
    src = work / "src"  # a copy: the build writes build/ and *.egg-info next to pyproject.toml
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "wandb", "build", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".ruff_cache")  # fmt: skip
    shutil.copytree(ROOT, src, ignore=ignore, symlinks=True)
    target = work / "target"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
           "--no-index", "--target", str(target), str(src)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def test_package_contents(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    probe = "import common.launcher as m; print(m.__file__)"  # no torch import: quick
    where = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert where.stdout.strip().startswith(str(installed)), where.stdout + where.stderr
    for name in ("common", "suave", "daino", "common/models", "common/data", "common/probes"):
        assert (installed / name / "__init__.py").is_file(), name
    assert (installed / "suave/configs/cpu_demo.yaml").is_file()
    assert (installed / "daino/scripts/cpu_demo.sh").is_file()
    assert not (installed / "tests").exists() and not (installed / "main_suave.py").exists()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_help_from_elsewhere(installed, script, tmp_path):
    exe = installed / "bin" / script
    assert exe.is_file()
    env = {**os.environ, "PYTHONPATH": str(installed)}  # the target only: not the checkout
    proc = subprocess.run([sys.executable, str(exe), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {script}") and SCRIPTS[script] in proc.stdout
