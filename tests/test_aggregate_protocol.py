"""Results table (mean ± sample std per setting) and the CIFAR-100 protocol command (dry run)."""

from __future__ import annotations

import csv
import json
import shlex
import statistics
from pathlib import Path

import pytest
import yaml

from scripts import aggregate_results, cifar100_protocol
from tests.helpers import assert_cli_error


def fake_run(
    run_dir, method, per_class, seed, top1_by_epoch, dataset="cifar100", summary=True, heads=None
):
    """A finished run directory as train_main leaves it (config, metrics, summary, checkpoint);
    ``heads``: {depth: final top-1} of online heads, logged as train_main does."""
    heads = heads or {}
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pth").write_bytes(b"")
    config = {"data": {"dataset": dataset, "root": "data/x", "labels_per_class": per_class,
                       "split_seed": seed}, "train": {"seed": seed}, method: {}}  # fmt: skip
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    columns = [c for h in heads for c in (f"val_top1_head_{h}", f"val_top5_head_{h}")]
    with (run_dir / "metrics_epoch.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "epoch", "val_top1", "val_top5", *columns])
        for epoch, top1 in enumerate(top1_by_epoch):
            last = epoch == len(top1_by_epoch) - 1
            values = [v for t in heads.values() for v in ((t, t + 20) if last else (1.0, 5.0))]
            writer.writerow([epoch * 10 + 9, epoch, top1, min(100, top1 + 20), *values])
    if summary:
        final = {"step": 30, "val_top1": top1_by_epoch[-1]}
        final.update({f"val_top1_head_{h}": t for h, t in heads.items()})
        (run_dir / "summary.json").write_text(json.dumps(final))
    return run_dir


def test_mean_and_sample_std_per_setting(tmp_path):
    finals = [60.0, 62.5, 66.1]
    runs = [fake_run(tmp_path / f"suave_400_s{s}", "suave", 4, s, [5.0, 30.0, top1], summary=s != 1)
            for s, top1 in enumerate(finals)]  # fmt: skip
    runs.append(fake_run(tmp_path / "daino_2500_s0", "daino", 25, 0, [70.0]))
    paths = [*map(str, runs[:2]), str(runs[2] / "metrics_epoch.csv"), str(runs[3])]
    groups = aggregate_results.main([*paths, "--output", str(tmp_path / "table")])
    suave = next(g for g in groups if g.method == "suave")
    assert (suave.dataset, suave.labels, suave.values) == ("cifar100", "400", finals)
    assert suave.mean == pytest.approx(sum(finals) / 3)
    assert suave.std == pytest.approx(statistics.stdev(finals))  # ddof=1 (ddof=0 would be 2.504)
    assert suave.std == pytest.approx(3.06649, abs=1e-4) and suave.paper == 64.6
    daino = next(g for g in groups if g.method == "daino")
    assert daino.labels == "2500" and daino.paper == 75.2

    md = (tmp_path / "table.md").read_text()
    assert "sample std, ddof=1" in md
    assert "| suave | cifar100 | 400 | 3 | 62.87 ± 3.07 | 64.6 |" in md
    assert "| daino | cifar100 | 2500 | 1 | 70.00 ± n/a | 75.2 |" in md
    with (tmp_path / "table.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["mean"] == "62.8667" and rows[0]["std_ddof1"] == "3.0665"
    assert rows[0]["values"] == "60;62.5;66.1" and rows[1]["std_ddof1"] == ""


def test_table_reports_every_online_head_beside_the_prototype_classifier(tmp_path):
    """Runs with online heads: one column per head (mean ± sample std), a head some run lacks
    counts only its runs (n=...), and the CSV has a row per head; heads of the other method
    read n/a. Values come from summary.json, or metrics_epoch.csv when a run has none."""
    suave = [({"backbone": 50.0, "proj1": 56.0, "proj2": 55.0}, 54.0),
             ({"backbone": 52.0, "proj1": 58.0, "proj2": 57.0}, 55.0),
             ({"backbone": 51.0, "proj1": 60.0}, 56.0)]  # fmt: skip
    runs = [fake_run(tmp_path / f"suave_400_s{s}", "suave", 4, s, [10.0, top1], heads=heads,
                     summary=s != 2) for s, (heads, top1) in enumerate(suave)]  # fmt: skip
    daino_heads = {"backbone": 40.0, "hidden": 44.0, "bottleneck": 43.0}
    runs.append(fake_run(tmp_path / "daino_400_s0", "daino", 4, 0, [50.0], heads=daino_heads))
    groups = aggregate_results.main([*map(str, runs), "--output", str(tmp_path / "t")])
    g = groups[0]
    assert g.values == [54.0, 55.0, 56.0]
    assert g.heads == {"val_top1_head_backbone": [50.0, 52.0, 51.0],
                       "val_top1_head_proj1": [56.0, 58.0, 60.0],
                       "val_top1_head_proj2": [55.0, 57.0]}  # fmt: skip
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[0] == ("| method | data set | labels | runs | val_top1: mean ± std (sample std, "
                     "ddof=1) | head backbone | head proj1 | head proj2 | head hidden | "
                     "head bottleneck | paper |")  # fmt: skip
    assert md[2] == ("| suave | cifar100 | 400 | 3 | 55.00 ± 1.00 | 51.00 ± 1.00 | 58.00 ± 2.00 "
                     "| 56.00 ± 1.41 (n=2) | n/a | n/a | 64.6 |")  # fmt: skip
    assert md[3] == ("| daino | cifar100 | 400 | 1 | 50.00 ± n/a | 40.00 ± n/a | n/a | n/a "
                     "| 44.00 ± n/a | 43.00 ± n/a | 61.1 |")  # fmt: skip
    assert any("compare them with head proj1" in line for line in md)
    with (tmp_path / "t.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    suave_rows = {r["metric"]: r for r in rows if r["method"] == "suave"}
    assert list(suave_rows) == ["val_top1", "val_top1_head_backbone", "val_top1_head_proj1",
                                "val_top1_head_proj2"]  # fmt: skip
    assert suave_rows["val_top1_head_proj1"]["mean"] == "58.0000"
    assert suave_rows["val_top1_head_proj1"]["std_ddof1"] == "2.0000"
    assert suave_rows["val_top1_head_proj2"]["n"] == "2"
    assert suave_rows["val_top1"]["paper"] == "64.6" and suave_rows["val_top1_head_proj1"][
        "paper"] == ""  # fmt: skip


def test_aggregate_other_metric_and_errors(tmp_path, capsys):
    run = fake_run(tmp_path / "r_s0", "suave", 4, 0, [50.0])
    (run / "eval_last.json").write_text(json.dumps({"knn": {"top1": 41.5, "top5": 80.0}}))
    other = fake_run(tmp_path / "r_s1", "suave", 4, 1, [52.0])  # has no eval_*.json
    groups = aggregate_results.main([str(run), str(other), "--metric", "knn_top1", "--out",
                                     str(tmp_path / "res" / "t.md")])  # fmt: skip
    assert groups[0].values == [41.5] and "skipped: no 'knn_top1'" in capsys.readouterr().err
    assert (tmp_path / "res" / "t.md").is_file() and (tmp_path / "res" / "t.csv").is_file()
    assert_cli_error(capsys, aggregate_results.main, [str(run), "--metric", "linear_top1"],
                     r"no 'linear_top1' in .*r_s0")  # fmt: skip
    assert_cli_error(capsys, aggregate_results.main, [str(tmp_path / "nope")], r"run not found")


def commands(capsys, argv):
    capsys.readouterr()
    assert cifar100_protocol.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    return [shlex.split(line) for line in lines if not line.startswith("#")]


def overrides(cmd):
    return dict(item.split("=", 1) for item in cmd if "=" in item and not item.startswith("-"))


def test_protocol_dry_run_with_self_supervised_stage(tmp_path, capsys):
    out = tmp_path / "proto"
    cmds = commands(capsys, ["--method", "suave", "--ssl_epochs", "7", "--dry_run",
                             "--output_dir", str(out), "train.precision=bf16"])  # fmt: skip
    assert len(cmds) == 1 + 9 and not out.exists()  # nothing written, nothing run
    ssl, runs = cmds[0], cmds[1:]
    assert ssl[1].endswith("main_suave.py") and ssl[ssl.index("--config") + 1].endswith(
        "suave/configs/cifar100_ssl.yaml")  # fmt: skip
    o = overrides(ssl)
    assert o["data.labels_per_class"] == "0" and o["train.epochs"] == "7"
    assert o["train.precision"] == "bf16" and o["data.dataset"] == "cifar100"
    ckpt = str(out / "suave_cifar100_ssl" / "checkpoints" / "last.pth")
    seen = set()
    for cmd in runs:
        o = overrides(cmd)
        name = cmd[cmd.index("--name") + 1]
        labels = {"4": "400", "25": "2500", "100": "10000"}[o["data.labels_per_class"]]
        assert o["data.split_seed"] == o["train.seed"] and name == (
            f"suave_cifar100_{labels}_s{o['train.seed']}")  # fmt: skip
        assert cmd[cmd.index("--config") + 1].endswith(f"suave/configs/cifar100_{labels}.yaml")
        assert cmd[cmd.index("--init") + 1] == ckpt and o["model.init_projector"] == "true"
        seen.add((labels, o["train.seed"]))
    assert seen == {(n, s) for n in ("400", "2500", "10000") for s in "012"}


def test_protocol_dry_run_launcher_other_dataset_and_skips(tmp_path, capsys, cifar10_mini):
    out = tmp_path / "proto"
    fake_run(out / "daino_cifar10-mini_50_s0", "daino", 5, 0, [30.0])  # already finished
    cmds = commands(capsys, ["--method", "daino", "--dataset", "imagefolder", "--data_root",
                             str(cifar10_mini), "--labels", "50,250", "--seeds", "0,1",
                             "--mode", "slurm", "--num_gpus", "1", "--dry_run",
                             "--output_dir", str(out)])  # fmt: skip
    assert len(cmds) == 3  # 2 settings x 2 seeds, one done
    for cmd in cmds:
        assert cmd[1].endswith("job_launcher.py") and cmd[cmd.index("--mode") + 1] == "slurm"
        root = Path(overrides(cmd)["data.root"]).resolve()  # ../shared may be a symlink
        assert "--init" not in cmd and root == cifar10_mini.resolve()
    assert {overrides(c)["data.labels_per_class"] for c in cmds} == {"5", "25"}


def test_protocol_aggregate_only_and_bad_input(tmp_path, capsys):
    out = tmp_path / "proto"
    for seed, top1 in enumerate([61.0, 63.0, 62.0]):
        fake_run(out / f"daino_cifar100_400_s{seed}", "daino", 4, seed, [top1],
                 heads={"hidden": top1 + 2})  # fmt: skip
    assert cifar100_protocol.main(["--method", "daino", "--labels", "400", "--aggregate_only",
                                   "--output_dir", str(out)]) == 0  # fmt: skip
    md = (out / "results_daino_cifar100.md").read_text()
    assert "| daino | cifar100 | 400 | 3 | 62.00 ± 1.00 | 64.00 ± 1.00 | 61.1 |" in md
    assert_cli_error(capsys, cifar100_protocol.main, ["--method", "suave", "--labels", "450"],
                     r"450 labels cannot be split evenly over 100 classes")  # fmt: skip
    assert_cli_error(capsys, cifar100_protocol.main, ["--method", "suave", "--seeds", "a"],
                     r"--seeds must be a comma list")  # fmt: skip
    assert_cli_error(capsys, cifar100_protocol.main, ["--method", "nope"], r"invalid choice")


def test_protocol_dry_run_chains_ssl_pretraining_and_finetuning_per_seed(tmp_path, capsys):
    """--finetune_epochs: SSL stage, then per setting and seed pre-training -> fine-tuning."""
    out = tmp_path / "proto"
    argv = ["--method", "daino", "--ssl_epochs", "3", "--finetune_epochs", "5", "--labels", "2500"]
    cmds = commands(capsys, [*argv, "--dry_run", "--output_dir", str(out)])
    assert len(cmds) == 1 + 3 * 2 and not out.exists()
    names = [cmd[cmd.index("--name") + 1] for cmd in cmds]
    assert names == ["daino_cifar100_ssl"] + [
        n for s in "012" for n in (f"daino_cifar100_2500_s{s}", f"daino_cifar100_2500_s{s}_ft")
    ]
    ssl_ckpt = str(out / "daino_cifar100_ssl" / "checkpoints" / "last.pth")
    for pre, ft in zip(cmds[1::2], cmds[2::2]):
        assert pre[pre.index("--init") + 1] == ssl_ckpt
        pre_name = pre[pre.index("--name") + 1]
        assert ft[ft.index("--init") + 1] == str(out / pre_name / "checkpoints" / "last.pth")
        assert ft[ft.index("--config") + 1].endswith("daino/configs/cifar100_finetune.yaml")
        o_pre, o_ft = overrides(pre), overrides(ft)
        assert o_ft["train.epochs"] == "5" and o_ft["train.seed"] == o_pre["train.seed"]
        assert o_ft["data.split_seed"] == o_pre["data.split_seed"]
        assert o_ft["data.labels_per_class"] == o_pre["data.labels_per_class"] == "25"
