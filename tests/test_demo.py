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
