"""Backbones by name (timm-style): ``build_backbone("resnet50")`` -> (module, feature dim).

``timm:<name>`` builds any model of the optional ``timm`` package (``pip install timm`` or the
``timm`` extra) as a pooled-feature extractor (``num_classes=0``). Its weights come only from a
local file (``model.timm_weights``, or ``model.init`` with one of our checkpoints): the factory
always passes ``pretrained=False``, so nothing is ever downloaded.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from common.errors import UserError

log = logging.getLogger(__name__)
TIMM_PREFIX = "timm:"
_REMOTE = r"^(hf[-_]hub:|https?://|local-dir:)"  # weights from elsewhere than a local file
_HUB = re.compile(_REMOTE + "|/")  # in a model name: a hub id or a URL


def import_timm():
    try:
        import timm
    except ImportError:
        raise UserError(
            "model.backbone=timm:... needs the timm package: pip install timm "
            "(or pip install 'suave-daino[timm]')"
        ) from None
    return timm


def _timm_name(backbone: str) -> str:
    name = backbone[len(TIMM_PREFIX) :]
    if not name:
        raise UserError("model.backbone=timm: needs a model name, e.g. timm:resnet10t")
    if _HUB.search(name):
        raise UserError(
            f"model.backbone={backbone} asks for hub weights; nothing is downloaded: name a timm "
            "architecture and pass model.timm_weights=FILE"
        )
    return name


def build_timm(name: str, drop_path: float = 0.0) -> tuple[nn.Module, int]:
    """Pooled features of any timm model; ViT-like models take any crop size (multi-crop)."""
    timm = import_timm()
    if not timm.is_model(name):
        raise UserError(f"timm has no model '{name}' (see timm.list_models())")
    kwargs = {"pretrained": False, "num_classes": 0}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:  # global and local crops of other sizes than the model's default
        model = timm.create_model(name, img_size=224, dynamic_img_size=True, **kwargs)
    except TypeError:  # a model without those options (CNNs take any size anyway)
        try:
            model = timm.create_model(name, **kwargs)
        except TypeError as err:
            raise UserError(f"timm:{name}: {err} (model.drop_path=0 for this model)") from None
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    return model, int(dim)


def load_timm_weights(model: nn.Module, path: str | Path, name: str) -> None:
    """Weights of a timm model from a local ``.safetensors`` or ``.pth`` state dict (timm's own
    checkpoints with ``state_dict`` / ``model`` inside too); the classifier is dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.timm_weights: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file as load_safetensors

            state = load_safetensors(str(path))
        else:  # tensors only: never unpickle objects
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"model.timm_weights {path} cannot be read: {first}") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"model.timm_weights {path} is not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or "head"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in state.items() if k in own or not k.startswith(heads)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"model.timm_weights {path} does not fit timm:{name} (missing: "
            f"{', '.join(missing[:3]) or '-'}; unexpected: {', '.join(unexpected[:3]) or '-'})"
        )
    log.info("timm:%s weights loaded from %s (%d tensors)", name, path, len(state))


def _vit(name: str, drop_path: float):
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


def build_backbone(
    name: str, drop_path: float = 0.0, weights: str | None = None
) -> tuple[nn.Module, int]:
    """``weights``: a local state dict for a ``timm:`` backbone (``model.timm_weights``)."""
    from common.models.resnet import MiniResNet, WideResNet, torchvision_resnet

    if name.startswith(TIMM_PREFIX):
        timm_name = _timm_name(name)
        model, dim = build_timm(timm_name, drop_path)
        if weights:
            load_timm_weights(model, weights, timm_name)
        return model, dim
    if weights:
        raise UserError("model.timm_weights is for model.backbone=timm:<name> backbones")
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
        model = _vit(name, drop_path)
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
    # local weights file (.safetensors / .pth state dict) of a timm:<name> backbone; never a hub
    timm_weights: str | None = None

    def validate(self) -> None:
        if self.backbone.startswith(TIMM_PREFIX):
            _timm_name(self.backbone)
            import_timm()  # the missing package is said before any data is read
        elif self.backbone not in BACKBONES:
            raise UserError(
                f"unknown backbone '{self.backbone}' (choose from {', '.join(BACKBONES)}, "
                "or timm:<name>)"
            )
        if self.timm_weights:
            if not self.backbone.startswith(TIMM_PREFIX):
                raise UserError("model.timm_weights is for model.backbone=timm:<name> backbones")
            if re.match(_REMOTE, self.timm_weights):
                raise UserError(
                    f"model.timm_weights={self.timm_weights} is not a local file; nothing is "
                    "downloaded"
                )
        if not 0.0 <= self.drop_path < 1.0:
            raise UserError("model.drop_path must be in [0, 1)")
