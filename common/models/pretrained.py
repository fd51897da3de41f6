"""Initialise our models from the official SwAV and DINO releases, safely and strictly.

Files are read with ``weights_only=True`` (only ``argparse.Namespace`` is additionally allowed,
because the official full checkpoints keep their ``args`` in one). Every backbone tensor must be
filled with a tensor of the right shape; anything else is a ``UserError`` naming the file, so a
wrong checkpoint never silently leaves a randomly initialised backbone behind.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from common.errors import UserError
from common.models.dino_head import dino_head_key_map

__all__ = [
    "LoadReport",
    "load_dino_backbone",
    "load_dino_full",
    "load_swav_backbone",
    "read_checkpoint",
]

_CLASSIFIER_PREFIXES = ("fc.", "head.")  # classifiers a backbone-only file may carry
_OPTIONAL_SUFFIX = "num_batches_tracked"  # BN step counters, irrelevant for eval / momentum BN


@dataclass
class LoadReport:
    """What a load did. Keys are prefixed by the component (``backbone.``, ``projector.``...)."""

    path: str
    loaded: list[str] = field(default_factory=list)  # model tensors filled from the file
    skipped: list[str] = field(default_factory=list)  # file tensors deliberately not loaded
    missing: list[str] = field(default_factory=list)  # model tensors left at their init
    notes: list[str] = field(default_factory=list)  # why things were skipped / missing

    def summary(self) -> str:
        """One line for logs."""
        text = (
            f"{self.path}: loaded {len(self.loaded)}, skipped {len(self.skipped)}, "
            f"left at init {len(self.missing)}"
        )
        return text + (f" ({'; '.join(self.notes)})" if self.notes else "")

    __str__ = summary  # logging a report prints the one-liner, not hundreds of keys


# --------------------------------------------------------------------------- reading files


def _one_line(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))  # drop ANSI colour codes torch puts in errors
    return " ".join(text.split())


def read_checkpoint(path: str | os.PathLike) -> object:
    """``torch.load`` restricted to tensors and plain containers (plus argparse.Namespace)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} not found")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} is not a file")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "Unsupported global" not in str(err):
                raise
        # The official files pickle their argparse arguments; allow exactly that class.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means an unusable file
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise UserError(
                f"checkpoint {path} holds a {found.group(1)} object, which is not loaded for "
                "safety (only tensors, plain containers and argparse.Namespace are allowed)"
            ) from None
        # torch wraps weights-only failures in a long advice text; keep only the actual cause.
        cause = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.DOTALL)
        detail = _one_line(cause.group(1)) if cause else f"{type(err).__name__}: {_one_line(text)}"
        if len(detail) > 120:  # torch's messages run on; the first sentence says it
            detail = detail.split(". ")[0][:120]
        raise UserError(
            f"checkpoint {path} is corrupt, truncated or not a PyTorch file ({detail})"
        ) from None


