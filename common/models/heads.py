"""SwAV-style projector and the prototype layer whose rows are the class prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def build_projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
    """Linear-BN-ReLU-Linear (SwAV's ``projection_head`` indices 0,1,3); hidden_dim=0: Linear."""
    if out_dim == 0:
        return nn.Identity()
    if hidden_dim == 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class Prototypes(nn.Module):
    """K unit-norm prototypes; scores are cosines with L2-normalised embeddings.

    Rows are re-normalised after every optimiser step (``normalize_``) so that they are unit-norm
    whenever the model is used or saved; the forward pass assumes it.
    """

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.normal_(self.weight, std=dim**-0.5)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.t()

    @property
    def num_prototypes(self) -> int:
        return self.weight.shape[0]
