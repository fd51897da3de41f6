"""The demo: a method and the supervised-only baseline on the same labels, backbone and steps.

  python scripts/demo.py [--method suave|daino] [--config YAML] [--name NAME]
                        [--output_dir runs] [--budget_minutes M [--started_at T]] [a.b=c ...]

Reads the method's recipe (``--config``; default ``<method>/configs/cpu_demo.yaml``; demo.sh
passes ``suave/configs/demo_cifar10.yaml``) and derives the baseline from it: same data,
labeled split and labeled views, backbone, classifier head, optimiser, schedule, seed and number
of steps; only the unlabeled loss is missing (and so are the local crops only it
would use). Both runs evaluate on ``val/`` every ``train.eval_every_epochs`` epochs of the recipe
(the demo's: 2) and after the last step; ``<output_dir>/<name>/accuracy.png`` shows both
curves. The last three lines printed are the two accuracies and the gap, read from
each run's ``summary.json``. Overrides apply to both runs (``suave.``/``daino.`` ones to the
method only).

``--budget_minutes M`` (demo.sh: 10, counted from ``--started_at``, the Unix time demo.sh
started, set-up included) sizes both runs to the machine: the method's gap over the baseline
grows with the number of steps while the baseline's accuracy stays flat (benchmarks/RESULTS.md,
issue 15), so the demo spends its minutes on steps. Short probe runs of each side measure the
seconds per step, the fixed cost of a run and one validation's; the runs then get the most epochs
whose predicted time fits 90 % of the minutes left (the rest absorbs plots, checkpoints and the
machine's jitter), at most 2x the recipe's. ``train.epochs=N`` on the command line turns this
off, and rerunning with the printed ``train.epochs`` repeats a budgeted demo exactly.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

import common  # noqa: E402,F401  (torchvision compatibility shim)
from common.engine import should_evaluate  # noqa: E402
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


def write_twin(method: str, cls, config: Path, overrides: list[str], out: Path) -> dict:
    """Resolve the method's recipe with the overrides, write its twin to out/supervised.yaml,
    and return the resolved recipe."""
    recipe = resolved(cls, config, overrides)
    twin = baseline_recipe(method, recipe)
    (out / "supervised.yaml").write_text(yaml.safe_dump(twin, sort_keys=False))
    return recipe


# Probe lengths (training steps). The first probe of a side pays its one-off costs (lazy imports,
# kernel selection for each input shape) and is not timed; the time difference of the other two
# is the cost of the steps between them, free of the start-up and final validation both pay.
WARMUP_STEPS, PROBE_STEPS = 2, (10, 40)
PLAN_SHARE = 0.9  # of the minutes left: the rest is for plots, checkpoints and jitter
MAX_EPOCH_FACTOR = 2  # a fast machine stops at twice the recipe's epochs, not at the budget


@dataclass
class RunSpeed:
    """One side of the demo on this machine: training seconds per step, seconds a run costs
    besides its steps (start-up and its final validation), the seconds of one validation, its
    steps per epoch and how many epochs apart it validates."""

    seconds_per_step: float
    overhead_s: float
    val_s: float
    steps_per_epoch: int
    eval_every_epochs: int = 1

    def predicted_seconds(self, epochs: int) -> float:
        """A run of ``epochs``: its steps, its start-up and final validation, and the
        validations the engine runs at the ends of the epochs before the last."""
        spe, steps = self.steps_per_epoch, epochs * self.steps_per_epoch
        earlier_evals = sum(should_evaluate(epoch * spe, steps, spe, self.eval_every_epochs)
                            for epoch in range(1, epochs))  # fmt: skip
        return self.overhead_s + earlier_evals * self.val_s + steps * self.seconds_per_step


def speed_from_probes(
    short: tuple[int, float], long: tuple[int, float], spe: int, eval_every: int, val_s: float
) -> RunSpeed:
    """Per-step and fixed cost from two probes ((steps, seconds) each) of the same run;
    ``val_s``: the seconds one of their validations took."""
    (n1, t1), (n2, t2) = short, long
    per_step = (t2 - t1) / (n2 - n1) if n2 > n1 else 0.0
    if per_step <= 0:  # timing noise over a tiny run: charge everything to the steps
        per_step = t2 / max(n2, 1)
    overhead = max(t1 - n1 * per_step, 0.0)
    return RunSpeed(per_step, overhead, min(val_s, overhead), spe, eval_every)


def fits_budget(seconds_left: float, speeds: list[RunSpeed], epochs: int) -> bool:
    """Whether all runs of ``epochs`` are predicted to fit PLAN_SHARE of ``seconds_left``."""
    return sum(s.predicted_seconds(epochs) for s in speeds) <= PLAN_SHARE * seconds_left


def plan_epochs(seconds_left: float, speeds: list[RunSpeed], recipe_epochs: int) -> int:
    """The most epochs (>= 1, <= MAX_EPOCH_FACTOR x the recipe's) that ``fits_budget``."""
    fits = 0
    for epochs in range(1, MAX_EPOCH_FACTOR * recipe_epochs + 1):
        if not fits_budget(seconds_left, speeds, epochs):
            break
        fits = epochs
    return max(1, fits)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--method", choices=("suave", "daino"), default="suave")
    p.add_argument("--config", default="", help="method recipe (default: <method>/configs/"
                   "cpu_demo.yaml)")  # fmt: skip
    p.add_argument("--name", default="demo", help="folder under --output_dir for both runs")
    p.add_argument("--output_dir", default="runs")
    p.add_argument("--budget_minutes", type=float, default=0.0, help="size both runs to fit "
                   "this many minutes from --started_at (0: the recipe's epochs)")  # fmt: skip
    p.add_argument("--started_at", type=float, default=None, help="Unix time the budget "
                   "started (default: now)")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="a.b=c overrides")
    args = p.parse_args(argv)
    if args.budget_minutes < 0:
        raise UserError("--budget_minutes must be >= 0")
    return args


