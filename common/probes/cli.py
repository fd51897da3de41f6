"""Evaluate a checkpoint on frozen features: weighted k-NN, linear probe, prototype classifier.

    python evaluate.py runs/suave_c100/checkpoints/last.pth             # data from the run
    python evaluate.py swav_800ep_pretrain.pth.tar --data_root /data/imagenet
    python evaluate.py dino_deitsmall16_pretrain_full_checkpoint.pth --data_root /data/imagenet
    python evaluate.py --checkpoint CKPT --train_dir DATA/train --val_dir DATA/val

Accepts our Suave / Daino run checkpoints and the official SwAV / DINO releases. Features of the
training split (centre crops, no augmentation) fit the k-NN and the linear probe; accuracy is
measured on the validation split. The prototype classifier applies to our checkpoints trained
with labels, and so do their online linear heads (``head_<depth>``) when the run had them.
Prints a table and writes ``eval_<name>.json`` and ``.csv`` into --output_dir (default: the run
directory, or the checkpoint's folder; ``eval_<name>_<data>-<hash>`` when ``eval_<name>.json``
there holds results on other data); ``--log_to_run`` also adds them to the checkpoint's run
(metrics_epoch.csv, summary.json, wandb). Runs under torchrun too: each process
embeds a shard and the features are gathered. Bad input is one ``error: ...`` line, exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

import common  # noqa: F401  (torchvision compatibility shim)
from common import dist
from common.accuracy import evaluate_classifier, evaluate_classifiers
from common.checkpoint import class_differences, load_file, max_abs_weight, weight_limit
from common.data.loaders import EvalDataset
from common.data.sources import build_source
from common.data.splits import labels_per_class_split
from common.data.transforms import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, EvalTransform
from common.engine import agreed_precision, autocast_context
from common.errors import UserError, run_cli
from common.logging_utils import log_into_run, setup_logging
from common.method import Method
from common.probes import LinearProbeConfig, extract_features, knn_accuracy, linear_probe
from common.probes.networks import FORMATS, load_eval_model
from common.run_config import PRECISIONS

log = logging.getLogger("evaluate")
EVALUATORS = ("knn", "linear", "prototype")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", nargs="?", help="our run checkpoint or an official SwAV/DINO file")
    p.add_argument("--checkpoint", dest="checkpoint_opt", default=None, help="same, as an option")
    p.add_argument("--format", default="auto", choices=FORMATS, help="checkpoint kind")
    p.add_argument("--arch", default=None, help="backbone of an official file (default: guessed)")
    p.add_argument("--which", default="teacher", choices=("teacher", "student"),
                   help="network of a full DINO checkpoint or of our Daino run")  # fmt: skip
    g = p.add_argument_group("data (our checkpoints default to their training data)")
    g.add_argument("--data_root", default=None, help="data set root (train/ and val/ inside)")
    g.add_argument("--dataset", default=None, choices=("imagefolder", "imagenet", "cifar10",
                                                       "cifar100"))  # fmt: skip
    g.add_argument("--train_split", default=None, help="folder fitting k-NN / linear probe")
    g.add_argument("--val_split", default=None, help="folder measuring accuracy")
    g.add_argument("--train_dir", default=None, help="image folder for k-NN / linear (any path)")
    g.add_argument("--val_dir", default=None, help="image folder measuring accuracy (any path)")
    g.add_argument("--download", action="store_true", help="fetch torchvision CIFAR if missing")
    g.add_argument("--bad_images", default=None, choices=("fail", "skip"),
                   help="corrupt images: stop, or use the next (default: the run's)")  # fmt: skip
    g.add_argument("--normalization", default=None, choices=("imagenet", "cifar"))
    g.add_argument("--eval_size", type=int, default=None, help="centre-crop size")
    g.add_argument("--eval_resize", type=int, default=None, help="resize before crop (0: none)")
    g.add_argument(
        "--train_labels_per_class",
        type=int,
        default=None,
        help="fit k-NN / linear on N labeled images per class (default: all)",
    )
    g.add_argument("--split_seed", type=int, default=0, help="seed of that labeled subset")
    e = p.add_argument_group("evaluators")
    e.add_argument("--evaluators", default="knn,linear,prototype",
                   help="comma list of knn, linear, prototype")  # fmt: skip
    e.add_argument("--knn_k", type=int, default=20)
    e.add_argument("--knn_temperature", type=float, default=0.07)
    e.add_argument("--linear_wd", default="auto", help="weight decay, or 'auto' (held-out grid)")
    e.add_argument("--linear_iters", type=int, default=100, help="L-BFGS iterations")
    e.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    r = p.add_argument_group("run")
    r.add_argument("--batch_size", type=int, default=256)
    r.add_argument("--num_workers", type=int, default=4)
    r.add_argument("--device", default="auto", help="auto | cpu | cuda")
    r.add_argument("--precision", default="fp32", choices=PRECISIONS)
    r.add_argument("--output_dir", default=None, help="where the JSON/CSV go")
    r.add_argument("--name", default=None, help="file name stem (default: checkpoint stem)")
    r.add_argument("--log_to_run", nargs="?", const="", default=None, metavar="RUN_DIR",
                   help="also log the results into the run the checkpoint belongs to (default: "
                        "the checkpoint's run): val_<evaluator>_top1/top5 in metrics_epoch.csv at "
                        "its step, summary.json if it is the final checkpoint, and the run's wandb "
                        "id resumed offline when the run used wandb")  # fmt: skip
    r.add_argument("--save_features", default=None,
                   help="also save the features and labels k-NN / linear used (.pt)")  # fmt: skip
    args = p.parse_intermixed_args(argv)
    if args.checkpoint and args.checkpoint_opt and args.checkpoint != args.checkpoint_opt:
        raise UserError("two different checkpoints given (positional and --checkpoint)")
    args.checkpoint = args.checkpoint or args.checkpoint_opt
    if not args.checkpoint:
        raise UserError("no checkpoint given: python evaluate.py CHECKPOINT [options]")
    args.evaluators = [e.strip() for e in args.evaluators.split(",") if e.strip()]
    bad = [e for e in args.evaluators if e not in EVALUATORS]
    if bad or not args.evaluators:
        raise UserError(f"unknown evaluator '{bad[0] if bad else ''}' (choose from "
                        f"{', '.join(EVALUATORS)})")  # fmt: skip
    if args.knn_k < 1 or args.knn_temperature <= 0 or args.batch_size < 1 or args.num_workers < 0:
        raise UserError("need --knn_k >= 1, --knn_temperature > 0, --batch_size >= 1, "
                        "--num_workers >= 0")  # fmt: skip
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):  # never silently the CPU
        raise UserError(f"--device must be auto, cpu or cuda[:N], got {args.device!r}")
    if args.linear_wd != "auto":
        try:
            args.linear_wd = float(args.linear_wd)
        except ValueError:
            wd = args.linear_wd
            raise UserError(f"--linear_wd must be a number or 'auto', got {wd!r}") from None
    return args


def data_settings(args: argparse.Namespace, run_config: dict | None) -> dict:
    """Command line first, then the checkpoint's training data, then ImageNet defaults."""
    saved = (run_config or {}).get("data", {})
    foreign = {"dataset": "imagefolder", "root": None, "train_split": "train",
               "val_split": "val", "normalization": "imagenet", "eval_size": 224,
               "eval_resize": 256}  # fmt: skip
    out = {}
    for key, default in foreign.items():
        given = getattr(args, "data_root" if key == "root" else key)
        out[key] = given if given is not None else saved.get(key, default)
    out["download"] = args.download or bool(saved.get("download", False))
    out["bad_images"] = args.bad_images or saved.get("bad_images", "fail")
    for which in ("train", "val"):
        folder = getattr(args, f"{which}_dir")
        if folder is None:
            out[f"{which}_root"] = out["root"]
            continue
        if out["dataset"] not in ("imagefolder", "imagenet"):
            raise UserError(f"--{which}_dir is an image folder, but the data set is "
                            f"{out['dataset']} (pass --dataset imagefolder)")  # fmt: skip
        folder = Path(folder)
        out[f"{which}_root"], out[f"{which}_split"] = str(folder.parent), folder.name
    if not out["train_root"] or not out["val_root"]:
        raise UserError("no data: pass --data_root or --train_dir/--val_dir (official checkpoints "
                        "have no saved data)")  # fmt: skip
    if out["eval_size"] < 1 or out["eval_resize"] < 0:
        raise UserError("--eval_size must be >= 1 and --eval_resize >= 0")
    return out


