"""Run checkpoints: atomic writes, keep-last-K, safe loading and resume discovery.

A checkpoint is a plain dict of tensors and Python scalars/strings, so it loads with
``torch.load(weights_only=True)``; foreign checkpoints (official SwAV/DINO) go through
``common.models.pretrained`` with an explicit allow-list instead.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import zipfile
from pathlib import Path

import torch

from common.errors import UserError

log = logging.getLogger(__name__)

STEP_FILE = re.compile(r"^checkpoint_(\d{8})\.pth$")
LAST = "last.pth"
STABLE = "stable.pth"  # the newest checkpoint whose weights were sane (see ``is_sane``)
# Weights are "exploded" once their max |w| exceeds this many times max(1, max |w| at the start
# of the run): a blow-up reaches 1e20 and more, a healthy network stays within a few times its
# initial scale (normalisation weights start at 1).
HEALTH_GROWTH = 1e3
# Temp files name their writer's pid: ``.<target>.<pid>.<random>.tmp`` / ``.last.pth.<pid>.link``
TEMP_FILE = re.compile(r"^\..+?(?:\.(\d+)\.\w+\.tmp|\.(\d+)\.link|\.tmp|\.link)$")


def atomic_save(obj, path: str | Path) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``.

    A kill at any moment leaves either the old complete file or the new complete file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # like any other run file (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    try:  # read, not set-and-restore: that would briefly change it for every thread
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers (an earlier failed write) are debris too
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temp_files(ckpt_dir: Path) -> None:
    """Partial files of writers that are gone (a kill mid-write); a live process's in-flight
    temp file is left alone, whoever it belongs to."""
    for stale in ckpt_dir.glob(".*"):
        found = TEMP_FILE.match(stale.name)
        if found is None:
            continue
        pid = found.group(1) or found.group(2)
        if pid is None or not _pid_alive(int(pid)):
            stale.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_file(path: str | Path) -> dict:
    """Load one of our checkpoints with ``weights_only=True``; unreadable -> UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    _check_crc(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, foreign objects...
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:  # torch's advice to retry with weights_only=False is wrong for a stray object
            raise UserError(
                f"checkpoint {path} holds a pickled '{found.group(1)}', which is never loaded "
                "(unpickling objects can run code; checkpoints hold only tensors and plain values)"
            ) from None
        reason = _unpickler_reason(str(err))
        if reason is not None and not reason.startswith("Unsupported operand"):
            raise UserError(  # never repeat torch's advice to unpickle it anyway
                f"checkpoint {path} holds pickled objects that are not loaded for safety "
                f"({reason}; checkpoints hold only tensors and plain values)"
            ) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = reason or first  # garbage bytes: torch's reason, without its unsafe advice
        raise UserError(
            f"checkpoint {path} is corrupt or not a suave-daino checkpoint: {first}"
        ) from None
    if not isinstance(obj, dict) or "model" not in obj or "meta" not in obj:
        raise UserError(f"checkpoint {path} is not a suave-daino training checkpoint")
    return obj


def _unpickler_reason(message: str) -> str | None:
    """The reason torch's weights-only unpickler gives, without the advice around it
    (its message starts by suggesting ``weights_only=False``, which is never right here)."""
    _, found, rest = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()]
    return lines[0] if found and lines else None


def _check_crc(path: Path) -> None:
    """torch.load does not verify the zip CRCs, so flipped bits in tensor data would load
    silently; check every record (one extra read, only when a run starts)."""
    try:
        if not zipfile.is_zipfile(path):
            return  # legacy format or garbage: torch.load reports it
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise UserError(f"checkpoint {path} is corrupt: {err}") from None
    if bad is not None:
        raise UserError(f"checkpoint {path} is corrupt: record {bad} fails its CRC check")


def first_non_finite(state: dict) -> str | None:
    """Name of the first floating tensor of ``state`` holding NaN/inf, else None (one sync)."""
    floats = [(k, v) for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()]
    if not floats:
        return None
    ok = torch.stack([torch.isfinite(v).all() for _, v in floats])
    if bool(ok.all()):
        return None
    return floats[int((~ok).nonzero()[0])][0]


def max_abs_weight(tensors) -> float:
    """max |w| over floating tensors (NaN/inf propagate); 0.0 for none."""
    tensors = [t for t in tensors if t.is_floating_point() and t.numel()]
    values = [t.detach().abs().max().float() for t in tensors]
    return float(torch.stack(values).max()) if values else 0.0


