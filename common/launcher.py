"""Launch Suave or Daino training on this machine (torchrun) or on a Slurm cluster (sbatch + srun).

    python job_launcher.py --mode local --num_gpus 8 --method suave \
        --script_file suave/scripts/train_10perc.sh --data_dir /path/to/imagenet --name repro
    python job_launcher.py --mode slurm --num_nodes 2 --num_gpus 8 --method suave \
        --script_file suave/scripts/finetune_10perc.sh --init runs/repro/checkpoints/last.pth

A script file holds the method's own command-line tokens, shell style (``#`` comments and
backslash-newline continuations allowed)::

    --config suave/configs/imagenet_10perc.yaml
    --init /path/to/swav_800ep_pretrain.pth.tar   # optional
    optim.base_lr=0.4 train.epochs=100                 # key.sub=value config overrides

The launcher adds ``--output_dir``/``--name``, ``data.root=<--data_dir>``, ``train.device``
(``cpu`` when ``--num_gpus 0``) and the extra overrides given on its own command line (last wins).

Local mode runs one process per GPU (or ``--num_procs`` CPU processes) with
``python -m torch.distributed.run --standalone``; a single process is started directly.
Slurm mode writes ``<output_dir>/<name>/slurm/job.sbatch`` and submits it. Each ``srun`` task
finds its place from SLURM_PROCID (global rank), SLURM_LOCALID (local rank) and the step's task
count; MASTER_ADDR/MASTER_PORT are exported by the batch script. The job asks for
``--signal=USR1@<s>`` and ``--requeue``: on the signal the training saves a checkpoint and
requeues itself, and since the job always passes ``--resume`` it continues where it stopped.
Bad input gives one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout (or site-packages when installed)
NAME_RE = re.compile(r"^\w[\w.-]*$")  # a directory and a Slurm job name
OVERRIDE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=")
OPTIONS_WITH_VALUE = ("--config", "--init")
SLURM_ONLY = ("partition", "account", "time", "qos", "constraint", "mem", "cpus_per_task")


class LauncherError(Exception):
    """Bad input: reported as one ``error: ...`` line, exit code 2."""


@dataclass
class Recipe:
    """The parsed content of a script file."""

    config: str
    init: str | None = None
    resume: bool = False
    overrides: list[str] = field(default_factory=list)


def parse_script_file(path: str | Path) -> Recipe:
    """Read a script file into a :class:`Recipe`; unknown or malformed tokens raise."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LauncherError(f"script file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise LauncherError(f"cannot read script file {path}: {err}") from None
    try:
        tokens = shlex.split(text.replace("\r\n", "\n"), comments=True)
    except ValueError as err:
        raise LauncherError(f"cannot parse script file {path}: {err}") from None
    # shlex keeps an escaped newline as a character: drop it, as a shell continuation would.
    tokens = [tok.replace("\n", "") for tok in tokens if tok.replace("\n", "")]
    values: dict[str, str] = {}
    resume, overrides = False, []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        name, eq, inline = tok.partition("=")
        if name in OPTIONS_WITH_VALUE:
            if eq:
                value = inline
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
                value, i = tokens[i + 1], i + 1
            else:
                raise LauncherError(f"option '{name}' needs a value in script file {path}")
            if name in values:
                raise LauncherError(f"option '{name}' given twice in script file {path}")
            values[name] = value
        elif tok == "--resume":
            resume = True
        elif tok.startswith("-"):
            raise LauncherError(f"unknown option '{name}' in script file {path}")
        elif OVERRIDE_RE.match(tok):
            overrides.append(tok)
        else:
            raise LauncherError(
                f"unexpected token '{tok}' in script file {path} "
                "(expected --config PATH, --init PATH, --resume or key.sub=value)"
            )
        i += 1
    if "--config" not in values:
        raise LauncherError(f"script file {path} has no --config")
    return Recipe(values["--config"], values.get("--init"), resume, overrides)


def _existing(path: str, what: str, script_file: str | Path) -> str:
    """Absolute path of ``path`` (relative to the current directory, else to the repository)."""
    for candidate in (Path(path), ROOT / path):
        if candidate.exists():
            return str(candidate.resolve())
    raise LauncherError(f"{what} not found: {path} (in script file {script_file})")