def build_loader(data: dict, which: str, classes, args, device):
    """Deterministic centre-crop loader of one split, sharded rank::world like validation."""
    root, split = data[f"{which}_root"], data[f"{which}_split"]
    source = build_source(data["dataset"], root, split, data["download"], classes=classes)
    mean, std = (CIFAR_MEAN, CIFAR_STD) if data["normalization"] == "cifar" else (
        IMAGENET_MEAN, IMAGENET_STD)  # fmt: skip
    transform = EvalTransform(data["eval_size"], data["eval_resize"] or None, mean, std)
    dataset = EvalDataset(source, transform, data["bad_images"])
    shard = torch.utils.data.Subset(dataset, list(range(dist.rank(), len(dataset),
                                                        dist.world_size())))  # fmt: skip
    kwargs = {"num_workers": args.num_workers, "pin_memory": device.type == "cuda"}
    loader = torch.utils.data.DataLoader(shard, batch_size=args.batch_size, shuffle=False, **kwargs)
    return source, loader


def default_output_dir(checkpoint: Path) -> Path:
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def format_table(results: dict) -> str:
    lines = [f"{'evaluator':<16} {'top1':>7} {'top5':>7}  settings"]
    for row in result_rows(results):
        lines.append(f"{row['evaluator']:<16} {row['top1']:>7.2f} {row['top5']:>7.2f}  "
                     f"{row['settings']}")  # fmt: skip
    return "\n".join(lines)