def weight_limit(reference: float) -> float:
    return HEALTH_GROWTH * max(float(reference), 1.0)


def is_sane(health: dict | None) -> bool:
    """A checkpoint's health record says its weights are finite and not exploded (checkpoints
    written before health records existed count as sane)."""
    if not health:
        return True
    value = health.get("max_abs_weight", 0.0)
    return bool(value == value and value <= weight_limit(health.get("ref_max_abs", 1.0)))


def checkpoint_files(ckpt_dir: Path) -> list[Path]:
    """Step checkpoints, newest first."""
    if not ckpt_dir.is_dir():
        return []
    files = [p for p in ckpt_dir.iterdir() if STEP_FILE.match(p.name)]
    return sorted(files, key=lambda p: int(STEP_FILE.match(p.name).group(1)), reverse=True)


def save_checkpoint(state: dict, ckpt_dir: str | Path, step: int, keep: int = 3) -> Path:
    """Write ``checkpoint_<step>.pth`` and ``last.pth``, then prune to the newest ``keep``.

    ``stable.pth`` also points at it when it has a sane ``health`` record, so a checkpoint from
    before a divergence survives however many exploded ones follow and get pruned.

    Also removes what an earlier kill left behind: partial temp files, and step files newer than
    ``step`` (after a resume from an older checkpoint, those belong to the abandoned attempt and
    would otherwise count as the newest and crowd out the fresh ones).
    """
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():
        remove_stale_temp_files(ckpt_dir)
    path = ckpt_dir / f"checkpoint_{step:08d}.pth"
    atomic_save(state, path)
    links = [LAST, STABLE] if state.get("health") and is_sane(state["health"]) else [LAST]
    for name in links:
        tmp_link = ckpt_dir / f".{name}.{os.getpid()}.link"
        tmp_link.unlink(missing_ok=True)
        try:
            os.link(path, tmp_link)  # same bytes, no second write
            os.replace(tmp_link, ckpt_dir / name)
        except OSError:
            atomic_save(state, ckpt_dir / name)
    files = checkpoint_files(ckpt_dir)
    newer = [p for p in files if int(STEP_FILE.match(p.name).group(1)) > step]
    current = [p for p in files if p not in newer]
    for old in newer + current[max(keep, 1) :]:
        old.unlink(missing_ok=True)
    return path


def load_latest(ckpt_dir: str | Path) -> tuple[dict, Path] | None:
    """Newest loadable checkpoint with sane weights; corrupt ones and exploded ones (a
    divergence) are reported and skipped, older ones tried, ``stable.pth`` last."""
    ckpt_dir = Path(ckpt_dir)
    candidates = [ckpt_dir / LAST] if (ckpt_dir / LAST).is_file() else []
    candidates += checkpoint_files(ckpt_dir)
    candidates += [ckpt_dir / STABLE] if (ckpt_dir / STABLE).is_file() else []
    for path in candidates:
        try:
            ckpt = load_file(path)
        except UserError as err:
            log.warning("%s; trying an older checkpoint", err)
            continue
        if is_sane(ckpt.get("health")):
            return ckpt, path
        log.warning("checkpoint %s holds exploded weights (max |w| %.3g, written after a "
                    "divergence); trying an older checkpoint", path,
                    ckpt["health"].get("max_abs_weight"))  # fmt: skip
    return None


def check_compatible(ckpt: dict, expected: dict, path: str | Path) -> None:
    """Refuse a checkpoint of another method / architecture / class count / class names (when
    both sides know them), in one line."""
    meta = ckpt.get("meta", {})
    for key in ("method", "backbone", "num_classes"):
        if key in expected and meta.get(key) != expected[key]:
            raise UserError(
                f"checkpoint {path} was made with {key}={meta.get(key)!r}, "
                f"but this run has {key}={expected[key]!r}"
            )
    if meta.get("classes") is not None and expected.get("classes") is not None:
        diff = class_differences(meta["classes"], expected["classes"])
        if diff:
            raise UserError(f"checkpoint {path} was trained on other classes than this run: {diff}")


