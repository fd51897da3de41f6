"""DINO projection head: MLP -> L2 norm -> weight-normalised prototypes (no bias).

In Daino the K rows of the last layer are the class prototypes, so K = number of classes.
The weight norm uses the parametrization API; the official checkpoints store the old
``weight_g`` / ``weight_v`` names, which ``dino_head_key_map`` (and a load hook) translate.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from common.models.vit import trunc_normal_

__all__ = ["DINOHead", "cancel_last_layer_gradients", "dino_head_key_map"]

# Official (torch.nn.utils.weight_norm) name -> parametrization name, relative to ``last_layer.``.
_OFFICIAL_TO_PARAM = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}


def dino_head_key_map(
    state_dict: Mapping[str, torch.Tensor], to_official: bool = False
) -> dict[str, torch.Tensor]:
    """Rename last-layer weight-norm keys between the official and the parametrization layout.

    Works on any prefix (``head.last_layer.weight_g``, ``module.head.last_layer.weight_g``...);
    other keys pass through unchanged.
    """
    pairs = _OFFICIAL_TO_PARAM.items()
    if to_official:
        pairs = [(new, old) for old, new in pairs]
    out = {}
    for key, value in state_dict.items():
        for src, dst in pairs:
            tail = "last_layer." + src
            if key == tail or key.endswith("." + tail):
                key = key[: -len(src)] + dst
                break
        out[key] = value
    return out


class DINOHead(nn.Module):
    """MLP (Linear-[BN]-GELU x nlayers-1, Linear to bottleneck) -> L2 norm -> K cosine-like logits.

    With ``norm_last_layer`` the weight-norm gain is frozen at 1, so logits are true cosines
    between the normalised embedding and the prototypes.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        self.out_dim = out_dim
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            dim = in_dim
            for _ in range(nlayers - 1):
                layers.append(nn.Linear(dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
                dim = hidden_dim
            layers.append(nn.Linear(dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), dim=0)
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)  # start from unit-norm prototypes in either mode
        gain.requires_grad_(not norm_last_layer)
        self.register_load_state_dict_pre_hook(self._accept_official_keys)

    @staticmethod
    def _accept_official_keys(module, state_dict, prefix, *args) -> None:
        """Let ``load_state_dict`` take ``last_layer.weight_g/_v`` from official checkpoints."""
        for old, new in _OFFICIAL_TO_PARAM.items():
            key = f"{prefix}last_layer.{old}"
            if key in state_dict:
                state_dict[f"{prefix}last_layer.{new}"] = state_dict.pop(key)

    def forward(self, x: torch.Tensor, with_taps: bool = False):
        """Logits; ``with_taps`` adds {"hidden": last hidden layer (when the MLP has one),
        "bottleneck": the MLP's output before the L2 norm} for the online heads."""
        if not with_taps:
            return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))
        taps = {}
        if isinstance(self.mlp, nn.Sequential):  # the same layers, in two parts
            taps["hidden"] = self.mlp[:-1](x)
            taps["bottleneck"] = self.mlp[-1](taps["hidden"])
        else:
            taps["bottleneck"] = self.mlp(x)
        return self.last_layer(F.normalize(taps["bottleneck"], dim=-1, p=2)), taps


def cancel_last_layer_gradients(head: nn.Module, epoch: int, freeze_last_layer_epochs: int) -> None:
    """Drop last-layer gradients during the first epochs (DINO's trick against early collapse).

    ``head`` may be the DINOHead itself or any module containing it (e.g. a DDP-wrapped model).
    """
    if epoch >= freeze_last_layer_epochs:
        return
    for name, param in head.named_parameters():
        if "last_layer" in name:
            param.grad = None