def head_names(model) -> list[str]:
    return model.module["heads"].names


def classifier_results(model, loader, device: torch.device, amp) -> dict:
    """The prototype classifier and the run's online linear heads (``head_<name>``), in one pass
    over the validation images."""
    if model.heads is None:
        return {"prototype": evaluate_classifier(model.classify, loader, device, amp)}
    names = ["prototype", *head_names(model)]
    found = evaluate_classifiers(
        lambda x: {"prototype": model.classify(x), **model.heads(x)}, names, loader, device, amp
    )
    return {name if name == "prototype" else f"head_{name}": res for name, res in found.items()}


def result_rows(results: dict) -> list[dict]:
    rows = []
    heads = [k for k in results if k.startswith("head_")]
    for name in (*EVALUATORS, *heads):
        res = results.get(name)
        if not isinstance(res, dict) or "top1" not in res:
            continue
        if name == "knn":
            settings = f"k={res['k']} T={res['temperature']:g}"
        elif name == "linear":
            settings = f"wd={res['weight_decay']:g}"
        elif name == "prototype":
            settings = f"K={results.get('num_prototypes')}"
        else:
            settings = "online linear head"
        data = results.get("data") or {}
        val = Path(str(data.get("val_root", ""))) / str(data.get("val_split", ""))
        rows.append({"checkpoint": results["checkpoint"], "evaluator": name,
                     "top1": res["top1"], "top5": res["top5"], "settings": settings,
                     "num_val": res["num_images"], "val_data": str(val)})  # fmt: skip
    return rows