def train_side(side: tuple, out: Path, name: str, extra: list[str]) -> tuple[dict, float]:
    """Train one side (label, config class, builder, config file, overrides) under ``out/name``;
    returns its summary and wall time."""
    label, run_cls, run_build, cfg_file, overrides = side
    tic = time.perf_counter()
    summary = train_main(
        ["--config", str(cfg_file), "--output_dir", str(out), "--name", name, *overrides, *extra],
        run_cls, run_build, f"demo: {label}",
    )  # fmt: skip
    return summary, time.perf_counter() - tic


def measure_speeds(sides: list[tuple], out: Path, eval_every: int) -> dict[str, RunSpeed]:
    """Three short probe runs of each side (under ``out/speed_probe``, removed afterwards);
    ``eval_every``: the epochs between validations, the same for both sides (the twin's
    ``train`` section is the method's)."""
    probe_dir, speeds = out / "speed_probe", {}
    # no validation but the final one in a probe: RunSpeed charges the run's own separately
    quiet = ["log.plots=false", "log.wandb_mode=disabled", "train.checkpoint_every_steps=0",
             "train.eval_every_epochs=1000000"]  # fmt: skip
    shutil.rmtree(probe_dir, ignore_errors=True)  # a killed demo's probes: not runs to resume
    try:
        for side in sides:
            timed, val_s = [], []
            for steps in (WARMUP_STEPS, *PROBE_STEPS):
                summary, seconds = train_side(side, probe_dir, f"{side[0]}_{steps}",
                                              [f"train.max_steps={steps}", *quiet])  # fmt: skip
                timed.append((summary["step"], seconds))
                val_s.append(summary.get("val_seconds", 0.0))
            spe = summary["steps_per_epoch"]
            speeds[side[0]] = speed_from_probes(*timed[1:], spe, eval_every, max(val_s[1:]))
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
    return speeds


def demo_sides(method: str, cls, build, config: Path, overrides: list[str], out: Path) -> list:
    """(label, config class, builder, config file, overrides) of the twin, then the method."""
    return [("supervised", *method_entry("supervised"), out / "supervised.yaml", []),
            (method, cls, build, config, overrides)]  # fmt: skip


def plan_budget(args, sides: list, recipe: dict, out: Path, started: float) -> dict:
    """Measure both sides on this machine and choose the epochs that fit the budget; writes
    and returns the plan (``out/budget.json``) and prints it in one line."""
    speeds = measure_speeds(sides, out, recipe["train"]["eval_every_epochs"])
    left = args.budget_minutes * 60 - (time.time() - started)
    recipe_epochs = recipe["train"]["epochs"]
    epochs = plan_epochs(left, list(speeds.values()), recipe_epochs)
    plan = {"budget_minutes": args.budget_minutes, "seconds_left": round(left, 1),
            "recipe_epochs": recipe_epochs, "epochs": epochs,
            "speeds": {label: asdict(speed) for label, speed in speeds.items()},
            "planned_seconds": {label: round(s.predicted_seconds(epochs), 1)
                                for label, s in speeds.items()}}  # fmt: skip
    (out / "budget.json").write_text(json.dumps(plan, indent=2))
    spe = speeds[args.method].steps_per_epoch
    cost = ", ".join(f"{label} {s.seconds_per_step:.3f} s" for label, s in speeds.items())
    if not fits_budget(left, list(speeds.values()), epochs):  # plan_epochs' floor of 1
        print(f"warning: not even one epoch fits the {left:.0f} s left of the budget; running "
              "one (the demo will take longer than its budget)", flush=True)  # fmt: skip
    print(f"budget: {left:.0f} s of {args.budget_minutes:g} min left; per step: {cost}; planned "
          f"{epochs} epochs = {epochs * spe} steps per run (recipe: {recipe_epochs}); repeat "
          f"with train.epochs={epochs}", flush=True)  # fmt: skip
    return plan


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
    recipe = write_twin(args.method, cls, config, mine, out)
    sides = demo_sides(args.method, cls, build, config, mine, out)
    plan = None
    if args.budget_minutes and not any(o.startswith("train.epochs=") for o in mine):
        started = time.time() if args.started_at is None else args.started_at
        plan = plan_budget(args, sides, recipe, out, started)
        mine = [*mine, f"train.epochs={plan['epochs']}"]  # both sides: the twin is derived
        recipe = write_twin(args.method, cls, config, mine, out)
        sides = demo_sides(args.method, cls, build, config, mine, out)
    summaries, seconds = {}, {}
    for side in sides:
        summaries[side[0]], seconds[side[0]] = train_side(side, out, side[0], [])
    if plan is not None:  # how the prediction held: measured against planned seconds per side
        plan["seconds"] = {label: round(t, 1) for label, t in seconds.items()}
        (out / "budget.json").write_text(json.dumps(plan, indent=2))
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
    return {"gap": gap, "plan": plan, **summaries}


if __name__ == "__main__":
    main()
