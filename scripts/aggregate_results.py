"""Mean ± std of several runs per setting, next to the paper's numbers (Markdown + CSV).

    python scripts/aggregate_results.py runs/suave_cifar100_400_s{0,1,2} ... \
        [--metric val_top1] [--output runs/results]

Each argument is a run directory (or its ``summary.json`` / ``metrics_epoch.csv``). A run's
value is ``--metric`` from summary.json, else the last non-empty value in metrics_epoch.csv,
else (``knn_top1``, ``linear_top1``, ``prototype_top1``) from the newest ``eval_*.json``.
``val_top1`` is the prototype classifier; the online linear heads of runs trained with
``<method>.online_heads`` (``val_top1_head_<depth>``, e.g. Suave's ``proj1``, the head the
paper's ImageNet numbers are read from) get a column each, mean ± std over the runs that have it.
Runs are grouped by setting (method, data set, labels), read from the run's config.yaml; runs
without one are grouped by their name minus a ``_s<seed>`` / ``_seed<seed>`` suffix. The spread
is the sample standard deviation (ddof=1), as reported over seeds in the paper.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.errors import UserError, run_cli  # noqa: E402

# Paper top-1 (%). CIFAR-100 (table 1): test set, mean over 3 seeds. ImageNet: ResNet-50 Suave
# from the SwAV 800-epoch checkpoint, ViT-S/16 Daino.
PAPER = {
    ("suave", "cifar100", "400"): 64.6,
    ("suave", "cifar100", "2500"): 77.0,
    ("suave", "cifar100", "10000"): 81.6,
    ("daino", "cifar100", "400"): 61.1,
    ("daino", "cifar100", "2500"): 75.2,
    ("daino", "cifar100", "10000"): 79.2,
    ("suave", "imagenet", "1%"): 66.2,
    ("suave", "imagenet", "10%"): 75.0,
    ("daino", "imagenet", "1%"): 67.1,
    ("daino", "imagenet", "10%"): 76.6,
}
SEED_SUFFIX = re.compile(r"[_-](s|seed)\d+$")
KNOWN_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


@dataclass
class Group:
    method: str
    dataset: str
    labels: str
    values: list[float] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    heads: dict[str, list[float]] = field(default_factory=dict)  # column -> values

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1); NaN for a single run."""
        return _std(self.values)

    @property
    def paper(self) -> float | None:
        return PAPER.get((self.method, _family(self.dataset), self.labels))


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def head_prefix(metric: str) -> str:
    """Columns of the online heads that go with ``metric``: val_top1 -> val_top1_head_*."""
    return f"{metric}_head_"


def head_columns(run_dir: Path, metric: str) -> list[str]:
    """The online-head columns of ``metric`` a run logged (summary.json, metrics_epoch.csv)."""
    prefix, found = head_prefix(metric), []
    summary, epoch_csv = run_dir / "summary.json", run_dir / "metrics_epoch.csv"
    if summary.is_file():
        try:
            found += [k for k in json.loads(summary.read_text()) if k.startswith(prefix)]
        except (json.JSONDecodeError, TypeError):
            pass
    if epoch_csv.is_file():
        with epoch_csv.open(newline="") as handle:
            found += [k for k in next(csv.reader(handle), []) if k.startswith(prefix)]
    return list(dict.fromkeys(found))


def _family(dataset: str) -> str:
    name = dataset.lower()
    for family in ("cifar100", "cifar10", "imagenet"):
        if family in name:
            return family
    return name


def _run_dir(path: Path) -> Path:
    if path.is_file():
        return path.parent
    if path.is_dir():
        return path
    raise UserError(f"run not found: {path}")


def read_metric(run_dir: Path, metric: str) -> float:
    """The run's final value of ``metric`` (see the module docstring for where it is looked up)."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{summary} is not valid JSON") from None
        if isinstance(data, dict) and _is_number(data.get(metric)):
            return float(data[metric])
    epoch_csv = run_dir / "metrics_epoch.csv"
    if epoch_csv.is_file():
        with epoch_csv.open(newline="") as handle:
            values = [row.get(metric, "") for row in csv.DictReader(handle)]
        values = [float(v) for v in values if _is_number(v)]
        if values:
            return values[-1]
    evaluator, _, key = metric.partition("_")
    for path in sorted(run_dir.glob("eval_*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        result = json.loads(path.read_text()).get(evaluator)
        if isinstance(result, dict) and _is_number(result.get(key)):
            return float(result[key])
    raise UserError(f"no '{metric}' in {run_dir} (summary.json, metrics_epoch.csv, eval_*.json)")


def _is_number(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _num_classes(data: dict) -> int | None:
    for name, count in KNOWN_CLASSES.items():
        if data.get("dataset") == name:
            return count
    train = Path(str(data.get("root", ""))) / str(data.get("train_split", "train"))
    if data.get("root") and train.is_dir():
        return sum(1 for p in train.iterdir() if p.is_dir())
    return None


def setting_of(run_dir: Path) -> tuple[str, str, str]:
    """(method, data set, labels) from the run's config.yaml, else from its name."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        name = SEED_SUFFIX.sub("", run_dir.name)
        return "?", "?", name
    config = yaml.safe_load(config_file.read_text()) or {}
    method = next((m for m in ("suave", "daino") if m in config), "?")
    data = config.get("data", {})
    dataset = data.get("dataset", "?")
    if dataset == "imagefolder":
        dataset = Path(str(data.get("root", "?"))).name or "?"
    per_class = data.get("labels_per_class")
    if data.get("label_list"):
        stem = Path(data["label_list"]).stem
        labels = {"1percent": "1%", "10percent": "10%"}.get(stem, stem)
    elif per_class:
        classes = _num_classes(data)
        labels = str(per_class * classes) if classes else f"{per_class}/class"
    else:
        labels = "0"
    return method, dataset, labels


