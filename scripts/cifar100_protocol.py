"""The CIFAR-100 protocol in one command: 400 / 2500 / 10000 labels x seeds 0, 1, 2, then the table.

    python scripts/cifar100_protocol.py --method suave                      # here, one by one
    python scripts/cifar100_protocol.py --method daino --ssl_epochs 400     # DINO stage first
    python scripts/cifar100_protocol.py --method suave --mode slurm --num_gpus 1
    python scripts/cifar100_protocol.py --method suave --dry_run            # print the commands

Each setting is ``main_<method>.py --config <method>/configs/cifar100_<labels>.yaml`` with
``data.labels_per_class=N data.split_seed=S train.seed=S``, in ``<output_dir>/<method>_<data>_
<labels>_s<S>``. ``--ssl_epochs E`` first pre-trains without labels (Suave with zero labels is
SwAV, Daino is DINO; ``data.labels_per_class=0``, config ``cifar100_ssl.yaml``) and starts every
run from its checkpoint (``model.init``, the Suave projector too). The stage uses no labels, so
one run (seed 0) serves all settings and seeds. ``--dataset cifar10|imagefolder`` (with
``--data_root``) runs the same protocol on another data set; ``--labels`` counts all labels,
split evenly over the classes.

``--finetune_epochs E`` adds, per setting and seed, the semi-supervised fine-tuning stage
(``cifar100_finetune.yaml``, run ``<run>_ft`` from the run's ``last.pth``); the table then
reports the fine-tuned runs. SSL stage -> pre-training -> fine-tuning, as in the paper.

Runs whose ``summary.json`` exists are skipped and interrupted ones resumed, so the command can
simply be repeated. ``--mode direct`` runs ``main_<method>.py`` here; ``local`` / ``slurm`` go
through ``job_launcher.py``. Slurm jobs run asynchronously: the first call submits the
self-supervised stage, the next (once it finished) the runs, and ``--aggregate_only`` the table.
Then ``<output_dir>/results_<method>_<data>.md`` / ``.csv``: mean ± sample std next to the paper,
of the prototype classifier and of every online linear head (the recipes train them).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.errors import UserError, run_cli  # noqa: E402
from registry import LAUNCHABLE  # noqa: E402
from scripts.aggregate_results import aggregate, markdown, write_tables  # noqa: E402

CLASSES = {"cifar100": 100, "cifar10": 10}
DEFAULT_ROOT = {"cifar100": "data/cifar100", "cifar10": "data/cifar10"}


@dataclass
class Run:
    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    init: str | None = None

    def run_dir(self, output_dir: Path) -> Path:
        return output_dir / self.name


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be a comma list of integers, got {text!r}") from None
    if not values:
        raise UserError(f"{what} is empty")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("--method", required=True, choices=tuple(LAUNCHABLE))
    p.add_argument("--dataset", default="cifar100", choices=("cifar100", "cifar10", "imagefolder"))
    p.add_argument("--data_root", default=None, help="data root (imagefolder: train/ and val/)")
    p.add_argument("--labels", default="400,2500,10000", help="total labels per setting")
    p.add_argument("--labels_per_class", default=None, help="instead of --labels, e.g. 4,25,100")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--config", default=None, help="recipe for every setting (default: per labels)")
    p.add_argument("--ssl_epochs", type=int, default=0, help="self-supervised stage (0: none)")
    p.add_argument("--ssl_config", default=None, help="default <method>/configs/cifar100_ssl.yaml")
    p.add_argument("--ssl_init", default=None, help="use this checkpoint instead of a stage run")
    p.add_argument(
        "--finetune_epochs",
        type=int,
        default=0,
        help="semi-supervised fine-tuning of every run (0: none; the paper: 5)",
    )
    p.add_argument(
        "--finetune_config", default=None, help="default <method>/configs/cifar100_finetune.yaml"
    )
    p.add_argument("--mode", default="direct", choices=("direct", "local", "slurm"))
    p.add_argument("--num_gpus", type=int, default=0, help="job_launcher --num_gpus")
    p.add_argument("--launcher_args", default="", help="more job_launcher options, one string")
    p.add_argument("--output_dir", default="runs", help="runs and the results table go here")
    p.add_argument("--metric", default="val_top1", help="what the table aggregates")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--aggregate_only", action="store_true", help="only build the table")
    p.add_argument("overrides", nargs="*", help="key.sub=value for every run")
    args = p.parse_intermixed_args(argv)
    if args.ssl_epochs < 0 or args.finetune_epochs < 0:
        raise UserError("--ssl_epochs and --finetune_epochs must be >= 0")
    if args.ssl_epochs and args.ssl_init:
        raise UserError("pass --ssl_epochs or --ssl_init, not both")
    for item in args.overrides:
        if "=" not in item or item.startswith("-"):
            raise UserError(f"bad override '{item}' (expected key.sub=value)")
    args.seeds = _int_list(args.seeds, "--seeds")
    return args


def num_classes(args) -> int:
    if args.dataset in CLASSES:
        return CLASSES[args.dataset]
    if not args.data_root:
        raise UserError("--dataset imagefolder needs --data_root")
    train = Path(args.data_root) / "train"
    if not train.is_dir():
        raise UserError(f"data directory not found: {train}")
    count = sum(1 for p in train.iterdir() if p.is_dir())
    if not count:
        raise UserError(f"data directory {train} has no class sub-folders")
    return count


def settings(args) -> list[tuple[str, int]]:
    """(label tag, labels per class) of every setting."""
    if args.labels_per_class:
        per_class = _int_list(args.labels_per_class, "--labels_per_class")
        classes = num_classes(args)
        return [(str(n * classes), n) for n in per_class]
    classes = num_classes(args)
    out = []
    for total in _int_list(args.labels, "--labels"):
        if total % classes or total < classes:
            raise UserError(f"{total} labels cannot be split evenly over {classes} classes")
        out.append((str(total), total // classes))
    return out


def _config(path: str | None, fallbacks: list[str]) -> str:
    candidates = [path] if path else fallbacks
    for candidate in candidates:
        for full in (Path(candidate), ROOT / candidate):
            if full.is_file():
                return str(full.resolve())
    raise UserError(f"config file not found: {candidates[0]}")


def data_overrides(args) -> list[str]:
    """Absolute data root: the runs start in the repository, the user maybe elsewhere."""
    root = Path(args.data_root).resolve() if args.data_root else ROOT / DEFAULT_ROOT[args.dataset]
    return [f"data.dataset={args.dataset}", f"data.root={root}"]


def plan(args) -> tuple[Run | None, list[Run], Path]:
    """The self-supervised run (or None) and the semi-supervised runs, in order: per setting and
    seed the pre-training run, then (``--finetune_epochs``) its fine-tuning run."""
    output_dir = Path(args.output_dir).resolve()
    tag = args.dataset if args.dataset != "imagefolder" else Path(args.data_root).name
    cfg_dir = f"{args.method}/configs"
    base = [*data_overrides(args), *args.overrides]
    ssl = None
    init = str(Path(args.ssl_init).resolve()) if args.ssl_init else None
    if args.ssl_epochs:
        config = _config(args.ssl_config, [f"{cfg_dir}/cifar100_ssl.yaml",
                                           f"{cfg_dir}/cifar100_2500.yaml"])  # fmt: skip
        ssl = Run(f"{args.method}_{tag}_ssl", config, [*base, "data.labels_per_class=0",
                  "train.batch_size_labeled=0", f"train.epochs={args.ssl_epochs}",
                  "train.seed=0"])  # fmt: skip
        init = str(ssl.run_dir(output_dir) / "checkpoints" / "last.pth")
    runs = []
    for label_tag, per_class in settings(args):
        config = _config(args.config, [f"{cfg_dir}/cifar100_{label_tag}.yaml",
                                       f"{cfg_dir}/cifar100_2500.yaml"])  # fmt: skip
        for seed in args.seeds:
            extra = [*base, f"data.labels_per_class={per_class}", f"data.split_seed={seed}",
                     f"train.seed={seed}"]  # fmt: skip
            if init and args.method == "suave":
                extra.append("model.init_projector=true")
            pre = Run(f"{args.method}_{tag}_{label_tag}_s{seed}", config, extra, init)
            runs.append(pre)
            if args.finetune_epochs:
                ft_config = _config(args.finetune_config, [f"{cfg_dir}/cifar100_finetune.yaml"])
                ft_extra = [*base, f"data.labels_per_class={per_class}",
                            f"data.split_seed={seed}", f"train.seed={seed}",
                            f"train.epochs={args.finetune_epochs}"]  # fmt: skip
                ft_init = str(pre.run_dir(output_dir) / "checkpoints" / "last.pth")
                runs.append(Run(f"{pre.name}_ft", ft_config, ft_extra, ft_init))
    return ssl, runs, output_dir


def reported(runs: list[Run]) -> list[Run]:
    """The runs of the table: the fine-tuned ones when the protocol fine-tunes."""
    tuned = [run for run in runs if run.name.endswith("_ft")]
    return tuned or runs


def is_done(run_dir: Path) -> bool:
    """Finished: a summary without the preemption mark, and a final checkpoint."""
    summary = run_dir / "summary.json"
    if not summary.is_file() or not (run_dir / "checkpoints" / "last.pth").exists():
        return False
    try:
        return not json.loads(summary.read_text()).get("preempted", False)
    except (json.JSONDecodeError, AttributeError):
        return False


def command(run: Run, args, output_dir: Path) -> tuple[list[str], Path | None]:
    """The command line of one run, and the job_launcher script file it needs (if any)."""
    run_dir = run.run_dir(output_dir)
    resume = ["--resume"] if (run_dir / "checkpoints" / "last.pth").exists() else []
    init = ["--init", run.init] if run.init else []
    if args.mode == "direct":
        cmd = [sys.executable, str(ROOT / f"main_{args.method}.py"), "--config", run.config]
        cmd += ["--output_dir", str(output_dir), "--name", run.name, *resume, *init]
        return cmd + run.overrides, None
    script = output_dir / "scripts" / f"{Path(run.config).stem}.sh"
    cmd = [sys.executable, str(ROOT / "job_launcher.py"), "--mode", args.mode, "--method",
           args.method, "--script_file", str(script), "--output_dir", str(output_dir),
           "--name", run.name, "--num_gpus", str(args.num_gpus), *init]  # fmt: skip
    cmd += shlex.split(args.launcher_args)
    return cmd + run.overrides, script


def execute(run: Run, args, output_dir: Path) -> None:
    cmd, script = command(run, args, output_dir)
    if script is not None:
        text = f"# written by scripts/cifar100_protocol.py\n--config {shlex.quote(run.config)}\n"
        if args.dry_run:
            print(f"# {script}: --config {run.config}")
        else:
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text(text)
    print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0:
        raise UserError(f"run {run.name} failed (exit code {code}); fix it and run this again")


def results(args, runs: list[Run], output_dir: Path) -> None:
    finished = [run.run_dir(output_dir) for run in runs if is_done(run.run_dir(output_dir))]
    if not finished:
        raise UserError(f"no finished runs in {output_dir} to aggregate yet")
    groups = aggregate(finished, args.metric)
    tag = args.dataset if args.dataset != "imagefolder" else Path(args.data_root).name
    md_path, csv_path = write_tables(groups, args.metric, output_dir / f"results_{args.method}_"
                                     f"{tag}")  # fmt: skip
    print(markdown(groups, args.metric))
    missing = len(runs) - len(finished)
    print(
        f"wrote {md_path} and {csv_path}" + (f" ({missing} runs not finished)" if missing else "")
    )


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ssl, runs, output_dir = plan(args)
    if args.aggregate_only:
        results(args, reported(runs), output_dir)
        return 0
    if ssl is not None and not is_done(ssl.run_dir(output_dir)):
        execute(ssl, args, output_dir)
        if args.mode == "slurm" and not args.dry_run:
            print("submitted the self-supervised stage: run this command again once it finished")
            return 0
    pending = [run for run in runs if not is_done(run.run_dir(output_dir))]
    for run in runs:
        if run not in pending:
            print(f"# {run.name}: done, skipped")
    for run in pending:
        if (args.mode == "slurm" and not args.dry_run and run.name.endswith("_ft")
                and not is_done(Path(run.init).parents[1])):  # fmt: skip
            print(f"# {run.name}: waits for its pre-training run; run this command again later")
            continue
        execute(run, args, output_dir)
    if args.dry_run:
        return 0
    if args.mode == "slurm":
        print("submitted; build the table with --aggregate_only once the jobs finished")
        return 0
    results(args, reported(runs), output_dir)
    return 0


if __name__ == "__main__":
    main(sys.argv[1:])
