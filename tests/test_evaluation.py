"""Frozen-feature evaluation: weighted k-NN, linear probe, prototype classifier, evaluate.py.

The k-NN and the probe are checked against independent implementations (plain numpy loops; the
same objective minimised by scipy in float64). The end-to-end test trains and fine-tunes a tiny
Suave on real CIFAR-10 images (../shared/data/cifar10-mini) and evaluates it with evaluate.py.
"""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import torch
from PIL import Image

import evaluate
import main_suave
from common.probes import (
    LinearProbeConfig,
    extract_features,
    knn_accuracy,
    knn_scores,
    linear_probe,
)
from common.probes import cli as evaluate_cli
from common.probes.linear import standardizer
from tests.dist_utils import run_distributed
from tests.helpers import TINY_SUAVE, assert_cli_error, randomize

CFG = "suave/configs/cpu_demo.yaml"


# --------------------------------------------------------------------------- references
def numpy_knn(train, train_y, test, num_classes, k, temperature):
    """Weighted k-NN written out with loops over the neighbours, in float64."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = test.astype(np.float64) @ train.astype(np.float64).T
    votes = np.zeros((len(test), num_classes))
    for i, sim in enumerate(sims):
        for j in np.argsort(-sim, kind="stable")[:k]:
            votes[i, train_y[j]] += np.exp(sim[j] / temperature)
    return votes


def scipy_logistic(train, train_y, test, num_classes, weight_decay):
    """Our probe's objective (mean CE + wd/2 |W|^2 on standardised features) by scipy L-BFGS-B."""
    norm = standardizer(torch.as_tensor(train))
    x = norm(torch.as_tensor(train)).double().numpy()
    x_test = norm(torch.as_tensor(test)).double().numpy()
    n, d = x.shape
    onehot = np.eye(num_classes)[train_y]

    def objective(theta):
        w, b = theta[: num_classes * d].reshape(num_classes, d), theta[num_classes * d :]
        logits = x @ w.T + b
        lse = scipy.special.logsumexp(logits, axis=1)
        loss = np.mean(lse - logits[np.arange(n), train_y]) + 0.5 * weight_decay * np.sum(w * w)
        grad_logits = (np.exp(logits - lse[:, None]) - onehot) / n
        grad_w = grad_logits.T @ x + weight_decay * w
        return loss, np.concatenate([grad_w.ravel(), grad_logits.sum(0)])

    theta0 = np.zeros(num_classes * (d + 1))
    res = scipy.optimize.minimize(objective, theta0, jac=True, method="L-BFGS-B",
                                  options={"maxiter": 3000, "gtol": 1e-9})  # fmt: skip
    w, b = res.x[: num_classes * d].reshape(num_classes, d), res.x[num_classes * d :]
    return x_test @ w.T + b