def class_differences(saved: list[str], current: list[str], limit: int = 3) -> str | None:
    """The first few differences between two ordered class lists (index: saved vs current), or
    None when they are equal; renamed or reordered folders would mislabel every prototype."""
    saved, current = [str(c) for c in saved], [str(c) for c in current]
    if saved == current:
        return None
    pairs = [
        f"#{i} {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(saved, current)) if a != b
    ]  # fmt: skip
    parts = []
    if len(saved) != len(current):
        parts.append(f"{len(saved)} classes in the checkpoint, {len(current)} here")
    if pairs:
        more = f" (+{len(pairs) - limit} more)" if len(pairs) > limit else ""
        parts.append("checkpoint vs here: " + ", ".join(pairs[:limit]) + more)
    return "; ".join(parts)


def load_state_strict(module: torch.nn.Module, state: dict, path: str | Path, what: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line message instead of a long traceback."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise UserError(f"checkpoint {path} does not fit the {what}: {detail[:300]}") from None


def rows_of(ckpt: dict, key: str, path: str | Path, method: str) -> int:
    """Rows of the tensor ``ckpt['model'][key]`` (a method's number of prototypes or outputs)."""
    if key not in ckpt["model"]:
        raise UserError(f"checkpoint {path} lacks {key}: not a complete {method} model")
    return int(ckpt["model"][key].shape[0])


def select_weights(ckpt: dict, prefixes: dict[str, str]) -> dict:
    """Tensors of ``ckpt['model']`` whose key starts with a source prefix, renamed to its target.

    ``{"net.backbone.": "backbone."}`` picks the backbone of one of our checkpoints for a module
    whose backbone lives under ``backbone.``.
    """
    out = {}
    for key, value in ckpt["model"].items():
        for src, dst in prefixes.items():
            if key.startswith(src):
                out[dst + key[len(src) :]] = value
    return out


def load_partial(
    module: torch.nn.Module, weights: dict, path, what: str, required: str = "backbone."
) -> list[str]:
    """Load ``weights`` into ``module``: every given tensor must exist with the right shape, and
    every tensor of the module under ``required`` must be given (a file with another backbone
    fails here instead of leaving part of it random).

    Returns the module's keys that were *not* provided (e.g. a fresh classifier).
    """
    own = module.state_dict()
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise UserError(f"checkpoint {path} has {what} tensor '{unknown[0]}' that this model lacks")
    wrong = [k for k in weights if tuple(weights[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"checkpoint {path}: {len(wrong)} {what} tensors have the wrong shape, e.g. {k} "
            f"{list(weights[k].shape)} vs {list(own[k].shape)} (another architecture?)"
        )
    missing = [k for k in own if k not in weights]
    absent = [k for k in missing if k.startswith(required)]
    if absent:
        raise UserError(f"checkpoint {path} lacks {len(absent)} {what} tensors under "
                        f"{required!r}, e.g. {absent[0]} (another backbone?)")  # fmt: skip
    module.load_state_dict(weights, strict=False)
    return missing


def backbone_prefix_of(ckpt: dict, path: str | Path) -> str:
    """Where one of our checkpoints keeps the backbone evaluation reads: its ``meta`` says so
    (``Method.backbone_prefix``), so one method starts from another's backbone without knowing
    its layout. Checkpoints written before that key: the one ``<name>.backbone.`` prefix among
    their tensors (Suave's and the baseline's ``net.backbone.``); more than one is refused."""
    prefix = ckpt.get("meta", {}).get("backbone_prefix")
    if prefix:
        return prefix
    found = {key.split(".", 1)[0] + ".backbone." for key in ckpt.get("model", {})
             if key.split(".")[1:2] == ["backbone"]}  # fmt: skip
    if len(found) != 1:
        what = ", ".join(sorted(found)) or "none"
        raise UserError(f"checkpoint {path} does not say which of its backbones to start from "
                        f"({what}); it predates meta.backbone_prefix")  # fmt: skip
    return found.pop()


def open_init_checkpoint(path: str | Path, fmt: str, foreign: str) -> tuple[str, dict | None]:
    """Resolve ``model.init_format``: ("ours", checkpoint) or (``foreign``, None) for a release.

    ``auto`` tries our own layout first and falls back to the official one (SwAV or DINO), whose
    loaders read and check the file themselves.
    """
    if fmt not in ("auto", "ours"):
        return fmt, None
    try:
        return "ours", load_file(path)
    except UserError:
        if fmt == "ours":
            raise
        return foreign, None
