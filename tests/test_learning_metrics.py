"""Issue 15: the pseudo-label monitors, the Daino-headed baseline and the benchmark's plan."""

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

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
    assert "target_acc" not in one_hot  # no classes given: no accuracy


def test_target_accuracy_counts_argmax_hits_over_every_view():
    two_views = torch.eye(10)[[0, 1, 2, 3, 0, 1, 7, 3]]  # 2 views of 4 images, one row each
    stats = target_stats(two_views, torch.tensor([0, 1, 2, 3]))
    assert stats["target_acc"] == pytest.approx(87.5)  # 7 of 8 rows name the image's class


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
        batch["unlabeled_labels"] = torch.arange(8) % 10
        twin = copy.deepcopy(method)
        out = method.training_step(batch, ctx())
        assert 0 < out.metrics["target_entropy"] <= math.log(10) + 1e-4
        assert 1 <= out.metrics["target_used"] <= 10
        assert 0.1 - 1e-6 <= out.metrics["target_max"] <= 1
        assert 0 <= out.metrics["target_acc"] <= 100
        # a monitor only: other classes for the unlabeled images leave the loss unchanged
        batch["unlabeled_labels"] = (torch.arange(8) + 3) % 10
        again = twin.training_step(batch, ctx())
        assert torch.equal(again.loss.detach(), out.loss.detach())


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


def test_bench_baseline_gets_its_methods_labeled_mixup():
    """Labeled mixup is a labeled-batch augmentation: the baseline mirrors it (it lifts the
    baseline itself by several points), unless the method mixes only unlabeled globals."""
    over = ["suave.mixup=switch", "suave.mixup_alpha=0.5", "daino.mixup=cutmix"]
    assert bench.overrides_for("supervised", over) == ["supervised.mixup=switch",
                                                       "supervised.mixup_alpha=0.5"]  # fmt: skip
    assert bench.overrides_for("supervised_dino", over) == ["supervised.mixup=cutmix"]
    assert bench.overrides_for("suave", over) == over[:2]
    unl = ["suave.mixup=switch", "suave.mixup_on=unlabeled"]
    assert bench.overrides_for("supervised", unl) == []
    both = ["suave.mixup=switch", "suave.mixup_on=both", "supervised.mixup=none"]
    assert bench.overrides_for("supervised", both)[-1] == "supervised.mixup=none"  # explicit wins
    cfg = load_config(SupervisedRunConfig, None, bench.overrides_for("supervised", both))
    assert cfg.supervised.mixup == "none"


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
        # the paper's per-sample weighting of labeled and unlabeled terms (RESULTS.md, part 6)
        assert a[section]["labeled_share"] == 0.0


def test_bench_holds_small_equal_size_folders_in_memory_and_falls_back_to_workers(tmp_path):
    from PIL import Image

    def folder(name, sizes):
        root = tmp_path / name
        for i, size in enumerate(sizes):
            (root / "train" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size).save(root / "train" / f"c{i % 2}" / f"{i}.png")
        (root / "train" / "c0" / "notes.txt").write_text("not an image")
        return root

    same = folder("same", [(32, 32)] * 4)
    assert bench.data_path(same) == bench.RESIDENT
    assert bench.recipe("suave", same, 4, 3, 0)["data"]["device_resident"] is True
    assert bench.recipe("supervised", same, 4, 3, 0)["data"]["device_resident"] is True
    assert bench.data_path(folder("mixed", [(32, 32), (32, 32), (40, 32)])) == bench.WORKERS
    assert bench.data_path(tmp_path / "missing") == bench.WORKERS
    broken = folder("broken", [(32, 32)] * 2)
    (broken / "train" / "c0" / "bad.png").write_bytes(b"not a png")
    assert bench.data_path(broken) == bench.WORKERS  # the workers path names the bad file
    assert bench.recipe("suave", same, 4, 3, 0, data=bench.WORKERS)["data"]["num_workers"] == 2
    # epochs for ~1,800 steps of 64 over the 4 images a run loads (notes.txt is not one)
    assert bench.default_epochs(same) == round(bench.DEFAULT_STEPS * 64 / 4)


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "switch"])
def test_supervised_labeled_mixup_matches_the_methods_labeled_mix(mode):
    """The baseline's labeled mixup draws the mix Suave draws from the same generator (so a
    method with labeled mixup is compared with a baseline that has it) and weighs the mixed
    copies as samples: half of the loss."""
    from common.losses import labeled_loss, mixed_labels_loss
    from common.mixup import mix_permuted

    cfg = load_config(SupervisedRunConfig, None, [
        "model.backbone=resnet_mini", "supervised.projector_hidden_dim=32",
        "supervised.embed_dim=16", f"supervised.mixup={mode}",
        "train.batch_size_labeled=4"])  # fmt: skip
    torch.manual_seed(0)
    method = Supervised(cfg, 10)
    batch = random_multicrop_batch(8, 4, num_classes=10)
    out = method.training_step(batch, ctx())
    assert set(out.terms) == {"loss_labeled", "loss_labeled_mix"}
    torch.testing.assert_close(
        out.loss, (out.terms["loss_labeled"] + out.terms["loss_labeled_mix"]) / 2
    )
    # recompute by hand: the same draw from a fresh generator of the same seed
    mixed, perm, lam = mix_permuted(batch["labeled"], batch["labeled"], mode, 1.0,
                                    ctx().generator, 0.5)  # fmt: skip
    scores = method.net(torch.cat([batch["labeled"], mixed]))
    clean, mix_scores = scores.chunk(2)
    torch.testing.assert_close(out.terms["loss_labeled"],
                               labeled_loss(clean, batch["labels"], 0.1, 0.01))  # fmt: skip
    torch.testing.assert_close(out.terms["loss_labeled_mix"], mixed_labels_loss(
        mix_scores / 0.1, batch["labels"], perm, lam, 10, 0.01))  # fmt: skip
    out.loss.backward()
    assert method.net.prototypes.weight.grad is not None


