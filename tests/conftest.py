"""Shared test fixtures. Importing ``common`` first installs the torchvision shim."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import common  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"local data missing: {path}")
    return path


@pytest.fixture(scope="session")
def cifar100_mini() -> Path:
    return require(SHARED_DATA / "cifar100-mini")


@pytest.fixture(scope="session")
def cifar10_mini() -> Path:
    return require(SHARED_DATA / "cifar10-mini")


@pytest.fixture(scope="session")
def imagenet_subsets() -> Path:
    return require(SHARED_DATA / "imagenet-subsets")
