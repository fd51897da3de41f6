"""The demo: a method and the supervised-only baseline on the same labels, backbone and steps.

  python scripts/demo.py [--method suave|daino] [--config YAML] [--name NAME]
                        [--output_dir runs] [a.b=c ...]

Reads the method's recipe (``--config``; default ``<method>/configs/cpu_demo.yaml``; demo.sh
passes ``suave/configs/demo_cifar10.yaml``) and derives the baseline from it: same data,
labeled split and labeled views, backbone, classifier head, optimiser, schedule, seed and number
of steps; only the unlabeled loss is missing (and so are the local crops only it
would use). Both runs evaluate on ``val/`` every ``train.eval_every_epochs`` epochs of the recipe
(the demo's: 2) and after the last step; ``<output_dir>/<name>/accuracy.png`` shows both
curves. The last three lines printed are the two accuracies and the gap, read from
each run's ``summary.json``. Overrides apply to both runs (``suave.``/``daino.`` ones to the
method only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

import common  # noqa: E402,F401  (torchvision compatibility shim)
from common.errors import UserError, run_cli  # noqa: E402
from common.mixup import labeled_mixup_settings  # noqa: E402
from common.plots import plot_comparison, val_top1_per_epoch  # noqa: E402
from common.run import train_main  # noqa: E402
from registry import METHODS  # noqa: E402

# The baseline's head copies the method's classifier: Suave's projector + prototypes, or
# Daino's MLP head + weight-normalised last layer (its labeled CE divides by student_temp).
HEAD_KEYS = {
    "suave": {"projector_hidden_dim": "projector_hidden_dim", "embed_dim": "embed_dim",
              "temperature": "temperature", "label_smoothing": "label_smoothing"},
    "daino": {"head_hidden_dim": "head_hidden_dim", "head_bottleneck_dim": "head_bottleneck_dim",
              "head_layers": "head_layers", "head_use_bn": "head_use_bn",
              "norm_last_layer": "norm_last_layer", "student_temp": "temperature",
              "label_smoothing": "label_smoothing"},
}  # fmt: skip


def method_entry(method: str):
    """(run config class, builder) of a method, from the registry."""
    cls = METHODS[method]
    return cls.config_cls, cls.build


def baseline_recipe(method: str, recipe: dict) -> dict:
    """The supervised-only twin of a method recipe (resolved config as a dict)."""
    base = {k: recipe[k] for k in ("data", "model", "optim", "train", "log") if k in recipe}
    base = yaml.safe_load(yaml.safe_dump(base))
    base["data"]["num_local"] = 0  # local crops feed only the unlabeled loss
    base["model"]["init"] = None
    head = {ours: recipe[method][theirs] for theirs, ours in HEAD_KEYS[method].items()}
    base["supervised"] = {"head": "prototypes" if method == "suave" else "dino", **head}
    base["supervised"].update(labeled_mixup_settings(recipe[method]))  # same labeled mix
    return base


def resolved(cls, config: Path, overrides: list[str]) -> dict:
    from common.config import load_config, to_dict

    return to_dict(load_config(cls, config, overrides))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--method", choices=("suave", "daino"), default="suave")
    p.add_argument("--config", default="", help="method recipe (default: <method>/configs/"
                   "cpu_demo.yaml)")  # fmt: skip
    p.add_argument("--name", default="demo", help="folder under --output_dir for both runs")
    p.add_argument("--output_dir", default="runs")
    p.add_argument("overrides", nargs="*", help="a.b=c overrides")
    return p.parse_args(argv)


@run_cli
def main(argv=None) -> dict:
    args = parse_args(argv)
    cls, build = method_entry(args.method)
    config = Path(args.config or ROOT / args.method / "configs" / "cpu_demo.yaml")
    out = Path(args.output_dir) / args.name
    out.mkdir(parents=True, exist_ok=True)
    others = {"suave", "daino", "supervised"} - {args.method}
    mine = [o for o in args.overrides if o.split(".")[0] not in others]
    # Resolve the method's recipe with the overrides and derive the twin (which evaluates as often).
    recipe = resolved(cls, config, mine)
    twin = baseline_recipe(args.method, recipe)
    (out / "supervised.yaml").write_text(yaml.safe_dump(twin, sort_keys=False))
    summaries = {}
    for label, run_cls, run_build, cfg_file, extra in (
        ("supervised", *method_entry("supervised"), out / "supervised.yaml", []),
        (args.method, cls, build, config, mine),
    ):
        summaries[label] = train_main(
            ["--config", str(cfg_file), "--output_dir", str(out), "--name", label, *extra],
            run_cls, run_build, f"demo: {label}",
        )  # fmt: skip
    runs = {label: out / label for label in summaries}
    for label, run in runs.items():
        summaries[label] = json.loads((run / "summary.json").read_text())
        if "val_top1" not in summaries[label]:
            raise UserError(f"{run}/summary.json has no val_top1 (no validation folder?)")
    png = plot_comparison(
        {f"{args.method} (labels + unlabeled)": val_top1_per_epoch(runs[args.method] /
         "metrics_epoch.csv"), "supervised only (same labels)": val_top1_per_epoch(
         runs["supervised"] / "metrics_epoch.csv")},
        f"{Path(recipe['data']['root']).name}, {recipe['data']['labels_per_class']} labels/class",
        out / "accuracy.png",
    )  # fmt: skip
    s, b = summaries[args.method], summaries["supervised"]
    gap = s["val_top1"] - b["val_top1"]
    print(f"curves: {png}")
    print(f"supervised only: val top-1 {b['val_top1']:.2f}% after {b['step']} steps")
    print(f"{args.method}: val top-1 {s['val_top1']:.2f}% after {s['step']} steps")
    print(f"gap: {args.method} - supervised = {gap:+.2f} points")
    return {"gap": gap, **summaries}


if __name__ == "__main__":
    main()