def blobs(n_train, n_test, num_classes, dim, seed, spread=2.5):
    """Gaussian classes around shared centres: (train x, train y, test x, test y)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    out = []
    for n in (n_train, n_test):
        y = np.repeat(np.arange(num_classes), n)
        out += [(centres[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32), y]
    return out


# --------------------------------------------------------------------------- k-NN
def test_knn_votes_by_hand():
    """Two neighbours of (1, 0): (1, 0) class 0 (sim 1) and (1, 1) class 1 (sim 0.707)."""
    train = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    labels = torch.tensor([0, 1, 1, 2])
    votes = knn_scores(train, labels, torch.tensor([[2.0, 0.0]]), 3, k=2, temperature=0.5)
    expected = torch.tensor([[np.exp(2.0), np.exp(0.5**0.5 / 0.5), 0.0]], dtype=torch.float32)
    torch.testing.assert_close(votes, expected)


def test_knn_matches_numpy_loops():
    train, train_y, test, test_y = blobs(40, 12, 5, 16, seed=0)
    for k, temp in ((20, 0.07), (7, 0.5)):
        ours = knn_scores(torch.as_tensor(train), torch.as_tensor(train_y), torch.as_tensor(test),
                          5, k, temp, chunk_size=17).double().numpy()  # fmt: skip
        ref = numpy_knn(train, train_y, test, 5, k, temp)
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-30)
    acc = knn_accuracy(torch.as_tensor(train), torch.as_tensor(train_y), torch.as_tensor(test),
                       torch.as_tensor(test_y), 5, k=7, temperature=0.5)  # fmt: skip
    assert acc["top1"] == pytest.approx(100 * np.mean(ref.argmax(1) == test_y))
    assert acc["k"] == 7 and acc["num_images"] == 60 and acc["top5"] == 100.0


# --------------------------------------------------------------------------- linear probe
def test_linear_probe_matches_scipy():
    train, train_y, test, test_y = blobs(60, 25, 4, 12, seed=2, spread=3.0)
    cfg = LinearProbeConfig(weight_decay=1e-2, max_iter=200)
    ours = linear_probe(torch.as_tensor(train), torch.as_tensor(train_y), torch.as_tensor(test),
                        torch.as_tensor(test_y), 4, cfg)  # fmt: skip
    ref_pred = scipy_logistic(train, train_y, test, 4, 1e-2).argmax(1)
    assert ours["top1"] == pytest.approx(100 * np.mean(ref_pred == test_y))
    assert 40 < ours["top1"] < 100  # a real, not a trivial, problem


def test_linear_probe_is_deterministic_and_picks_weight_decay():
    train, train_y, test, test_y = blobs(50, 20, 3, 8, seed=4, spread=2.0)
    cfg = LinearProbeConfig(wd_grid=(1e-4, 1e-1), max_iter=20)
    args = (torch.as_tensor(train), torch.as_tensor(train_y), torch.as_tensor(test),
            torch.as_tensor(test_y), 3, cfg)  # fmt: skip
    first, second = linear_probe(*args), linear_probe(*args)
    assert first == second
    assert first["weight_decay"] in (1e-4, 1e-1) and set(first["holdout_top1"]) == {"0.0001", "0.1"}


# --------------------------------------------------------------------------- feature gathering
class _Constant(torch.utils.data.Dataset):
    def __len__(self):
        return 7

    def __getitem__(self, i):
        return torch.full((2,), float(i)), i % 3


def _gather_worker(rank):
    from common import dist

    data = _Constant()
    shard = torch.utils.data.Subset(data, list(range(rank, len(data), dist.world_size())))
    loader = torch.utils.data.DataLoader(shard, batch_size=2)
    feats, labels = extract_features(lambda x: x * 10, loader, torch.device("cpu"))
    return feats.tolist(), labels.tolist()


@pytest.mark.distributed
def test_features_gathered_from_uneven_shards_in_dataset_order():
    """7 images over 2 ranks (4 + 3): every rank gets all 7 rows, in data-set order."""
    for feats, labels in run_distributed(_gather_worker, 2):
        assert feats == [[10.0 * i, 10.0 * i] for i in range(7)]
        assert labels == [i % 3 for i in range(7)]


# --------------------------------------------------------------------------- evaluate.py
def tiny_folder(src, dst, classes=3, train=10, val=4):
    for split, count in (("train", train), ("val", val)):
        for cls_dir in sorted((src / split).iterdir())[:classes]:
            (dst / split / cls_dir.name).mkdir(parents=True)
            for f in sorted(cls_dir.iterdir())[:count]:
                shutil.copy(f, dst / split / cls_dir.name / f.name)
    return dst


def test_suave_pretrain_finetune_evaluate(tmp_path, cifar10_mini):
    """Train (8 steps), fine-tune (4 steps), evaluate with k-NN, linear probe, prototypes and the
    online heads (the fine-tuning run continues the pre-training run's heads).

    Features of all 5,000 training images are extracted; k-NN and probe fit on 100 labeled per
    class (--train_labels_per_class) to keep the reference computations quick. Their numbers are
    recomputed from the saved features by the references above, and both must beat chance (10%)
    clearly. The training runs also leave their loss/accuracy plots (log.plots).
    """
    common_args = ["--config", CFG, "--output_dir", str(tmp_path), f"data.root={cifar10_mini}",
                   *TINY_SUAVE, "data.labels_per_class=20", "train.epochs=1",
                   "train.checkpoint_every_steps=0", "train.eval_batch_size=500",
                   "suave.online_heads=true"]  # fmt: skip
    main_suave.main([*common_args, "--name", "pre", "train.max_steps=8",
                     "train.batch_size_unlabeled=24", "train.batch_size_labeled=12"])  # fmt: skip
    pre = tmp_path / "pre" / "checkpoints" / "last.pth"
    main_suave.main([*common_args, "--name", "ft", "train.max_steps=4", f"model.init={pre}",
                     "model.init_projector=true", "suave.init_prototypes=true",
                     "train.batch_size_unlabeled=24", "train.batch_size_labeled=24",
                     "optim.base_lr=0.1", "optim.warmup_epochs=0"])  # fmt: skip
    for run in ("pre", "ft"):
        for png in ("loss.png", "accuracy.png"):
            with Image.open(tmp_path / run / png) as img:
                assert img.format == "PNG"
    ckpt = tmp_path / "ft" / "checkpoints" / "last.pth"
    feats_file = tmp_path / "features.pt"
    results = evaluate.main([str(ckpt), "--num_workers", "0", "--batch_size", "500", "--linear_wd",
                             "0.1", "--train_labels_per_class", "100", "--save_features",
                             str(feats_file)])  # fmt: skip
    for name in ("eval_last.json", "eval_last.csv"):
        assert (tmp_path / "ft" / name).is_file()
    saved = json.loads((tmp_path / "ft" / "eval_last.json").read_text())
    assert saved["knn"]["top1"] == results["knn"]["top1"]
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert results["prototype"]["top1"] == pytest.approx(summary["val_top1"])
    for head in ("backbone", "proj1", "proj2"):  # the online heads, as the run validated them
        assert results[f"head_{head}"]["top1"] == pytest.approx(summary[f"val_top1_head_{head}"])
    assert results["num_train"] == 1000 and results["knn"]["num_images"] == 1000

    f = torch.load(feats_file)
    train, train_y = f["train_features"].numpy(), f["train_labels"].numpy()
    val, val_y = f["val_features"].numpy(), f["val_labels"].numpy()
    assert (
        train.shape == (1000, results["feature_dim"]) and np.bincount(val_y).tolist() == [100] * 10
    )
    knn_ref = numpy_knn(train, train_y, val, 10, 20, 0.07).argmax(1)
    assert results["knn"]["top1"] == pytest.approx(100 * np.mean(knn_ref == val_y), abs=0.21)
    lin_ref = scipy_logistic(train, train_y, val, 10, 0.1).argmax(1)
    assert results["linear"]["top1"] == pytest.approx(100 * np.mean(lin_ref == val_y), abs=0.51)
    print("k-NN", results["knn"]["top1"], "linear", results["linear"]["top1"], "prototype",
          results["prototype"]["top1"])  # fmt: skip
    assert results["knn"]["top1"] >= 20 and results["linear"]["top1"] >= 20


def evaluate_as_run(tmp_path, method, cfg, *args):
    """Save ``method`` as a run's last checkpoint (weights, identity, config, as training writes
    it) and evaluate it with ``args``: (checkpoint path, results, saved validation features)."""
    from common.config import to_dict

    path = tmp_path / "run" / "checkpoints" / "last.pth"
    path.parent.mkdir(parents=True)
    torch.save({"model": method.state_dict(), "meta": method.meta(), "config": to_dict(cfg),
                "step": 0}, path)  # fmt: skip
    feats_file = tmp_path / "features.pt"
    results = evaluate.main([str(path), "--num_workers", "0", *args,
                             "--save_features", str(feats_file)])  # fmt: skip
    return path, results, torch.load(feats_file)["val_features"]


def val_images(root):
    """The tiny folder's validation source and its 32 px centre views, as evaluation sees them."""
    from common.data.sources import ImageFolderSource
    from common.data.transforms import CIFAR_MEAN, CIFAR_STD, EvalTransform

    source = ImageFolderSource(
        root / "val", classes=sorted(p.name for p in (root / "train").iterdir())
    )
    transform = EvalTransform(32, None, CIFAR_MEAN, CIFAR_STD)
    return source, torch.stack([transform(source.load(i)) for i in range(len(source))])