def output_stem(results: dict, out_dir: Path, stem: str) -> str:
    """``stem``, unless ``eval_<stem>.json`` there holds results on other data: then the stem
    names the data too, so evaluating one checkpoint on two data sets keeps both results."""
    previous = out_dir / f"eval_{stem}.json"
    try:
        old_data = json.loads(previous.read_text()).get("data") if previous.is_file() else None
    except (OSError, ValueError, AttributeError):
        old_data = None  # unreadable: not ours to keep
    data = results["data"]
    if old_data is None or old_data == data:
        return stem
    digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:6]
    where = re.sub(r"[^\w.-]", "_", f"{Path(str(data['val_root'])).name}-{data['val_split']}")
    return f"{stem}_{where}-{digest}"


def write_outputs(results: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = output_stem(results, out_dir, stem)
        json_path, csv_path = out_dir / f"eval_{stem}.json", out_dir / f"eval_{stem}.csv"
        json_path.write_text(json.dumps(results, indent=2))
        rows = result_rows(results)
        with csv_path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["checkpoint"])
            writer.writeheader()
            writer.writerows(rows)
    except OSError as err:
        raise UserError(f"cannot write results into {out_dir}: {err.strerror}") from None
    return json_path, csv_path


def run_target(args: argparse.Namespace) -> tuple[Path, dict] | None:
    """``--log_to_run``: the run directory and the checkpoint (ours only), checked before the
    evaluation starts."""
    if args.log_to_run is None:
        return None
    try:
        ckpt = load_file(args.checkpoint)
    except UserError as err:
        raise UserError(f"--log_to_run needs one of our run checkpoints: {err}") from None
    run_dir = (
        Path(args.log_to_run) if args.log_to_run else default_output_dir(Path(args.checkpoint))
    )
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"--log_to_run: {run_dir} is not a run directory (no config.yaml)")
    return run_dir, ckpt


def run_values(results: dict, network: str = "") -> dict:
    """``val_<evaluator>_top1/top5`` columns (wandb ``val/<evaluator>_top1``); ``network``
    (``student``) is named in them, so a student's results never overwrite the teacher's."""
    tag = f"_{network}" if network else ""
    return {f"val_{row['evaluator']}{tag}_{k}": row[k] for row in result_rows(results)
            for k in ("top1", "top5")}  # fmt: skip


def evaluate(
    args: argparse.Namespace, device: torch.device, methods: Mapping[str, type[Method]]
) -> dict:
    """``methods``: the registry's classes, which rebuild our checkpoints' networks."""
    model = load_eval_model(args.checkpoint, args.format, args.arch, args.which, methods=methods)
    warn_if_exploded(model, args.checkpoint)
    model.module.to(device).eval()
    data = data_settings(args, model.run_config)
    train_source, train_loader = build_loader(data, "train", None, args, device)
    classes = train_source.classes
    _, val_loader = build_loader(data, "val", classes, args, device)
    amp = autocast_context(agreed_precision(args.precision, device), device)
    results = {"checkpoint": str(args.checkpoint), "format": model.kind, "arch": model.arch,
               "num_prototypes": model.num_prototypes, "num_classes": len(classes),
               "data": data, "notes": list(model.notes)}  # fmt: skip
    if model.kind in ("daino", "dino"):  # teacher and student: say which one was evaluated
        results["network"] = args.which
    where = Path(data["train_root"]) / data["train_split"]
    log.info("evaluating %s (%s, %s) on %s", args.checkpoint, model.kind, model.arch, where)

    if "prototype" in args.evaluators:
        check_classes(model, classes, where, args.checkpoint)
        if model.classify is None:
            results["prototype"] = "n/a: " + (model.notes[0] if model.notes else "no prototypes")
        elif model.num_prototypes != len(classes):
            results["prototype"] = (f"n/a: {model.num_prototypes} prototypes but "
                                    f"{len(classes)} classes in {where}")  # fmt: skip
        else:
            results.update(classifier_results(model, val_loader, device, amp))
    if not {"knn", "linear"} & set(args.evaluators):
        return results
    train_f, train_y = extract_features(model.features, train_loader, device, amp)
    val_f, val_y = extract_features(model.features, val_loader, device, amp)
    if args.train_labels_per_class:
        keep = labels_per_class_split(train_y.cpu().numpy(), args.train_labels_per_class,
                                      args.split_seed, classes)  # fmt: skip
        keep = torch.as_tensor(keep, device=train_f.device)
        train_f, train_y = train_f[keep], train_y[keep]
    results.update(feature_dim=int(train_f.shape[1]), num_train=int(train_f.shape[0]))
    if args.save_features and dist.is_main():
        torch.save({"train_features": train_f.cpu(), "train_labels": train_y.cpu(),
                    "val_features": val_f.cpu(), "val_labels": val_y.cpu(),
                    "classes": classes}, args.save_features)  # fmt: skip
    if "knn" in args.evaluators:
        results["knn"] = knn_accuracy(train_f, train_y, val_f, val_y, len(classes), args.knn_k,
                                      args.knn_temperature)  # fmt: skip
    if "linear" in args.evaluators:
        cfg = LinearProbeConfig(
            weight_decay=None if args.linear_wd == "auto" else args.linear_wd,
            max_iter=args.linear_iters, seed=args.seed,
        )  # fmt: skip
        results["linear"] = linear_probe(train_f, train_y, val_f, val_y, len(classes), cfg)
    return results


