"""Short real Suave runs on CIFAR-10 images (../shared/data/cifar10-mini) through the entry points.

Images are trained at 24 px (locals 12 px) so that each run takes seconds on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import main_suave
from common.errors import UserError
from tests.helpers import run_entry

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "suave" / "configs" / "cpu_demo.yaml")

TINY = [
    "data.labels_per_class=50", "data.normalization=cifar", "data.num_workers=0",
    "data.global_size=24", "data.global_scale=[0.3,1.0]", "data.num_local=2",
    "data.local_size=12", "data.local_scale=[0.1,0.3]", "data.global_blur=[0.0,0.0]",
    "data.local_blur=0.0", "data.labeled_size=24", "data.labeled_scale=[0.3,1.0]",
    "data.eval_size=24", "data.eval_resize=24", "model.backbone=resnet_mini",
    "suave.projector_hidden_dim=256", "suave.embed_dim=64", "train.eval_batch_size=500",
]  # fmt: skip


# AdamW learns faster than LARS / SGD in a hundred steps of a small network.
ADAMW = [
    "optim.name=adamw", "optim.base_lr=5e-3", "optim.final_lr=1e-5", "optim.warmup_epochs=0.2",
    "optim.weight_decay=0.04",
]  # fmt: skip


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_short_training_learns(tmp_path, cifar10_mini):
    """One epoch (104 steps, ~40 s alone on 2 cores): both loss terms fall and the prototype
    classifier beats chance (10%) by far on held-out real images; so does each online head, in
    metrics_epoch.csv and summary.json."""
    summary = main_suave.main([
        "--config", CONFIG, "--output_dir", str(tmp_path), "--name", "run",
        f"data.root={cifar10_mini}", *TINY, *ADAMW, "train.batch_size_unlabeled=48",
        "train.batch_size_labeled=48", "train.epochs=1", "train.checkpoint_every_steps=0",
        "log.print_every=4", "suave.online_heads=true",
    ])  # fmt: skip
    assert summary["step"] == 104  # 5000 images // 48
    rows = read_csv(tmp_path / "run" / "metrics_step.csv")
    assert len(rows) == 26
    for term in ("loss", "loss_labeled", "loss_unlabeled"):
        values = [float(r[term]) for r in rows]
        start, end = sum(values[:4]) / 4, sum(values[-4:]) / 4
        assert end < start - 0.1, (term, values)
    assert summary["val_top1"] > 20.0, summary  # measured 26% (one epoch)
    assert summary["val_top5"] > summary["val_top1"]
    epoch_rows = read_csv(tmp_path / "run" / "metrics_epoch.csv")
    assert float(epoch_rows[-1]["val_top1"]) == summary["val_top1"]
    assert (tmp_path / "run" / "checkpoints" / "last.pth").is_file()
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    for head in ("backbone", "proj1", "proj2"):
        key = f"val_top1_head_{head}"
        assert saved[key] == summary[key] == float(epoch_rows[-1][key])
        assert summary[key] > 15.0, summary  # chance 10%
        assert summary[f"val_top5_head_{head}"] > summary[key]
    assert "loss_online_heads" in rows[0]


def test_two_local_processes_equal_one_process(tmp_path, cifar10_mini):
    """job_launcher --mode local: 2 gloo processes x (16 + 8) images give the same losses as one
    process on the same global batch of 32 + 16 (sync BN, all-reduced Sinkhorn, DDP means)."""
    common = [
        f"data.root={cifar10_mini}", *TINY, "data.val_split=none", "train.max_steps=3",
        "train.checkpoint_every_steps=0", "log.print_every=1", "suave.queue_length=0",
        "optim.name=sgd", "optim.warmup_epochs=0",  # Adam would amplify float-order noise
        "suave.online_heads=true",  # outside DDP: their gradients are averaged by the engine
    ]  # fmt: skip
    recipe = tmp_path / "recipe.sh"
    recipe.write_text(f"--config {CONFIG}\n")
    rows = {}
    for procs, b_u, b_l in ((1, 32, 16), (2, 16, 8)):
        name = f"p{procs}"
        proc = run_entry(
            "job_launcher.py",
            ["--mode", "local", "--method", "suave", "--script_file", str(recipe),
             "--num_procs", str(procs), "--output_dir", str(tmp_path), "--name", name, *common,
             f"train.batch_size_unlabeled={b_u}", f"train.batch_size_labeled={b_l}"],
            timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows[procs] = read_csv(tmp_path / name / "metrics_step.csv")
        assert [int(r["step"]) for r in rows[procs]] == [1, 2, 3]  # steps done
    log2 = (tmp_path / "p2" / "train.log").read_text()
    assert "2 process(es)" in log2 and "global batch 32 unlabeled + 16 labeled" in log2
    for one, two in zip(rows[1], rows[2]):
        for key in ("loss", "loss_unlabeled", "loss_labeled", "loss_online_heads", "lr"):
            a, b = float(one[key]), float(two[key])
            # the first step is the same computation; later ones differ by float reduction order
            tol = 1e-5 if one["step"] == "1" else 1e-4
            assert math.isclose(a, b, rel_tol=tol), (one["step"], key, a, b)


def test_zero_labels_is_self_supervised_and_feeds_the_semi_supervised_stage(tmp_path, cifar10_mini):
    """labels_per_class=0: plain SwAV (30 prototypes, no labeled batch, no prototype accuracy);
    its checkpoint then initialises a labeled run's backbone and projector, not its prototypes."""
    import torch

    base = [
        "--config", CONFIG, "--output_dir", str(tmp_path), f"data.root={cifar10_mini}", *TINY,
        "train.batch_size_unlabeled=16", "train.batch_size_labeled=8", "train.max_steps=2",
        "train.checkpoint_every_steps=0", "data.val_split=none",
    ]  # fmt: skip
    summary = main_suave.main(
        [*base, "--name", "ssl", "data.labels_per_class=0", "suave.num_prototypes=30"]
    )
    assert summary["step"] == 2 and "val_top1" not in summary
    ckpt_path = tmp_path / "ssl" / "checkpoints" / "last.pth"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["meta"]["supervised"] is False and ckpt["meta"]["num_prototypes"] == 30
    assert ckpt["config"]["train"]["batch_size_labeled"] == 0
    assert "loss_labeled" not in read_csv(tmp_path / "ssl" / "metrics_step.csv")[0]

    from common.config import load_config
    from suave.method import Suave, SuaveRunConfig

    cfg = load_config(
        SuaveRunConfig, CONFIG, [*TINY, f"model.init={ckpt_path}", "model.init_projector=true"]
    )
    semi = Suave.build(cfg, num_classes=10, world_size=1)
    assert semi.net.prototypes.weight.shape[0] == 10
    for key in ("backbone.conv1.weight", "projector.0.weight"):
        assert torch.equal(semi.net.state_dict()[key], ckpt["model"][f"net.{key}"]), key
    bad = load_config(SuaveRunConfig, CONFIG, [*TINY, f"model.init={ckpt_path}",
                                               "suave.init_prototypes=true"])  # fmt: skip
    with pytest.raises(UserError, match="30 prototypes, this run 10"):
        Suave.build(bad, num_classes=10, world_size=1)