def build_method_argv(
    method: str,
    recipe: Recipe,
    output_dir: str | Path,
    name: str,
    data_dir: str | None = None,
    num_gpus: int = 0,
    extra: list[str] | tuple[str, ...] = (),
    resume: bool = False,
) -> list[str]:
    """``main_<method>.py`` followed by its arguments (paths as given, no checks)."""
    entry = ROOT / f"main_{method}.py"  # absent in a non-editable install: run the module
    argv = [str(entry)] if entry.is_file() else ["-m", f"{method}.cli"]
    argv += ["--config", recipe.config]
    argv += ["--output_dir", str(output_dir), "--name", name]
    if resume or recipe.resume:
        argv.append("--resume")
    if recipe.init:
        argv += ["--init", recipe.init]
    argv += recipe.overrides
    argv.append("train.device=" + ("cuda" if num_gpus > 0 else "cpu"))
    if data_dir is not None:
        argv.append(f"data.root={data_dir}")
    return argv + list(extra)


def render_sbatch(
    method_argv: list[str],
    name: str,
    log_dir: str | Path,
    workdir: str | Path,
    num_nodes: int = 1,
    tasks_per_node: int = 1,
    num_gpus: int = 0,
    signal_seconds: int = 120,
    python: str = sys.executable,
    partition: str | None = None,
    account: str | None = None,
    time: str | None = None,
    qos: str | None = None,
    constraint: str | None = None,
    mem: str | None = None,
    cpus_per_task: int | None = None,
) -> str:
    """The text of the batch script (pure function)."""
    directives = [
        f"--job-name={name}",
        f"--nodes={num_nodes}",
        f"--ntasks-per-node={tasks_per_node}",
    ]
    if num_gpus > 0:
        directives.append(f"--gres=gpu:{num_gpus}")
    optional = {"partition": partition, "account": account, "time": time, "qos": qos}
    optional.update(constraint=constraint, mem=mem, **{"cpus-per-task": cpus_per_task})
    directives += [f"--{key}={value}" for key, value in optional.items() if value is not None]
    if signal_seconds > 0:
        directives.append(f"--signal=USR1@{signal_seconds}")
    directives += [
        "--requeue",
        "--open-mode=append",
        f"--output={Path(log_dir) / '%j.out'}",
        f"--chdir={workdir}",
    ]
    srun = ["srun", "--kill-on-bad-exit=1"]
    if cpus_per_task is not None:  # srun no longer inherits --cpus-per-task from sbatch (22.05+)
        srun.append(f"--cpus-per-task={cpus_per_task}")
    command = shlex.join([*srun, python, *method_argv])
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), ""]
    lines += [
        "# Written by job_launcher.py. Each srun task derives its global rank from SLURM_PROCID,",
        "# its local rank from SLURM_LOCALID and the world size from the step's task count.",
        "set -eu",
        "unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE  # never inherit torchrun variables",
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
        'echo "[job_launcher] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}):'
        + ' $SLURM_NTASKS tasks on $SLURM_JOB_NODELIST, master $MASTER_ADDR:$MASTER_PORT"',
        command,
        "",
    ]
    return "\n".join(lines)


