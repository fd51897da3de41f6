"""Label efficiency at CPU scale: Suave vs a supervised-only baseline on the same labels.

Both runs share the backbone, the labeled images (N per class, same split seed), the labeled
augmentations, the classifier (projector -> unit-norm prototypes / temperature), the label
smoothing, the optimiser, the schedule and the number of steps; the only difference is that
Suave also learns from every training image through its Sinkhorn-Knopp swapped prediction.
Validation top-1 is on the ``val/`` folder. The recipe below is a CPU-sized Suave recipe (small
ResNet, 32 px crops, a few epochs) chosen to fit ~5 minutes per data set on 2 cores.

  python benchmarks/bench_label_efficiency.py                       # cifar10-mini + cifar100-mini
  python benchmarks/bench_label_efficiency.py --datasets cifar10-mini --epochs 8
The last lines printed are the accuracies and the gaps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import benchlib  # noqa: F401  (sets sys.path and the torchvision shim first)
import yaml
from benchlib import SHARED_DATA

from common.run import train_main
from common.supervised import SupervisedRunConfig, build_supervised
from suave.method import SuaveRunConfig, build_suave

# Sections both runs share: the only difference between them is the unlabeled loss.
SHARED_RECIPE = {
    "data": {
        "dataset": "imagefolder", "normalization": "cifar", "num_global": 2, "global_size": 24,
        "global_scale": [0.3, 1.0], "num_local": 2, "local_size": 12,
        "jitter": [0.4, 0.4, 0.4, 0.1],
        "local_scale": [0.1, 0.3], "global_blur": [0.0, 0.0], "local_blur": 0.0,
        "labeled_size": 24, "labeled_scale": [0.3, 1.0], "eval_size": 24, "eval_resize": 24,
        "num_workers": 2,
    },
    "model": {"backbone": "resnet_mini"},
    "optim": {"name": "sgd", "base_lr": 0.8, "final_lr": 0.001, "warmup_epochs": 0.3,
              "weight_decay": 5.0e-4, "momentum": 0.9},
    "train": {"batch_size_unlabeled": 64, "batch_size_labeled": 64, "eval_batch_size": 500,
              "checkpoint_every_steps": 0, "checkpoint_every_epochs": 1000,
              "eval_every_epochs": 1000},
    "log": {"print_every": 20},
}  # fmt: skip
HEAD = {"projector_hidden_dim": 512, "embed_dim": 128, "temperature": 0.1,
        "label_smoothing": 0.01}  # fmt: skip
SUAVE_ONLY = {"queue_length": 0, "epsilon": 0.05, "sinkhorn_iterations": 3}

METHODS = {
    "suave": (SuaveRunConfig, build_suave, "suave", SUAVE_ONLY),
    "supervised": (SupervisedRunConfig, build_supervised, "supervised", {}),
}
# The baseline never looks at unlabeled crops: skip the local ones (labeled views unchanged).
DATA_ONLY = {"supervised": {"num_local": 0}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", default="cifar10-mini,cifar100-mini")
    p.add_argument("--data_root", default=str(SHARED_DATA), help="folder holding the data sets")
    p.add_argument("--labels_per_class", type=int, default=4)
    p.add_argument("--epochs", type=int, default=0, help="0: per-dataset default below")
    p.add_argument("--methods", default="suave,supervised")
    p.add_argument("--seed", type=int, default=0, help="training seed (split seed is fixed: 0)")
    p.add_argument("--output_dir", default="", help="run folders (default: a temporary folder)")
    p.add_argument("overrides", nargs="*", help="extra a.b=c overrides applied to both runs")
    return p.parse_args(argv)


# Epochs per data set: about 5 minutes of Suave on 2 cores (cifar10-mini has 5,000 training
# images, cifar100-mini 10,000).
DEFAULT_EPOCHS = {"cifar10-mini": 5, "cifar100-mini": 3}


def recipe(method: str, root: Path, labels: int, epochs: int, seed: int) -> dict:
    _, _, section, extra = METHODS[method]
    cfg = yaml.safe_load(yaml.safe_dump(SHARED_RECIPE))
    cfg["data"].update(root=str(root), labels_per_class=labels, **DATA_ONLY.get(method, {}))
    cfg["train"].update(epochs=epochs, seed=seed)
    cfg[section] = {**HEAD, **extra}
    return cfg


def run_one(method: str, dataset: str, args, out_dir: Path) -> dict:
    cls, build, _, _ = METHODS[method]
    epochs = args.epochs or DEFAULT_EPOCHS.get(dataset, 5)
    cfg = recipe(method, Path(args.data_root) / dataset, args.labels_per_class, epochs, args.seed)
    name = f"{dataset}_{method}"
    config_file = out_dir / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    tic = time.perf_counter()
    summary = train_main(
        ["--config", str(config_file), "--output_dir", str(out_dir), "--name", name,
         *args.overrides], cls, build, f"{method} on {dataset}",
    )  # fmt: skip
    return {"top1": summary.get("val_top1", float("nan")), "epochs": epochs,
            "steps": summary.get("step"), "minutes": (time.perf_counter() - tic) / 60}  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.output_dir or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        results = {d: {m: run_one(m, d, args, out_dir) for m in methods} for d in datasets}
    print(f"\nresults: {json.dumps(results)}")
    for dataset, res in results.items():
        for method, r in res.items():
            print(f"{dataset} {args.labels_per_class} labels/class {method}: top-1 "
                  f"{r['top1']:.2f}% ({r['steps']} steps, {r['epochs']} epochs, "
                  f"{r['minutes']:.1f} min)")  # fmt: skip
    for dataset, res in results.items():
        if "suave" in res and "supervised" in res:
            gap = res["suave"]["top1"] - res["supervised"]["top1"]
            verdict = "ok" if gap >= 5 else "BELOW GOAL"
            print(f"GAP {dataset}: suave - supervised = {gap:+.2f} points (goal >= +5: {verdict})")
    return results


if __name__ == "__main__":
    main()
