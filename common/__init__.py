"""Shared building blocks of Suave and Daino: data, models, distributed, optimisation, I/O."""

from common.compat import ensure_torchvision

ensure_torchvision()
