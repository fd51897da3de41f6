"""Command-line harness shared by ``main_suave.py`` and ``main_daino.py``.

CLI: ``--config FILE [--output_dir DIR] [--name NAME] [--resume] [--init CKPT] [a.b=c ...]``.
Each run lives in ``<output_dir>/<name>/``: config.yaml, train.log, metrics_step.csv,
metrics_epoch.csv, checkpoints/, summary.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from common import dist
from common.checkpoint import check_compatible, load_latest
from common.config import load_config, save_config, to_dict
from common.data import build_train_data, build_val_loader
from common.engine import Trainer
from common.errors import UserError
from common.logging_utils import WandbLogger, setup_logging
from common.run_lock import RunLock

log = logging.getLogger(__name__)

# Keys that may differ between a run's saved config and a resume of it (paths and verbosity).
RESUMABLE_CHANGES = {
    "data.root",
    "data.num_workers",
    "data.download",
    "log.print_every",
    "log.wandb_mode",
    "train.max_steps",
    "train.device",
    "train.dist_timeout_s",
}


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + traceback-like noise
        raise UserError(message)


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = _ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML recipe (see */configs/)")
    parser.add_argument("--output_dir", default="runs", help="parent directory of runs")
    parser.add_argument("--name", default=None, help="run name (default: config file stem)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--init", default=None, help="initial weights (same as model.init=...)")
    parser.add_argument(
        "--override_on_resume", action="append", default=[], metavar="KEY=VALUE",
        help="with --resume: change a saved config value (e.g. optim.base_lr after a blow-up)",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after options
    for item in args.overrides:
        if item.startswith("-"):
            raise UserError(f"unknown option '{item}'")
    if args.init:
        args.overrides.append(f"model.init={args.init}")
    if args.override_on_resume and not args.resume:
        raise UserError("--override_on_resume changes a run being resumed: add --resume")
    for item in args.override_on_resume:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise UserError(f"--override_on_resume expects KEY=VALUE, got {item!r}")
    args.overrides.extend(args.override_on_resume)  # validated with the other overrides
    args.changed_keys = {item.split("=", 1)[0].strip() for item in args.override_on_resume}
    return args


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def prepare_run_dir(
    run_dir: Path, config: dict, resume: bool, changed_keys: set[str] = frozenset()
) -> tuple[dict, Path] | None:
    """Check the run directory against this invocation; returns the checkpoint to resume from.

    Refuses to start over an existing run (different config, or checkpoints without --resume),
    so nothing a user trained is ever silently overwritten. ``changed_keys`` (from
    ``--override_on_resume``) may differ, each change logged on one line.
    """
    check_run_dir_path(run_dir)
    saved_file = run_dir / "config.yaml"
    latest = load_latest(run_dir / "checkpoints") if resume else None
    if saved_file.is_file():
        saved = flatten(yaml.safe_load(saved_file.read_text()) or {})
        current = flatten(config)
        unknown = sorted(k for k in changed_keys if k not in current)
        if unknown:
            raise UserError(f"--override_on_resume: unknown config key '{unknown[0]}'")
        for k in sorted(changed_keys):
            if saved.get(k) != current.get(k):
                log.warning("resume with a changed config: %s %r -> %r (--override_on_resume)",
                            k, saved.get(k), current.get(k))  # fmt: skip
        diff = sorted(
            k for k in set(saved) | set(current)
            if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES | changed_keys
        )  # fmt: skip
        if diff:
            raise UserError(config_mismatch(run_dir, diff[0], saved, current, resume))
        has_ckpt = any((run_dir / "checkpoints").glob("*.pth"))
        if has_ckpt and not resume:
            raise UserError(
                f"run directory {run_dir} already holds checkpoints: pass --resume to continue "
                "it or choose a new --name"
            )
    if resume and latest is None and any((run_dir / "checkpoints").glob("*.pth")):
        raise UserError(
            f"no loadable checkpoint in {run_dir / 'checkpoints'} (all corrupt, or with exploded "
            "weights after a divergence): choose a new --name"
        )
    if resume and latest is None:  # say so: a typo in --name must not look like a resume
        log.warning("--resume: nothing to resume in %s (no checkpoint): starting a new run",
                    run_dir)  # fmt: skip
    return latest


def config_mismatch(run_dir: Path, key: str, saved: dict, current: dict, resume: bool) -> str:
    """Why a run directory's saved config does not match this invocation, and the way out. A key
    missing on one side means the run was saved by another version of this code (a key added
    since, or removed): said so, since the user changed nothing."""
    if key not in saved:
        return (
            f"run directory {run_dir} was saved by a version without config key '{key}' (now "
            f"{current[key]!r}): to continue it with that value pass --resume "
            f"--override_on_resume '{key}={override_text(current[key])}', or choose a new --name"
        )
    if key not in current:
        return (
            f"run directory {run_dir} was saved with config key '{key}' ({saved[key]!r}), "
            "which this version no longer has: resume it with the version that wrote it, or "
            "choose a new --name"
        )
    hint = f" (or --resume --override_on_resume {key}=...)" if resume else ""
    return (
        f"run directory {run_dir} already holds a different config ({key}: "
        f"{saved[key]!r} there, {current[key]!r} now); choose a new --name{hint}"
    )


def override_text(value) -> str:
    """``value`` as an override's right-hand side that parses back to it (overrides are YAML)."""
    if value is None or isinstance(value, (bool, list, tuple)):
        return json.dumps(value)  # null, true, [0.3, 1.0]: JSON is YAML
    return str(value)