def aggregate(paths: list[str | Path], metric: str = "val_top1") -> list[Group]:
    """Groups of runs with their values; runs without the metric (e.g. a self-supervised stage
    caught by a glob) are skipped with a note on stderr, and it is an error if all lack it."""
    groups: dict[tuple, Group] = {}
    skipped = []
    for path in paths:
        run_dir = _run_dir(Path(path))
        try:
            value = read_metric(run_dir, metric)
        except UserError as err:
            skipped.append(str(err))
            continue
        key = setting_of(run_dir)
        group = groups.setdefault(key, Group(*key))
        group.values.append(value)
        group.runs.append(str(run_dir))
        for column in head_columns(run_dir, metric):
            try:
                head_value = read_metric(run_dir, column)
            except UserError:  # logged but never filled in: not a value of this run
                continue
            group.heads.setdefault(column, []).append(head_value)
    if not groups:
        raise UserError(skipped[0] if len(skipped) == 1 else f"{skipped[0]} (and in all others)")
    for note in skipped:
        print(f"skipped: {note}", file=sys.stderr)
    return list(groups.values())


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _spread(values: list[float], runs: int) -> str:
    if not values:
        return "n/a"
    text = f"{_fmt(statistics.fmean(values), 2)} ± {_fmt(_std(values), 2)}"
    return text if len(values) == runs else f"{text} (n={len(values)})"


def markdown(groups: list[Group], metric: str) -> str:
    """One row per setting: the prototype classifier (``metric``), then one column per online
    head any run logged (mixed methods: n/a where a method has no such head)."""
    columns = list(dict.fromkeys(c for g in groups for c in g.heads))
    prefix = head_prefix(metric)
    head_titles = "".join(f" head {c[len(prefix) :]} |" for c in columns)
    lines = [
        f"| method | data set | labels | runs | {metric}: mean ± std (sample std, ddof=1) "
        f"|{head_titles} paper |",
        "| --- | --- | --- | ---: | ---: |" + " ---: |" * len(columns) + " ---: |",
    ]
    for g in groups:
        spread = f"{_fmt(g.mean, 2)} ± {_fmt(g.std, 2)}"
        heads = "".join(f" {_spread(g.heads.get(c, []), len(g.values))} |" for c in columns)
        lines.append(f"| {g.method} | {g.dataset} | {g.labels} | "
                     f"{len(g.values)} | {spread} |{heads} {_fmt(g.paper)} |")  # fmt: skip
    lines.append("")
    lines.append("Paper: top-1 on the full CIFAR-100 test set (mean of 3 seeds) or ImageNet val "
                 "(Suave from SwAV 800 ep); n/a where the paper has no such setting.")  # fmt: skip
    if columns:
        lines.append(f"{metric} is the prototype classifier; 'head X' the online linear head at "
                     "depth X (detached features). The paper's ImageNet Suave numbers are its "
                     "projector-layer-1 head (Table 6): compare them with head proj1.")  # fmt: skip
    return "\n".join(lines)


def write_tables(groups: list[Group], metric: str, prefix: str | Path) -> tuple[Path, Path]:
    prefix = Path(prefix)
    md_path, csv_path = prefix.with_suffix(".md"), prefix.with_suffix(".csv")
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(markdown(groups, metric) + "\n")
        with csv_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["method", "dataset", "labels", "metric", "n", "mean",
                             "std_ddof1", "paper", "values", "runs"])  # fmt: skip
            for g in groups:  # the prototype classifier, then each online head (own rows)
                paper = "" if g.paper is None else g.paper
                for name, values in [(metric, g.values), *g.heads.items()]:
                    std = _std(values)
                    std = "" if math.isnan(std) else f"{std:.4f}"
                    row = [g.method, g.dataset, g.labels, name, len(values),
                           f"{statistics.fmean(values):.4f}", std]  # fmt: skip
                    text = ";".join(f"{v:g}" for v in values)
                    writer.writerow([*row, paper if name == metric else "", text,
                                     ";".join(g.runs)])  # fmt: skip
    except OSError as err:
        raise UserError(f"cannot write {md_path}: {err.strerror}") from None
    return md_path, csv_path


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


@run_cli
def main(argv: list[str] | None = None) -> list[Group]:
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (or their summary/metrics files)")
    p.add_argument("--metric", default="val_top1")
    p.add_argument("--output", default=None, help="write <output>.md and <output>.csv")
    args = p.parse_args(argv)
    groups = aggregate(args.runs, args.metric)
    print(markdown(groups, args.metric))
    if args.output:
        md_path, csv_path = write_tables(groups, args.metric, args.output)
        print(f"wrote {md_path} and {csv_path}")
    return groups


if __name__ == "__main__":
    main(sys.argv[1:])