def warn_if_exploded(model, checkpoint) -> None:
    """A checkpoint written during a divergence scores at chance: say why instead of silently."""
    value = max_abs_weight(model.module.parameters())
    limit = weight_limit((model.health or {}).get("ref_max_abs", 1.0))
    if not value <= limit:  # NaN included
        note = (f"exploded weights (max |w| {value:.3g} > {limit:.3g}, from a divergence): "
                "scores will be near chance; evaluate checkpoints/stable.pth instead")  # fmt: skip
        log.warning("checkpoint %s has %s", checkpoint, note)
        model.notes.append(note)


def check_classes(model, classes: list[str], where: Path, checkpoint) -> None:
    """The prototype classifier scores class k with prototype k: data whose class names or
    order differ from training would be scored silently wrong."""
    if model.classify is None:
        return
    if model.classes is None:
        log.info("checkpoint %s records no class names (older run): class order not checked",
                 checkpoint)  # fmt: skip
        return
    diff = class_differences(model.classes, classes)
    if diff:
        raise UserError(
            f"{where} has other classes than checkpoint {checkpoint} was trained on: {diff} "
            "(the prototype classifier needs the training classes; --evaluators knn,linear "
            "works on any data)"
        )


@run_cli
def main(argv: list[str] | None, methods: Mapping[str, type[Method]]) -> dict:
    """``python evaluate.py``; the registry hands ``methods`` in (``common`` knows none)."""
    args = parse_args(argv)
    setup_logging(None, 0)
    _, device = dist.init(args.device)
    try:
        setup_logging(None, dist.rank())
        target = run_target(args) if dist.is_main() else None
        results = evaluate(args, device, methods)
        if dist.is_main():
            out_dir = Path(args.output_dir) if args.output_dir else default_output_dir(
                Path(args.checkpoint))  # fmt: skip
            # the student's results are kept beside the teacher's (the default), not over them
            network = "student" if args.which == "student" else ""
            stem = args.name or Path(args.checkpoint).name.split(".")[0] + (
                f"_{network}" if network else "")  # fmt: skip
            json_path, csv_path = write_outputs(results, out_dir, stem)
            print(format_table(results))
            for name in EVALUATORS:
                if isinstance(results.get(name), str):
                    print(f"{name:<10} {results[name]}")
            print(f"wrote {json_path} and {csv_path}")
            if target is not None:
                run_dir, ckpt = target
                mode = ((ckpt.get("config") or {}).get("log") or {}).get("wandb_mode", "disabled")
                row = log_into_run(run_dir, ckpt, run_values(results, network),
                                   "offline" if mode != "disabled" else None)  # fmt: skip
                print(f"logged into {run_dir} at step {row['step']}")
        return results
    finally:
        dist.shutdown()