def test_bench_reports_the_gap_per_split_and_its_mean_and_std(tmp_path):
    """Several labeled splits (the paper's CIFAR protocol: mean +- std over 3 seeds): each split
    is its own data.split_seed, and the gap is taken per split before averaging."""
    a, b = bench.recipe("suave", tmp_path, 4, 3, 0, 0), bench.recipe("suave", tmp_path, 4, 3, 0, 2)
    assert (a["data"].pop("split_seed"), b["data"].pop("split_seed")) == (0, 2)
    assert a == b
    results = {"c10": {0: {"supervised": {"top1": 20.0}, "suave": {"top1": 30.0}},
                       1: {"supervised": {"top1": 25.0}, "suave": {"top1": 29.0}},
                       2: {"supervised": {"top1": 22.0}, "suave": {"top1": 30.0},
                           "daino": {"top1": 40.0}}}}  # fmt: skip
    assert bench.gaps(results) == {"c10": {"suave": [10.0, 4.0, 8.0]}}  # daino: no baseline run
    mean, std = bench.mean_std([10.0, 4.0, 8.0])
    assert mean == pytest.approx(22 / 3) and std == pytest.approx(3.0550505, rel=1e-6)
    assert bench.mean_std([3.0]) == (3.0, 0.0)
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(SystemExit, match="split_seeds"):
        bench.main(["--data", str(tmp_path), "--split_seeds", "x"])


def test_bench_reports_the_labeled_images_each_run_used(tmp_path, monkeypatch, capsys):
    """The result lines count the run's own labeled.txt, so an override of
    data.labels_per_class (or a labeled list) is reported as run, not as --labels_per_class."""
    for sub in ("train", "val"):
        (tmp_path / "data" / sub).mkdir(parents=True)

    def fake_train(argv, *args):
        out, name = Path(argv[argv.index("--output_dir") + 1]), argv[argv.index("--name") + 1]
        (out / name).mkdir(parents=True)
        (out / name / "labeled.txt").write_text("a/1.png\nb/2.png\nc/3.png\n")
        return {"val_top1": 12.5, "step": 7}

    monkeypatch.setattr(bench, "train_main", fake_train)
    listings = []
    listing = bench.train_images
    monkeypatch.setattr(bench, "train_images", lambda root: listings.append(root) or listing(root))
    argv = ["--data", str(tmp_path / "data"), "--epochs", "1", "--split_seeds", "0",
            "--methods", "suave", "--output_dir", str(tmp_path / "out"),
            "data.labels_per_class=1"]  # fmt: skip
    results = bench.main(argv)
    assert results["data"][0]["suave"]["labeled"] == 3
    assert listings == [tmp_path / "data"]  # one listing serves the loading path, budget, batch
    assert "data 3 labeled images suave: top-1 12.50%" in capsys.readouterr().out