@pytest.mark.parametrize("kind", ["daino", "suave_zero_labels"])
def test_evaluate_our_checkpoint_uses_the_evaluated_network(tmp_path, cifar10_mini, kind, capsys):
    """Daino: teacher features and teacher prototypes (the student is initialised otherwise, so
    using it would show), its online heads on the student they were trained on, and the student
    with ``--which student``; Suave without labels: its 7 prototypes are clusters, so no prototype
    classifier, and it has no student to evaluate."""
    from common.config import load_config
    from daino.method import Daino, DainoRunConfig
    from suave.method import Suave, SuaveRunConfig

    root = tiny_folder(cifar10_mini, tmp_path / "data")
    base = [f"data.root={root}", "data.normalization=cifar", "data.eval_size=32",
            "data.eval_resize=0", "model.backbone=resnet_mini"]  # fmt: skip
    if kind == "daino":
        cfg = load_config(DainoRunConfig, None, [*base, "data.labels_per_class=2",
                          "daino.head_hidden_dim=32", "daino.head_bottleneck_dim=16",
                          "daino.online_heads=true"])  # fmt: skip
        method = Daino(cfg, 3)
        other = Daino(cfg, 3)  # another initialisation: a student unlike the teacher
        method.student.load_state_dict(other.student.state_dict())
        randomize(method.online_heads)
    else:
        cfg = load_config(SuaveRunConfig, None, [*base, "data.labels_per_class=0",
                          "train.batch_size_labeled=0", "suave.num_prototypes=7",
                          "suave.projector_hidden_dim=32", "suave.embed_dim=16"])  # fmt: skip
        method = Suave(cfg, 3)
    path, results, val_features = evaluate_as_run(tmp_path, method, cfg, "--linear_wd", "0.1")
    assert (tmp_path / "run" / "eval_last.json").is_file()  # next to the run, not in checkpoints/

    source, images = val_images(root)
    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(val_features, method.features(images))
        predictions = method.classify(images).argmax(1)
    if kind == "daino":
        expected = 100 * (predictions == torch.as_tensor(source.targets)).float().mean().item()
        assert results["prototype"]["top1"] == pytest.approx(expected)
        with torch.no_grad():
            heads = method.classify_all(images)
        assert sorted(heads) == ["backbone", "bottleneck", "hidden", "prototypes"]
        for name in ("backbone", "hidden", "bottleneck"):
            hits = heads[name].argmax(1) == torch.as_tensor(source.targets)
            assert results[f"head_{name}"]["top1"] == pytest.approx(100 * hits.float().mean())
        table = (tmp_path / "run" / "eval_last.csv").read_text()
        assert "head_hidden" in table and "online linear head" in table
    else:
        assert results["prototype"] == "n/a: 7 prototypes are clusters (trained without labels)"
    assert results["knn"]["num_images"] == 12 and results["num_prototypes"] == (
        3 if kind == "daino" else 7)  # fmt: skip

    # --which student: Daino's student network; a checkpoint with one network refuses instead of
    # evaluating that network under another name
    saved = tmp_path / "student.pt"
    args = [str(path), "--which", "student", "--num_workers", "0", "--evaluators", "knn,prototype",
            "--save_features", str(saved), "--output_dir", str(tmp_path / "st")]  # fmt: skip
    if kind != "daino":
        assert_cli_error(capsys, evaluate.main, args, r"--which student: .* has one network")
        return
    results = evaluate.main(args)
    with torch.no_grad():
        student_feats = method.student.backbone(images)
        predictions = method.student([images]).argmax(1)
    torch.testing.assert_close(torch.load(saved)["val_features"], student_feats)
    assert not torch.allclose(student_feats, method.features(images))
    expected = 100 * (predictions == torch.as_tensor(source.targets)).float().mean().item()
    assert results["prototype"]["top1"] == pytest.approx(expected)
    # kept beside the teacher's results, never over them (files and --log_to_run columns)
    assert (
        results["network"] == "student" and (tmp_path / "st" / "eval_last_student.json").is_file()
    )
    assert "val_knn_student_top1" in evaluate_cli.run_values(results, "student")


