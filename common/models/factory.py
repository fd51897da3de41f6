"""Backbones by name (timm-style): ``build_backbone("resnet50")`` -> (module, feature dim)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from common.errors import UserError


def _vit(name: str, drop_path: float, img_size: int):
    from common.models import vit

    return getattr(vit, name)(drop_path_rate=drop_path)


BACKBONES = {
    "resnet18": "ImageNet ResNet-18 (torchvision)",
    "resnet34": "ImageNet ResNet-34 (torchvision)",
    "resnet50": "ImageNet ResNet-50 (torchvision), the paper's Suave backbone",
    "resnet18_cifar": "ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32 px images",
    "resnet50_cifar": "ResNet-50 with the CIFAR stem",
    "wide_resnet28_2": "WRN-28-2 (32 px)",
    "wide_resnet28_8": "WRN-28-8 (32 px), the CIFAR-100 backbone of FixMatch-style peers",
    "resnet_mini": "narrow 4-stage ResNet for CPU demos and tests",
    "vit_tiny": "ViT-Ti/16",
    "vit_small": "ViT-S/16, the paper's Daino backbone",
    "vit_base": "ViT-B/16",
}


def build_backbone(name: str, drop_path: float = 0.0, img_size: int = 224) -> tuple[nn.Module, int]:
    from common.models.resnet import MiniResNet, WideResNet, torchvision_resnet

    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}' (choose from {', '.join(BACKBONES)})")
    if name in ("resnet18", "resnet34", "resnet50"):
        return torchvision_resnet(int(name[6:]))
    if name in ("resnet18_cifar", "resnet50_cifar"):
        return torchvision_resnet(int(name[6:8]), cifar_stem=True)
    if name.startswith("wide_resnet28_"):
        model = WideResNet(28, int(name.rsplit("_", 1)[1]))
        return model, model.out_dim
    if name == "resnet_mini":
        return MiniResNet(), 256
    if name.startswith("vit_"):
        model = _vit(name, drop_path, img_size)
        return model, model.embed_dim
    raise AssertionError(name)


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    drop_path: float = 0.0
    # initialisation from a checkpoint: official SwAV/DINO, or one of ours (any method)
    init: str | None = None
    init_format: Literal["auto", "swav", "dino", "ours"] = "auto"
    init_projector: bool = False

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise UserError(
                f"unknown backbone '{self.backbone}' (choose from {', '.join(BACKBONES)})"
            )
        if not 0.0 <= self.drop_path < 1.0:
            raise UserError("model.drop_path must be in [0, 1)")
