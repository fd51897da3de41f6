"""Issue 15: the pseudo-label monitors, the Daino-headed baseline and the benchmark's plan."""

import math
import sys

import pytest
import torch

from common.config import load_config
from common.losses import target_stats
from common.method import StepContext
from supervised.method import Supervised, SupervisedRunConfig
from tests.helpers import ROOT, random_multicrop_batch

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_label_efficiency as bench  # noqa: E402


def test_target_stats_uniform_one_hot_and_collapsed():
    uniform = target_stats(torch.full((8, 10), 0.1))
    assert uniform["target_entropy"] == pytest.approx(math.log(10), rel=1e-5)
    assert uniform["target_max"] == pytest.approx(0.1)
    one_hot = target_stats(torch.eye(10)[[0, 1, 2, 3, 3, 3]])
    assert one_hot["target_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert one_hot["target_used"] == 4  # argmax histogram: prototypes 0-3 only
    assert one_hot["target_max"] == pytest.approx(1.0)


def ctx():
    return StepContext(0, 0, 0, 10, 10, torch.device("cpu"), torch.Generator().manual_seed(1))


def test_suave_and_daino_log_target_stats():
    from daino.method import Daino, DainoRunConfig
    from suave.method import Suave, SuaveRunConfig

    common = ["model.backbone=resnet_mini", "data.num_local=2", "train.batch_size_unlabeled=8",
              "train.batch_size_labeled=4"]  # fmt: skip
    suave_cfg = load_config(SuaveRunConfig, None, common + ["suave.projector_hidden_dim=32",
                            "suave.embed_dim=16", "suave.queue_length=0"])  # fmt: skip
    daino_extra = ["model.drop_path=0.0", "daino.head_hidden_dim=32"]
    daino_cfg = load_config(DainoRunConfig, None, common + daino_extra)
    for method in (Suave(suave_cfg, 10), Daino(daino_cfg, 10)):
        method.setup(epochs=1, steps_per_epoch=10)
        batch = random_multicrop_batch(8, 4, num_classes=10)
        out = method.training_step(batch, ctx())
        assert 0 < out.metrics["target_entropy"] <= math.log(10) + 1e-4
        assert 1 <= out.metrics["target_used"] <= 10
        assert 0.1 - 1e-6 <= out.metrics["target_max"] <= 1


def test_supervised_dino_head_matches_daino_head_shape_and_learns_a_step():
    cfg = load_config(SupervisedRunConfig, None, [
        "model.backbone=resnet_mini", "supervised.head=dino", "supervised.head_hidden_dim=32",
        "supervised.head_bottleneck_dim=16", "train.batch_size_labeled=4"])  # fmt: skip
    method = Supervised(cfg, 10)
    assert method.logit_scale == pytest.approx(10.0)  # divides by the temperature, as Daino
    batch = random_multicrop_batch(8, 4, num_classes=10)
    out = method.training_step(batch, ctx())
    out.loss.backward()
    assert method.net.dino_head.last_layer.parametrizations.weight.original1.grad is not None
    assert method.classify(batch["labeled"]).shape == (4, 10)


def test_labeled_share_fixes_the_labeled_weight():
    from common.losses import balanced_total

    lab, unl = torch.tensor(1.0), torch.tensor(3.0)
    assert float(balanced_total([(lab, 64)], [(unl, 256)])) == pytest.approx(2.6)  # per sample
    assert float(balanced_total([(lab, 64)], [(unl, 256)], 0.5)) == pytest.approx(2.0)
    assert float(balanced_total([], [(unl, 256)], 0.5)) == pytest.approx(3.0)  # no labels


def test_bench_plan_adds_each_baseline_and_routes_overrides():
    assert bench.plan(["suave", "daino"]) == ["supervised", "supervised_dino", "suave", "daino"]
    assert bench.plan(["supervised"]) == ["supervised"]
    with pytest.raises(SystemExit, match="unknown method"):
        bench.plan(["fixmatch"])
    overrides = ["suave.epsilon=0.03", "daino.teacher_temp=0.05", "optim.base_lr=0.4"]
    assert bench.overrides_for("suave", overrides) == ["suave.epsilon=0.03", "optim.base_lr=0.4"]
    assert bench.overrides_for("supervised_dino", overrides) == ["optim.base_lr=0.4"]


def test_bench_recipes_share_everything_but_the_unlabeled_loss(tmp_path):
    for method, base in bench.BASELINE.items():
        a = bench.recipe(method, tmp_path, 4, 3, 0)
        b = bench.recipe(base, tmp_path, 4, 3, 0)
        for key in ("optim", "train"):
            assert a[key] == b[key]
        assert {k: v for k, v in a["data"].items() if k != "num_local"} == {
            k: v for k, v in b["data"].items() if k != "num_local"}  # fmt: skip
        head_keys = set(bench.DAINO_HEAD) if method == "daino" else set(bench.HEAD)
        section = bench.METHODS[method][2]
        for key in head_keys:
            assert a[section][key] == b["supervised"][key], (method, key)