@pytest.mark.parametrize("head", ["prototypes", "dino", "linear"])
def test_evaluate_supervised_baseline(tmp_path, cifar10_mini, head):
    """The supervised-only baseline's checkpoint meets the same evaluators as its method's (it was
    refused): its own backbone features and classifier, whichever head it trained."""
    from common.config import load_config
    from supervised.method import Supervised, SupervisedRunConfig

    root = tiny_folder(cifar10_mini, tmp_path / "data")
    cfg = load_config(SupervisedRunConfig, None, [
        f"data.root={root}", "data.normalization=cifar", "data.eval_size=32", "data.eval_resize=0",
        "model.backbone=resnet_mini", "data.labels_per_class=2", f"supervised.head={head}",
        "supervised.projector_hidden_dim=32", "supervised.embed_dim=16",
        "supervised.head_hidden_dim=32", "supervised.head_bottleneck_dim=16"])  # fmt: skip
    method = Supervised(cfg, 3)
    _, results, val_features = evaluate_as_run(tmp_path, method, cfg, "--evaluators",
                                               "knn,prototype")  # fmt: skip

    source, images = val_images(root)
    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(val_features, method.features(images))
        predictions = method.classify(images).argmax(1)
    expected = 100 * (predictions == torch.as_tensor(source.targets)).float().mean().item()
    assert results["format"] == "supervised" and results["num_prototypes"] == 3
    assert results["prototype"]["top1"] == pytest.approx(expected)
    assert results["knn"]["num_images"] == 12


