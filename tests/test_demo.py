"""The demo (scripts/demo.py) on a tiny ImageFolder: fair comparison, honest printout."""

import json
import os
import re

import pytest

from tests.helpers import run_entry

TINY = [
    "data.num_workers=0", "data.global_size=16", "data.local_size=8", "data.labeled_size=16",
    "data.eval_size=16", "data.labels_per_class=2", "train.epochs=3", "train.eval_every_epochs=2",
    "train.batch_size_unlabeled=16", "train.batch_size_labeled=8", "train.eval_batch_size=64",
    "train.checkpoint_every_steps=0", "log.print_every=5",
]  # fmt: skip


def tiny_folder(tmp_path, source):
    """10 classes: 8 training and 3 validation images each (symlinks to real CIFAR-10 images)."""
    root = tmp_path / "tiny"
    for cls in sorted(p.name for p in (source / "train").iterdir()):
        for split, count in (("train", 8), ("val", 3)):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((source / split / cls).iterdir())[:count]:
                os.symlink(f, root / split / cls / f.name)
    return root


@pytest.mark.parametrize("method", ["suave", "daino"])
def test_demo_compares_like_with_like_and_prints_its_runs_numbers(tmp_path, cifar10_mini, method):
    root = tiny_folder(tmp_path, cifar10_mini)
    proc = run_entry("scripts/demo.py", ["--method", method, "--output_dir", str(tmp_path),
                     "--name", "d", f"data.root={root}", *TINY], timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "d"
    runs = {label: out / label for label in ("supervised", method)}
    # Identical labeled images (the files each run wrote) and the same number of steps.
    lists = {label: (run / "labeled.txt").read_text().splitlines() for label, run in runs.items()}
    assert len(lists["supervised"]) == 20 and lists["supervised"] == lists[method]
    summaries = {
        label: json.loads((run / "summary.json").read_text()) for label, run in runs.items()
    }
    assert summaries["supervised"]["step"] == summaries[method]["step"] == 3 * 5
    # Both evaluate as often as the recipe says (every 2nd epoch) and after the last step.
    from common.plots import val_top1_per_epoch

    for run in runs.values():
        assert [e for e, _ in val_top1_per_epoch(run / "metrics_epoch.csv")] == [2, 3]
    # The last three lines are both accuracies and the gap, equal to the runs' summaries.
    last = proc.stdout.strip().splitlines()[-3:]
    numbers = [
        float(re.search(r"([-+]?\d+\.\d+)", line.split(":", 1)[1]).group(1)) for line in last
    ]
    sup, meth = summaries["supervised"]["val_top1"], summaries[method]["val_top1"]
    assert last[0].startswith("supervised only") and numbers[0] == pytest.approx(sup, abs=0.005)
    assert last[1].startswith(method) and numbers[1] == pytest.approx(meth, abs=0.005)
    assert last[2].startswith("gap") and numbers[2] == pytest.approx(meth - sup, abs=0.01)
    assert (out / "accuracy.png").stat().st_size > 1000
    # Same backbone, classifier head and optimiser: the twin config is the method's, minus labels.
    import yaml

    base, meth_cfg = (yaml.safe_load((run / "config.yaml").read_text()) for run in runs.values())
    assert base["model"]["backbone"] == meth_cfg["model"]["backbone"]
    assert base["optim"] == meth_cfg["optim"] and base["train"] == meth_cfg["train"]


@pytest.mark.parametrize(
    "method, mix, expected",
    [("suave", {"mixup": "switch", "mixup_on": "both"}, "switch"),
     ("suave", {"mixup": "cutmix", "mixup_on": "labeled"}, "cutmix"),
     ("suave", {"mixup": "switch", "mixup_on": "unlabeled"}, "none"),
     ("daino", {"mixup": "mixup"}, "mixup"),
     ("daino", {}, "none")],
)  # fmt: skip
def test_demo_twin_mirrors_the_methods_labeled_mixup(method, mix, expected):
    """Labeled mixup is a labeled-batch augmentation: the baseline twin gets the same one."""
    import sys

    import yaml

    from tests.helpers import ROOT

    sys.path.insert(0, str(ROOT / "scripts"))
    import demo

    cls, _ = demo.method_entry(method)
    recipe = demo.resolved(cls, ROOT / method / "configs" / "cpu_demo.yaml",
                           [f"{method}.mixup_alpha=0.4", *(f"{method}.{k}={v}"
                                                           for k, v in mix.items())])  # fmt: skip
    twin = demo.baseline_recipe(method, recipe)["supervised"]
    assert twin.get("mixup", "none") == expected
    if expected != "none":
        assert twin["mixup_alpha"] == 0.4
    yaml.safe_dump(twin)  # plain data, as written to supervised.yaml


def demo_module():
    import sys

    from tests.helpers import ROOT

    sys.path.insert(0, str(ROOT / "scripts"))
    import demo

    return demo


def test_demo_probe_speed_and_epoch_plan():
    """Per-step cost from two probes' time difference; the plan is the most epochs whose
    predicted time (steps, start-up, each validation at its own measured cost) fits 90 % of the
    time left."""
    demo = demo_module()
    speed = demo.speed_from_probes((10, 3.0), (40, 9.0), spe=78, eval_every=2, val_s=0.4)
    assert speed.seconds_per_step == pytest.approx(0.2) and speed.overhead_s == pytest.approx(1.0)
    assert speed.val_s == 0.4
    # 4 epochs: 312 steps x 0.2 s, start-up + the final validation 1 s, the one after epoch 2
    assert speed.predicted_seconds(4) == pytest.approx(312 * 0.2 + 1.0 + 0.4)
    # 5 epochs: validations after epochs 2, 4 and the final one after 5
    assert speed.predicted_seconds(5) == pytest.approx(390 * 0.2 + 1.0 + 2 * 0.4)
    assert speed.predicted_seconds(1) == pytest.approx(78 * 0.2 + 1.0)
    noisy = demo.speed_from_probes((10, 5.0), (40, 4.0), spe=78, eval_every=2, val_s=9.0)
    assert noisy.seconds_per_step == pytest.approx(0.1) and noisy.overhead_s == pytest.approx(4.0)
    assert noisy.val_s == pytest.approx(4.0)  # never more than the start-up + validation it is in
    twin = demo.speed_from_probes((10, 1.0), (40, 2.5), spe=78, eval_every=2, val_s=0.3)
    speeds = [speed, twin]
    for left in (100.0, 400.0, 600.0):
        epochs = demo.plan_epochs(left, speeds, recipe_epochs=24)
        assert sum(s.predicted_seconds(epochs) for s in speeds) <= 0.9 * left
        assert sum(s.predicted_seconds(epochs + 1) for s in speeds) > 0.9 * left
    assert demo.plan_epochs(1e6, speeds, recipe_epochs=24) == 48  # at most 2x the recipe
    assert demo.plan_epochs(-5.0, speeds, recipe_epochs=24) == 1  # too slow: one epoch


def test_demo_budget_sizes_both_runs_alike(tmp_path, cifar10_mini):
    """With --budget_minutes the probes choose the epochs, both runs train that many, the plan
    is printed and saved, the probe runs are removed; train.epochs=N turns the budget off."""
    root = tiny_folder(tmp_path, cifar10_mini)
    base = [a for a in TINY if not a.startswith("train.epochs=")]
    # A budget already spent: the plan is one epoch (5 steps), whatever this machine's speed.
    recipe = ["--config", "suave/configs/demo_cifar10.yaml"]  # demo.sh's, 24 epochs
    proc = run_entry("scripts/demo.py", [*recipe, "--output_dir", str(tmp_path), "--name", "b",
                     "--budget_minutes", "1", "--started_at", "0", f"data.root={root}", *base],
                     timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "b"
    plan = json.loads((out / "budget.json").read_text())
    assert plan["epochs"] == 1 and plan["recipe_epochs"] == 24 and plan["seconds_left"] < 0
    assert set(plan["speeds"]) == set(plan["seconds"]) == {"supervised", "suave"}
    assert all(s["seconds_per_step"] > 0 and s["steps_per_epoch"] == 5
               and 0 <= s["val_s"] <= s["overhead_s"] for s in plan["speeds"].values())  # fmt: skip
    assert "planned 1 epochs = 5 steps per run" in proc.stdout
    assert "warning: not even one epoch fits" in proc.stdout  # said, not hidden
    assert "repeat with train.epochs=1" in proc.stdout
    assert not (out / "speed_probe").exists()
    for label in ("supervised", "suave"):
        summary = json.loads((out / label / "summary.json").read_text())
        assert summary["step"] == summary["steps_per_epoch"] == 5
        assert summary["val_seconds"] > 0  # the engine times its validations for the plan
    # An explicit number of epochs wins over the budget: no probes, no plan.
    proc = run_entry("scripts/demo.py", [*recipe, "--output_dir", str(tmp_path), "--name", "e",
                     "--budget_minutes", "1", f"data.root={root}", *base, "train.epochs=2"],
                     timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "e" / "budget.json").exists() and "budget:" not in proc.stdout
    for label in ("supervised", "suave"):
        assert json.loads((tmp_path / "e" / label / "summary.json").read_text())["step"] == 10


def test_demo_refuses_a_negative_budget():
    from tests.helpers import assert_one_line_error

    proc = run_entry("scripts/demo.py", ["--budget_minutes", "-1"])
    assert_one_line_error(proc, "--budget_minutes must be >= 0")
