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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, cifar10_mini) -> Path:
    """3 classes x 12 train / val images of cifar10-mini: runs of a few seconds."""
    from tests.test_bad_input import make_small_folder

    root = tmp_path_factory.mktemp("tiny") / "data"
    make_small_folder(cifar10_mini, root)
    return root


@pytest.fixture
def one_thread():
    """One intra-op thread: deterministic like a OMP_NUM_THREADS=1 subprocess, and much faster
    than two spinning threads when the shared cores are oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