def _official_swav(path):
    from common.models.factory import build_backbone

    backbone, _ = build_backbone("resnet18")
    state = {f"module.{k}": v for k, v in backbone.state_dict().items()}
    state["module.projection_head.0.weight"] = torch.randn(16, 512)
    state["module.prototypes.weight"] = torch.randn(30, 16)
    torch.save(state, path)


def _official_dino(path):
    from common.models.factory import build_backbone

    nets = {}
    for which in ("student", "teacher"):
        vit, _ = build_backbone("vit_tiny")
        nets[which] = {f"module.backbone.{k}": v for k, v in vit.state_dict().items()}
        nets[which]["module.head.last_layer.weight_g"] = torch.ones(50, 1)
    torch.save({**nets, "epoch": 100, "args": argparse.Namespace(arch="vit_tiny")}, path)


@pytest.mark.parametrize("kind", ["swav", "dino"])
def test_evaluate_official_checkpoints(tmp_path, cifar10_mini, kind, capsys):
    """Official-layout files are recognised (format, architecture); k-NN + linear, no prototypes."""
    root = tiny_folder(cifar10_mini, tmp_path / "data")
    path = tmp_path / f"{kind}.pth"
    (_official_swav if kind == "swav" else _official_dino)(path)
    data = ["--data_root", str(root)] if kind == "swav" else [
        "--train_dir", str(root / "train"), "--val_dir", str(root / "val")]  # fmt: skip
    ckpt = [str(path)] if kind == "swav" else ["--checkpoint", str(path)]
    if kind == "swav":  # one network: --which student is refused, not ignored
        assert_cli_error(capsys, evaluate.main, [*ckpt, *data, "--which", "student"],
                         r"--which student: .* SwAV checkpoint, which has one network")  # fmt: skip
    results = evaluate.main([*ckpt, *data, "--eval_size", "32", "--eval_resize", "0",
                             "--num_workers", "0", "--linear_wd", "0.01",
                             "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert results["format"] == kind
    assert results["arch"] == ("resnet18" if kind == "swav" else "vit_tiny")
    assert results["prototype"].startswith("n/a")
    assert results["knn"]["num_images"] == 12 and results["num_train"] == 30
    assert 0 <= results["linear"]["top1"] <= 100
    assert (tmp_path / "out" / f"eval_{kind}.json").is_file()


def test_evaluate_bad_input_is_one_line(tmp_path, capsys):
    missing = str(tmp_path / "nope.pth")
    assert_cli_error(capsys, evaluate.main, [missing, "--data_root", str(tmp_path)],
                     r"checkpoint not found: .*nope.pth")  # fmt: skip
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    assert_cli_error(capsys, evaluate.main, [str(junk), "--data_root", str(tmp_path)],
                     r"junk.pth is corrupt")  # fmt: skip
    assert_cli_error(capsys, evaluate.main, ["--data_root", str(tmp_path)], r"no checkpoint given")
    assert_cli_error(capsys, evaluate.main, [str(junk), "--evaluators", "knn,magic"],
                     r"unknown evaluator 'magic'")  # fmt: skip
    empty = tmp_path / "empty.pth"
    torch.save({"weights": torch.zeros(3)}, empty)
    assert_cli_error(capsys, evaluate.main, [str(empty), "--data_root", str(tmp_path)],
                     r"cannot tell what .*empty.pth holds")  # fmt: skip