def test_bench_labeled_batch_follows_a_labels_per_class_override(tmp_path, monkeypatch):
    """``data.labels_per_class=1`` (3 classes: 3 labeled images) gives a labeled batch of 2, as
    ``--labels_per_class 1`` would; the default 4 would give 8 of 12 images."""
    for cls in "abc":
        (tmp_path / "data" / "train" / cls).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "data" / "train" / cls / f"{i}.png").write_bytes(b"")
    (tmp_path / "data" / "val").mkdir()
    batches = []

    def fake_train(argv, *args):
        config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text())
        batches.append(config["train"]["batch_size_labeled"])
        return {"val_top1": 1.0, "step": 1}

    monkeypatch.setattr(bench, "train_main", fake_train)
    out = str(tmp_path / "out")
    common = ["--data", str(tmp_path / "data"), "--epochs", "1", "--split_seeds", "0",
              "--methods", "suave", "--skip_baselines", "--output_dir", out]  # fmt: skip
    bench.main(common)
    bench.main([*common, "data.labels_per_class=1"])
    bench.main(["--labels_per_class", "1", *common])
    assert batches == [8, 2, 2]


def test_bench_labeled_batch_and_labels_follow_a_label_list_override(tmp_path, monkeypatch):
    """``data.label_list=FILE`` alone is a complete labeled setting: the recipe drops its
    labels per class (the runs refuse both), and the labeled batch counts the list's names
    (3 names: a batch of 2, where 4 per class of 3 classes would give 8); the split seeds
    cannot change a listed labeled set, so it runs once."""
    for cls in "abc":
        (tmp_path / "data" / "train" / cls).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "data" / "train" / cls / f"{cls}_{i}.png").write_bytes(b"")
    (tmp_path / "data" / "val").mkdir()
    (tmp_path / "list.txt").write_text("# three labels\na_0.png\n\nb_1.png\nc_2.png\n")
    configs = []

    def fake_train(argv, *args):
        configs.append(yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()))
        return {"val_top1": 1.0, "step": 1}

    monkeypatch.setattr(bench, "train_main", fake_train)
    common = ["--data", str(tmp_path / "data"), "--epochs", "1", "--methods", "suave",
              "--output_dir", str(tmp_path / "out")]  # fmt: skip
    bench.main([*common, f"data.label_list={tmp_path / 'list.txt'}"])  # one split, not three
    bench.main([*common, "--split_seeds", "0", f"data.label_list={tmp_path / 'list.txt'}",
                "data.label_list=null"])  # fmt: skip
    assert [c["train"]["batch_size_labeled"] for c in configs] == [2, 2, 8, 8]  # method + twin
    assert [c["data"]["labels_per_class"] for c in configs] == [None, None, 4, 4]
    assert bench.listed_images(str(tmp_path / "missing.txt")) == 0  # the run names it


def test_bench_labeled_batch_holds_each_labeled_image_at_most_once(tmp_path):
    """Largest power of two up to 64 that the labeled set fills; method and twin share it."""
    assert [bench.labeled_batch_size(n) for n in (0, 1, 20, 40, 64, 400)] == [64, 1, 16, 32, 64, 64]
    for cls, count in (("a", 5), ("b", 2), ("c", 9)):  # 3 classes, one with fewer than 4 images
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(count):
            (tmp_path / "train" / cls / f"{i}.png").write_bytes(b"")
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    assert bench.labeled_images(tmp_path, 4) == 4 + 2 + 4
    assert bench.labeled_images(tmp_path / "missing", 4) == 0
    for method, base in bench.BASELINE.items():
        runs = [bench.recipe(m, tmp_path, 4, 3, 0, data=bench.WORKERS) for m in (method, base)]
        assert [r["train"]["batch_size_labeled"] for r in runs] == [8, 8]
    assert bench.recipe("suave", tmp_path, 4, 3, 0, labeled_batch=5)["train"][
        "batch_size_labeled"] == 5  # fmt: skip


def test_demo_recipe_is_the_benchmarks_cifar10_mini_recipe(cifar10_mini):
    """The demo's numbers and the benchmark's cifar10-mini split 0 measure the same recipe."""
    from common.config import to_dict
    from suave.method import SuaveRunConfig

    demo = to_dict(load_config(SuaveRunConfig, ROOT / "suave/configs/demo_cifar10.yaml", []))
    epochs = bench.default_epochs(cifar10_mini)
    ours = bench.recipe("suave", cifar10_mini, 4, epochs, 0, data=bench.RESIDENT)
    for section in ("model", "optim", "suave"):
        assert {k: demo[section][k] for k in ours[section]} == ours[section], section
    for key, value in ours["data"].items():
        if key != "root":
            assert demo["data"][key] == value, key
    skip = {"eval_every_epochs", "checkpoint_every_epochs", "checkpoint_every_steps"}
    for key, value in ours["train"].items():
        if key not in skip:
            assert demo["train"][key] == value, key