def _tensor_dict(obj: object, path: str, what: str) -> dict[str, torch.Tensor]:
    """Keep the tensor entries of a state-dict-like mapping (extra non-tensors are ignored)."""
    if not isinstance(obj, Mapping):
        raise UserError(f"checkpoint {path} does not hold a {what} state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"checkpoint {path} holds no tensors where the {what} weights should be")
    return tensors


def _strip(state: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """Remove leading wrapper prefixes (``module.``, ``backbone.``), repeatedly and in any order."""
    prefixes = tuple(prefixes)
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for p in prefixes:
                if key.startswith(p):
                    key, stripped = key[len(p) :], True
        out[key] = value
    return out


# --------------------------------------------------------------------------- strict matching


def _fmt_shape(t: torch.Tensor) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def _load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str,
    kind: str,
    component: str,
    report: LoadReport,
) -> None:
    """Fill every tensor of ``module`` from ``state``; the file may hold nothing else.

    ``kind`` names the expected checkpoint in errors ("a SwAV ResNet checkpoint").
    """
    own = module.state_dict()
    required = [k for k in own if not k.endswith(_OPTIONAL_SUFFIX)]
    matched = [k for k in own if k in state]
    if not any(k in state for k in required):
        raise UserError(
            f"checkpoint {path} does not look like {kind}: "
            f"0 of {len(required)} {component} tensors matched"
        )
    wrong = [k for k in matched if state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"checkpoint {path} does not fit this {component}: {len(wrong)} tensors have the "
            f"wrong shape, e.g. {k} {_fmt_shape(state[k])} vs {_fmt_shape(own[k])}"
        )
    absent = [k for k in required if k not in state]
    if absent:
        raise UserError(
            f"checkpoint {path} lacks {len(absent)} of {len(required)} {component} tensors, "
            f"e.g. {absent[0]} (different architecture?)"
        )
    extra = [k for k in state if k not in own]
    if extra:
        raise UserError(
            f"checkpoint {path} has {len(extra)} {component} tensors this model does not, "
            f"e.g. {extra[0]} (different architecture?)"
        )
    result = module.load_state_dict({k: state[k] for k in matched}, strict=False)
    if result.unexpected_keys:  # cannot happen after the checks above; keep loading honest
        raise UserError(
            f"checkpoint {path}: unexpected {component} tensors {result.unexpected_keys}"
        )
    report.loaded += [f"{component}.{k}" for k in matched]
    report.missing += [f"{component}.{k}" for k in result.missing_keys]


def _load_matching(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    component: str,
    report: LoadReport,
) -> None:
    """Load the tensors whose name and shape agree (heads: K may differ); report the rest."""
    own = module.state_dict()
    fit = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    for k, v in state.items():
        if k in fit:
            continue
        report.skipped.append(f"{component}.{k}")
        if k in own:
            report.notes.append(
                f"{component}.{k} not loaded: shape {_fmt_shape(v)} vs {_fmt_shape(own[k])}"
            )
    module.load_state_dict(fit, strict=False)
    report.loaded += [f"{component}.{k}" for k in fit]
    report.missing += [f"{component}.{k}" for k in own if k not in fit]


# --------------------------------------------------------------------------- SwAV


def load_swav_backbone(model: nn.Module, path: str | os.PathLike, load_projector: bool = False):
    """Initialise ``model.backbone`` (and ``model.projector``) from an official SwAV file.

    The file is either the raw ``module.``-prefixed state dict or ``{'state_dict': ...}``.
    The SwAV prototypes are never loaded (their K is not ours). A model without a ``backbone``
    attribute is treated as the backbone itself. Returns a ``LoadReport``.
    """
    path = os.fspath(path)
    obj = read_checkpoint(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    state = _strip(_tensor_dict(obj, path, "SwAV model"), ["module."])
    report = LoadReport(path)

    backbone_state, projector_state = {}, {}
    for key, value in state.items():
        if key.startswith("prototypes."):
            report.skipped.append(key)
        elif key.startswith("projection_head."):
            projector_state[key[len("projection_head.") :]] = value
        else:
            backbone_state[key] = value
    if any(k.startswith("prototypes.") for k in report.skipped):
        report.notes.append("SwAV prototypes never loaded")

    backbone = getattr(model, "backbone", model)
    _load_strict(backbone, backbone_state, path, "a SwAV ResNet checkpoint", "backbone", report)

    if load_projector:
        projector = getattr(model, "projector", None)
        if projector is None:
            raise UserError(f"cannot load the projector of {path}: the model has no projector")
        if not projector_state:
            raise UserError(f"checkpoint {path} has no SwAV projector (projection_head.*) to load")
        _load_strict(
            projector,
            projector_state,
            path,
            "a SwAV checkpoint with projector",
            "projector",
            report,
        )
    else:
        report.skipped += [f"projection_head.{k}" for k in projector_state]
        if projector_state:
            report.notes.append("projector not requested")
    return report


# --------------------------------------------------------------------------- DINO


def _dino_parts(obj: object, path: str, which: str):
    """Split a DINO file into (backbone state, head state, is_full_checkpoint)."""
    if which not in ("student", "teacher"):
        raise ValueError(f"which must be 'student' or 'teacher', got {which!r}")
    full = isinstance(obj, Mapping) and ("student" in obj or "teacher" in obj)
    if full:
        if which not in obj:
            raise UserError(f"checkpoint {path} has no '{which}' weights")
        state = _strip(_tensor_dict(obj[which], path, f"DINO {which}"), ["module."])
        backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
        if not backbone:
            raise UserError(
                f"checkpoint {path} does not look like a DINO checkpoint: "
                f"no backbone.* tensors under '{which}'"
            )
        return backbone, head, True
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    state = _strip(_tensor_dict(obj, path, "DINO backbone"), ["module.", "backbone."])
    return state, {}, False


def _dino_backbone_into(backbone, state, path, report) -> None:
    """Strict backbone load; classifier tensors some backbone-only releases carry are skipped."""
    own = backbone.state_dict()
    for key in [k for k in state if k.startswith(_CLASSIFIER_PREFIXES) and k not in own]:
        report.skipped.append(key)
        report.notes.append(f"classifier tensor {key} not loaded")
        state = {k: v for k, v in state.items() if k != key}
    _load_strict(backbone, state, path, "a DINO checkpoint for this backbone", "backbone", report)


def load_dino_backbone(
    model_backbone: nn.Module, path: str | os.PathLike, which: str = "teacher"
) -> LoadReport:
    """Initialise a backbone (ViT or ResNet with fc=Identity) from a DINO file.

    Accepts the full training checkpoint (``student``/``teacher`` entries; ``which`` picks one;
    DINO evaluates with the teacher) and the backbone-only releases (bare keys).
    """
    path = os.fspath(path)
    backbone_state, head_state, full = _dino_parts(read_checkpoint(path), path, which)
    report = LoadReport(path)
    if full:
        report.skipped += [f"head.{k}" for k in head_state]
        if head_state:
            report.notes.append(f"{which} head not requested")
    else:
        report.notes.append("backbone-only file (no student/teacher split)")
    _dino_backbone_into(model_backbone, backbone_state, path, report)
    return report


def load_dino_full(
    student: nn.Module, teacher: nn.Module, path: str | os.PathLike
) -> dict[str, LoadReport]:
    """Initialise student and teacher (each with ``.backbone`` and optional ``.head``).

    Backbones load strictly. Head tensors load where name and shape match, so an official
    K = 65536 last layer is skipped (and reported) for our K = classes heads. A backbone-only
    file initialises both backbones and leaves the heads at their init.
    Returns ``{'student': LoadReport, 'teacher': LoadReport}``.
    """
    path = os.fspath(path)
    obj = read_checkpoint(path)
    reports = {}
    for which, model in (("student", student), ("teacher", teacher)):
        if not hasattr(model, "backbone"):
            raise ValueError(f"the {which} model must expose .backbone")
        backbone_state, head_state, full = _dino_parts(obj, path, which)
        report = LoadReport(path)
        _dino_backbone_into(model.backbone, backbone_state, path, report)
        head = getattr(model, "head", None)
        if not full:
            report.notes.append("backbone-only file: heads left at init")
            if head is not None:
                report.missing += [f"head.{k}" for k in head.state_dict()]
        elif head is None:
            report.skipped += [f"head.{k}" for k in head_state]
            report.notes.append("model has no head")
        else:
            _load_matching(head, dino_head_key_map(head_state), "head", report)
        reports[which] = report
    return reports