def check_run_dir_path(run_dir: Path) -> None:
    for parent in (run_dir, *run_dir.parents):  # fail now, not after data and model are built
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot create run directory {run_dir}: {parent} is a file")
            break


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def write_labeled_list(data, path: Path) -> None:
    """One line per labeled training image (class/file name): two runs that claim the same
    labels can be compared file by file (the demo's baseline and method, for instance)."""
    source = data.loader.dataset.source
    lines = [f"{source.classes[source.targets[i]]}/{source.names[i]}" for i in
             sorted(int(i) for i in data.labeled_indices)]  # fmt: skip
    path.write_text("".join(line + "\n" for line in lines))


def train_main(
    argv: list[str] | None,
    config_cls,
    build_method: Callable,
    description: str,
) -> dict:
    """Parse, set up distributed + run dir + logging, build data/method, train. Returns summary."""
    args = parse_args(argv, description)
    cfg = load_config(config_cls, args.config, args.overrides)  # labels or not: cfg.has_labels
    config_dict = to_dict(cfg)
    info, device = dist.init(cfg.train.device, cfg.train.dist_timeout_s)
    group_broken, lock, started = False, None, False
    try:
        name = args.name or Path(args.config).stem
        if name in ("", ".", ".."):  # the run would be the output directory (or its parent)
            raise UserError(f"--name {name!r} is not a run name")
        run_dir = Path(args.output_dir) / name
        setup_logging(None, dist.rank())  # console first: skipped corrupt checkpoints are warned
        lock = lock_run_dir(run_dir, device)
        resume_from = prepare_run_dir(run_dir, config_dict, args.resume, args.changed_keys)
        seed_everything(cfg.train.seed)
        data = build_train_data(
            cfg.data, cfg.train.batch_size_unlabeled, cfg.train.batch_size_labeled,
            cfg.train.seed, dist.rank(), dist.world_size(), device,
            unlabeled_views=cfg.uses_unlabeled,
        )  # fmt: skip
        val_loader = build_val_loader(
            cfg.data, data.classes, cfg.train.eval_batch_size, dist.rank(), dist.world_size(),
            device,
        )  # fmt: skip
        method = build_method(cfg, data.num_classes, dist.world_size())
        if resume_from is not None:  # a foreign checkpoint is refused before anything is written
            expected = {**method.meta(), "classes": data.classes}
            check_compatible(resume_from[0], expected, resume_from[1])
        # Only now that data and model are known to be valid does the run directory change.
        dist.barrier()
        if dist.is_main():
            try:
                (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
                save_config(cfg, run_dir / "config.yaml")
                write_labeled_list(data, run_dir / "labeled.txt")
            except OSError as err:  # read-only or full disk: say so, in one line
                raise UserError(f"cannot write run directory {run_dir}: {err}") from None
        started = True
        dist.barrier()
        setup_logging(run_dir, dist.rank())
        log.info("run %s: %d process(es) [%s], device %s", run_dir, info.world_size, info.source,
                 device)  # fmt: skip
        wandb_logger = None
        if dist.is_main():
            wandb_logger = WandbLogger(cfg.log, run_dir, name, config_dict)
        trainer = Trainer(method, data, val_loader, cfg, device, run_dir, wandb_logger)
        if resume_from is not None:
            trainer.load_state(*resume_from)
        summary = trainer.fit()
        if dist.is_main():
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            if wandb_logger:
                wandb_logger.finish()
        # Leave together: rank 0 writes plots and the summary after the last collective; a rank
        # that tore its process group down meanwhile was seen to hang at exit under Slurm once
        # rank 0 (the rendezvous store's host) had gone.
        dist.barrier()
        return summary
    except RuntimeError as err:
        if info.world_size > 1 and dist.is_comm_failure(err):
            group_broken = True  # tearing the group down could block on the dead rank
            raise dist.lost_contact_error(err, cfg.train.dist_timeout_s) from None
        raise
    finally:
        if lock is not None:
            lock.release(failed=not started)
        if not group_broken:
            dist.shutdown()


def lock_run_dir(run_dir: Path, device: torch.device) -> RunLock | None:
    """Rank 0 locks the run directory for the run's lifetime; every rank learns if it failed."""
    lock, error = None, None
    check_run_dir_path(run_dir)
    if dist.is_main():
        lock = RunLock(run_dir)
        try:
            lock.acquire()
        except UserError as err:
            error = err
    if dist.world_size() > 1:
        flag = torch.tensor([0.0 if error is None else 1.0], device=device)
        if dist.all_reduce_(flag, "max").item() > 0 and error is None:
            error = UserError(f"run directory {run_dir} could not be locked (see rank 0)")
    if error is not None:
        raise error
    return lock