def launch_local(method_argv: list[str], nproc: int, python: str = sys.executable) -> int:
    """Run the method here, streaming its output; returns its exit code."""
    if nproc == 1:  # no torchrun: the method's own one-line errors reach the user unchanged
        cmd = [python, *method_argv]
    else:
        cmd = [python, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node", str(nproc), *method_argv]
    print("[job_launcher] " + shlex.join(cmd), flush=True)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130


def launch_slurm(script: str, script_path: str | Path, dry_run: bool = False) -> int:
    """Write the batch script and submit it (``dry_run``: print it, write and submit nothing)."""
    script_path = Path(script_path)
    if dry_run:
        print(f"# {script_path} (dry run: not written, not submitted)")
        print(script, end="")
        return 0
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise LauncherError("sbatch not found: install Slurm or use --mode local")
    script_path.parent.mkdir(parents=True, exist_ok=True)
    script_path.write_text(script)
    out = subprocess.run([sbatch, "--parsable", str(script_path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise LauncherError("sbatch failed: " + " ".join(out.stderr.split()))
    job_id = out.stdout.strip().split(";")[0]
    print(f"submitted job {job_id}: {script_path}, log {script_path.parent / (job_id + '.out')}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise LauncherError(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", required=True, choices=("local", "slurm"))
    p.add_argument("--method", required=True, help="suave or daino")
    p.add_argument("--script_file", required=True, help="recipe, e.g. suave/scripts/*.sh")
    p.add_argument("--data_dir", default=None, help="dataset root (sets data.root)")
    p.add_argument("--init", default=None, help="initial checkpoint (e.g. for fine-tune scripts)")
    p.add_argument("--name", default=None, help="run name (default: <method>_<script stem>)")
    p.add_argument("--output_dir", default="runs", help="runs go to <output_dir>/<name>")
    p.add_argument("--num_gpus", type=int, default=0, help="GPUs per node; 0 = CPU")
    p.add_argument("--num_nodes", type=int, default=1)
    p.add_argument("--num_procs", type=int, default=None, help="CPU processes per node")
    p.add_argument("--signal_seconds", type=int, default=120, help="USR1 this long before end")
    p.add_argument("--dry_run", action="store_true", help="print what would run, run nothing")
    for opt in SLURM_ONLY:
        p.add_argument(f"--{opt}", type=int if opt == "cpus_per_task" else str, default=None)
    p.add_argument("overrides", nargs="*", help="extra config overrides key.sub=value")
    return p.parse_intermixed_args(argv)


def check_args(args: argparse.Namespace, methods: Mapping[str, type]) -> None:
    if args.method not in methods:
        raise LauncherError(f"unknown method '{args.method}' (choose from {', '.join(methods)})")
    for opt in ("num_gpus", "signal_seconds"):
        if getattr(args, opt) < 0:
            raise LauncherError(f"--{opt} must be >= 0")
    for opt in ("num_nodes", "num_procs", "cpus_per_task"):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            raise LauncherError(f"--{opt} must be >= 1")
    if args.num_gpus > 0 and args.num_procs not in (None, args.num_gpus):
        raise LauncherError("--num_procs is for CPU runs; with GPUs it is one process per GPU")
    if args.mode == "local":
        if args.num_nodes != 1:
            raise LauncherError("--mode local runs on one node; use --mode slurm for --num_nodes")
        given = [opt for opt in SLURM_ONLY if getattr(args, opt) is not None]
        if given:
            raise LauncherError(f"--{given[0]} only applies to --mode slurm")
    if args.name is not None and not NAME_RE.match(args.name):
        raise LauncherError(f"bad --name '{args.name}' (use letters, digits, '_', '-', '.')")
    for item in args.overrides:
        if not OVERRIDE_RE.match(item):
            raise LauncherError(f"bad override '{item}' (expected key.sub=value)")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise LauncherError(f"data directory not found: {args.data_dir}")


def validate_config(config_cls: type, config: str, overrides: list[str]) -> None:
    """Load the recipe with every override as the run will: a mistyped key fails here, in one
    line, before anything is started or submitted (``--dry_run`` included)."""
    from common.config import load_config
    from common.errors import UserError

    try:
        load_config(config_cls, config, overrides)
    except UserError as err:
        raise LauncherError(f"{config}: {err}") from None


def main(argv: list[str] | None, methods: Mapping[str, type]) -> int:
    """``methods``: {name: Method class} of the methods with a ``main_<name>.py`` (the registry
    hands them in; ``common`` knows none)."""
    args = parse_args(argv)
    check_args(args, methods)
    recipe = parse_script_file(args.script_file)
    recipe.config = _existing(recipe.config, "config file", args.script_file)
    if args.init:  # the command line wins over the script file
        if not Path(args.init).is_file():
            raise LauncherError(f"init checkpoint not found: {args.init}")
        recipe.init = str(Path(args.init).resolve())
    if recipe.init:
        recipe.init = _existing(recipe.init, "init checkpoint", args.script_file)
    name = args.name or re.sub(r"[^\w.-]", "_", f"{args.method}_{Path(args.script_file).stem}")
    output_dir = Path(args.output_dir).resolve()
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    tasks = args.num_gpus or args.num_procs or 1
    method_overrides = [*recipe.overrides, *args.overrides]
    if data_dir is not None:
        method_overrides.append(f"data.root={data_dir}")
    validate_config(methods[args.method].config_cls, recipe.config, method_overrides)
    if args.mode == "local":
        argv = build_method_argv(
            args.method, recipe, output_dir, name, data_dir, args.num_gpus, args.overrides
        )
        if args.dry_run:
            print(shlex.join([sys.executable, *argv]) + f"  # x{tasks} process(es)")
            return 0
        return launch_local(argv, tasks)
    argv = build_method_argv(
        args.method, recipe, output_dir, name, data_dir, args.num_gpus, args.overrides, True
    )
    slurm_dir = output_dir / name / "slurm"
    script = render_sbatch(
        argv, name, slurm_dir, Path.cwd(), args.num_nodes, tasks, args.num_gpus,
        args.signal_seconds, sys.executable,
        **{opt: getattr(args, opt) for opt in SLURM_ONLY},
    )  # fmt: skip
    return launch_slurm(script, slurm_dir / "job.sbatch", args.dry_run)


def cli(argv: list[str] | None, methods: Mapping[str, type]) -> int:
    try:
        return main(argv, methods)
    except LauncherError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
