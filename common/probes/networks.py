"""Networks to evaluate, from our run checkpoints or the official SwAV / DINO releases.

Our checkpoints are rebuilt from the config saved inside them by the method that wrote them
(``Method.eval_network``, the class handed in from the registry); only the evaluated network is
built, never the training state (queue, optimiser), so a checkpoint from any number of
processes loads. Its prototypes are a classifier only when the run
had labels (then prototype k is class k); zero-label (SwAV / DINO) prototypes are clusters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from common.checkpoint import load_file, load_state_strict, select_weights
from common.config import from_dict
from common.errors import UserError
from common.method import EvalNetwork, Method
from common.models.factory import build_backbone
from common.models.online_heads import PREFIX, OnlineHeads

log = logging.getLogger(__name__)

FORMATS = ("auto", "ours", "swav", "dino")
_VIT_BY_WIDTH = {192: "vit_tiny", 384: "vit_small", 768: "vit_base"}


@dataclass
class EvalModel:
    """A network in eval mode with a feature extractor and, for ours, the prototype classifier."""

    module: nn.Module
    features: Callable[[torch.Tensor], torch.Tensor]
    classify: Callable[[torch.Tensor], torch.Tensor] | None
    kind: str  # suave | daino | supervised | swav | dino
    arch: str
    num_prototypes: int | None = None
    run_config: dict | None = None  # ours: the saved training config (data defaults)
    notes: list[str] = field(default_factory=list)
    # ours, trained with online heads: images -> {head name: logits}
    heads: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None
    classes: list[str] | None = None  # ours: class names in prototype order (None: older run)
    health: dict | None = None  # ours: max |w| and its reference when it was saved


def _has_eval_network(cls: type[Method]) -> bool:
    return cls.eval_network.__func__ is not Method.eval_network.__func__


def _our_model(
    path: str, ckpt: dict, methods: Mapping[str, type[Method]], which: str = "teacher"
) -> EvalModel:
    """``which``: ``student`` evaluates the student of a method that has one (Daino)."""
    meta, config = ckpt.get("meta", {}), ckpt.get("config")
    if not isinstance(config, Mapping):
        raise UserError(f"checkpoint {path} has no saved config: cannot rebuild its network")
    method = meta.get("method")
    evaluable = {n: c for n, c in methods.items() if _has_eval_network(c)}
    cls = evaluable.get(method)
    if cls is None:
        raise UserError(f"checkpoint {path} is from method {method!r}, not "
                        f"{' or '.join(evaluable)}")  # fmt: skip
    if which == "student" and not cls.has_student:
        raise UserError(f"--which student: checkpoint {path} is from {method!r}, which has one "
                        "network (Daino checkpoints and DINO files have a student)")  # fmt: skip
    cfg = from_dict(cls.config_cls, dict(config))
    head_dims = _online_head_dims(ckpt)
    student = {"student": True} if which == "student" else {}
    net = cls.eval_network(cfg, ckpt, path, with_taps=bool(head_dims), **student)
    model = EvalModel(net.module, net.features, None, method, cfg.model.backbone,
                      net.num_prototypes, dict(config))  # fmt: skip
    model.classes = meta.get("classes")
    model.health = ckpt.get("health")
    supervised = meta.get("supervised", cfg.has_labels)  # older checkpoints: their config
    if supervised and net.num_prototypes == meta.get("num_classes"):
        model.classify = net.classify
    else:
        model.notes.append(f"{net.num_prototypes} prototypes are clusters (trained without labels)")
    if head_dims:
        _attach_online_heads(model, path, ckpt, head_dims, net)
    return model


def _online_head_dims(ckpt: dict) -> dict[str, int]:
    """{depth name: feature width} of the run's online linear heads (empty: it had none)."""
    return {k[len(PREFIX) + 6 : -7]: int(v.shape[1]) for k, v in ckpt["model"].items()
            if k.startswith(PREFIX + "heads.") and k.endswith(".weight")}  # fmt: skip


def _attach_online_heads(
    model: EvalModel, path: str, ckpt: dict, dims: dict[str, int], net: EvalNetwork
) -> None:
    """The run's online linear heads, on the network they were trained on (``net.tapped``);
    the evaluated module becomes a container of all of them."""
    num_classes = int(ckpt["model"][f"{PREFIX}heads.{next(iter(dims))}.weight"].shape[0])
    heads = OnlineHeads(dims, num_classes)
    load_state_strict(heads, select_weights(ckpt, {PREFIX: ""}), path, "online heads")
    taps = net.taps
    model.heads = lambda x: heads(taps(x))
    model.module = nn.ModuleDict({"network": model.module, "tapped": net.tapped, "heads": heads})


def _state_of(obj) -> dict:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        return {}
    out = {}
    for key, value in obj.items():
        key = str(key)
        for prefix in ("module.", "backbone."):
            key = key[len(prefix) :] if key.startswith(prefix) else key
        out[key] = value
    return out


def sniff_foreign(obj, path: str) -> tuple[str, str]:
    """(format, default arch) of an official file, from its keys and shapes."""
    if isinstance(obj, Mapping) and ("teacher" in obj or "student" in obj):
        inner = obj.get("teacher", obj.get("student"))
        state = _state_of(inner)
        fmt = "dino"
    else:
        state = _state_of(obj)
        fmt = None
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    patch = tensors.get("patch_embed.proj.weight")
    if patch is not None:
        width = int(patch.shape[0])
        if width not in _VIT_BY_WIDTH:
            raise UserError(f"checkpoint {path}: ViT width {width} is not a known architecture")
        return "dino", _VIT_BY_WIDTH[width]
    if "layer1.0.conv1.weight" in tensors:
        if "layer4.0.conv3.weight" in tensors:
            arch = "resnet50"
        else:
            arch = "resnet34" if "layer3.5.conv1.weight" in tensors else "resnet18"
        return fmt or "swav", arch
    raise UserError(
        f"cannot tell what {path} holds (not ours, no ResNet or ViT weights): pass --format/--arch"
    )


def load_eval_model(
    path: str,
    fmt: str = "auto",
    arch: str | None = None,
    which: str = "teacher",
    *,
    methods: Mapping[str, type[Method]],
) -> EvalModel:
    """Build the network stored in ``path`` (our run checkpoint or an official release); one of
    ours is rebuilt by the class in ``methods`` (the registry) named in its meta."""
    if fmt not in FORMATS:
        raise UserError(f"unknown checkpoint format '{fmt}' (choose from {', '.join(FORMATS)})")
    if not Path(path).is_file():
        raise UserError(f"checkpoint not found: {path}")
    if fmt in ("auto", "ours"):
        try:
            ckpt = load_file(path)
        except UserError:  # an official file (or garbage, which the official reader reports)
            if fmt == "ours":
                raise
        else:
            return _our_model(path, ckpt, methods, which)
    from common.models import pretrained

    guessed_fmt, guessed_arch = sniff_foreign(pretrained.read_checkpoint(path), path)
    fmt = guessed_fmt if fmt == "auto" else fmt
    if fmt == "swav" and which == "student":  # refused before any network is built
        raise UserError(f"--which student: {path} is a SwAV checkpoint, which has one network")
    arch = arch or guessed_arch
    backbone, _ = build_backbone(arch)
    if fmt == "swav":
        report = pretrained.load_swav_backbone(backbone, path)
    else:
        report = pretrained.load_dino_backbone(backbone, path, which)
    log.info("loaded %s backbone %s: %s", fmt, arch, report)
    return EvalModel(backbone, backbone, None, fmt, arch, notes=["no class prototypes"])
