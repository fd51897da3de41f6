"""job_launcher.py: script files, sbatch rendering, local/slurm launch and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import job_launcher as jl
from registry import LAUNCHABLE
from tests.helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def recipe(tmp_path) -> Path:
    write(tmp_path / "cfg.yaml", "train:\n  epochs: 1\n")
    return write(tmp_path / "recipe.sh", f"--config {tmp_path / 'cfg.yaml'} train.epochs=2\n")


def launcher(*args, cwd=ROOT, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, str(ROOT / "job_launcher.py"), *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


# ---------------------------------------------------------------- script files


def test_parse_comments_and_continuations(tmp_path):
    path = write(
        tmp_path / "train.sh",
        "# Suave, 10% labels\n"
        "--config suave/configs/x.yaml \\\n"
        "  --init '/ckpt dir/swav.pth' # the SwAV weights \\\n"
        "  optim.base_lr=0.4 \\\n"
        '  data.name="a # b"\\\n'
        "tail --resume\n"
        "\n"
        "train.epochs=100\n",
    )
    recipe = jl.parse_script_file(path)
    assert recipe.config == "suave/configs/x.yaml"
    assert recipe.init == "/ckpt dir/swav.pth"
    assert recipe.resume
    assert recipe.overrides == ["optim.base_lr=0.4", "data.name=a # btail", "train.epochs=100"]


def test_parse_equals_form_and_crlf(tmp_path):
    path = write(tmp_path / "r.sh", "--config=c.yaml\r\nmodel.init=x.pth \\\r\n  train.seed=1\r\n")
    recipe = jl.parse_script_file(path)
    assert (recipe.config, recipe.overrides) == ("c.yaml", ["model.init=x.pth", "train.seed=1"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("--config c.yaml --foo 3", r"unknown option '--foo' in script file .*r.sh"),
        ("--config c.yaml --name=x", r"unknown option '--name'"),
        ("--config c.yaml python", r"unexpected token 'python'"),
        ("--config c.yaml 1bad.key=3", r"unexpected token '1bad.key=3'"),
        ("train.epochs=1", r"has no --config"),
        ("--config", r"'--config' needs a value"),
        ("--config a.yaml --config b.yaml", r"given twice"),
        ("--config 'a.yaml", r"cannot parse script file .*No closing quotation"),
    ],
)
def test_parse_errors(tmp_path, text, message):
    with pytest.raises(jl.LauncherError, match=message):
        jl.parse_script_file(write(tmp_path / "r.sh", text + "\n"))


def test_missing_script_file(tmp_path):
    with pytest.raises(jl.LauncherError, match=r"script file not found: .*nope.sh"):
        jl.parse_script_file(tmp_path / "nope.sh")


# ---------------------------------------------------------------- method argv


def test_build_method_argv_order():
    recipe = jl.Recipe("c.yaml", init="w.pth", overrides=["train.epochs=5"])
    argv = jl.build_method_argv(
        "daino", recipe, "/runs", "exp", "/data", num_gpus=0, extra=["train.epochs=7"]
    )
    assert argv[0] == str(ROOT / "main_daino.py")
    assert argv[1:] == [
        "--config", "c.yaml", "--output_dir", "/runs", "--name", "exp", "--init", "w.pth",
        "train.epochs=5", "train.device=cpu", "data.root=/data", "train.epochs=7",
    ]  # fmt: skip
    gpu = jl.build_method_argv("suave", recipe, "/runs", "exp", num_gpus=8, resume=True)
    assert "train.device=cuda" in gpu and "--resume" in gpu
    assert not any(a.startswith("data.root=") for a in gpu)


# ---------------------------------------------------------------- sbatch rendering


def sbatch_lines(script: str) -> list[str]:
    return [ln[len("#SBATCH ") :] for ln in script.splitlines() if ln.startswith("#SBATCH ")]


def test_render_sbatch_gpu_multi_node():
    argv = ["/repo/main_daino.py", "--config", "c.yaml", "--name", "my_run", "data.root=/my data"]
    script = jl.render_sbatch(
        argv, "my_run", "/runs/x/slurm", "/repo", num_nodes=2, tasks_per_node=8, num_gpus=8,
        signal_seconds=300, python="/env/bin/python", partition="gpu", account="abc",
        time="2-00:00:00", qos="high", constraint="a100", mem="0", cpus_per_task=10,
    )  # fmt: skip
    directives = sbatch_lines(script)
    assert directives == [
        "--job-name=my_run", "--nodes=2", "--ntasks-per-node=8", "--gres=gpu:8",
        "--partition=gpu", "--account=abc", "--time=2-00:00:00", "--qos=high",
        "--constraint=a100", "--mem=0", "--cpus-per-task=10", "--signal=USR1@300", "--requeue",
        "--open-mode=append", "--output=/runs/x/slurm/%j.out", "--chdir=/repo",
    ]  # fmt: skip
    assert script.startswith("#!/bin/bash\n")
    srun = [ln for ln in script.splitlines() if ln.startswith("srun ")]
    assert srun == [
        "srun --kill-on-bad-exit=1 --cpus-per-task=10 /env/bin/python /repo/main_daino.py "
        "--config c.yaml --name my_run 'data.root=/my data'"
    ]
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1' in script
    assert "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))" in script


def test_render_sbatch_cpu_minimal_and_ranks():
    script = jl.render_sbatch(["m.py"], "n", "/l", "/w", tasks_per_node=2, signal_seconds=0)
    directives = sbatch_lines(script)
    assert "--ntasks-per-node=2" in directives and "--nodes=1" in directives
    assert not any(d.startswith(("--gres", "--signal", "--partition", "--mem", "--time"))
                   for d in directives)  # fmt: skip
    assert "--requeue" in directives and "--open-mode=append" in directives
    # Ranks come from srun (SLURM_PROCID / SLURM_LOCALID) inside the entry point; the batch script
    # must never set RANK (least of all from the local id) nor leak torchrun variables.
    body = "\n".join(ln for ln in script.splitlines() if not ln.startswith("#"))
    assert "SLURM_LOCALID" not in body and "SLURM_PROCID" not in body
    assert "export RANK" not in body and "export LOCAL_RANK" not in body
    assert "unset RANK WORLD_SIZE LOCAL_RANK" in body
    assert "--cpus-per-task" not in body


# ---------------------------------------------------------------- command line


def test_dry_run_slurm(tmp_path, recipe):
    data = (tmp_path / "data").resolve()
    data.mkdir()
    proc = launcher(
        "--mode", "slurm", "--method", "suave", "--script_file", recipe, "--data_dir", data,
        "--name", "exp1", "--num_nodes", "2", "--num_gpus", "4", "--output_dir", tmp_path / "runs",
        "--partition", "p1", "--signal_seconds", "90", "--dry_run", "optim.base_lr=0.1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"{tmp_path / 'runs' / 'exp1' / 'slurm' / 'job.sbatch'}" in out.splitlines()[0]
    for directive in ("--nodes=2", "--ntasks-per-node=4", "--gres=gpu:4", "--partition=p1",
                      "--signal=USR1@90", "--job-name=exp1", "--requeue"):  # fmt: skip
        assert f"#SBATCH {directive}\n" in out
    srun = next(ln for ln in out.splitlines() if ln.startswith("srun "))
    assert str(ROOT / "main_suave.py") in srun
    assert srun.endswith(f"train.device=cuda data.root={data} optim.base_lr=0.1")
    assert "--resume" in srun and f"--output_dir {tmp_path / 'runs'} --name exp1" in srun
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_dry_run_local(tmp_path, recipe):
    proc = launcher(
        "--mode", "local", "--method", "daino", "--script_file", recipe, "--num_procs", "2",
        "--output_dir", tmp_path / "runs", "--dry_run",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert str(ROOT / "main_daino.py") in line and "--name daino_recipe" in line
    assert "train.epochs=2 train.device=cpu" in line and line.endswith("# x2 process(es)")
    assert "--resume" not in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "swav"], r"unknown method 'swav'"),
        (["--mode", "cloud"], r"argument --mode: invalid choice: 'cloud'"),
        (["--bogus"], r"unrecognized arguments: --bogus"),
        (["--num_gpus", "two"], r"argument --num_gpus: invalid int value: 'two'"),
        (["--num_gpus", "-1"], r"--num_gpus must be >= 0"),
        (["--num_procs", "0"], r"--num_procs must be >= 1"),
        (["--num_gpus", "2", "--num_procs", "3"], r"--num_procs is for CPU runs"),
        (["--num_nodes", "2"], r"--mode local runs on one node"),
        (["--partition", "gpu"], r"--partition only applies to --mode slurm"),
        (["--name", "a/b"], r"bad --name 'a/b'"),
        (["--name", "my run"], r"bad --name 'my run'"),
        (["notanoverride"], r"bad override 'notanoverride'"),
        (["--data_dir", "/no/such/dir"], r"data directory not found: /no/such/dir"),
    ],
)
def test_bad_command_line(recipe, args, message):
    base = {"--mode": "local", "--method": "suave", "--script_file": str(recipe)}
    for key in [a for a in args if a in base]:
        base.pop(key)
    proc = launcher(*[x for kv in base.items() for x in kv], *args, "--dry_run")
    assert_one_line_error(proc, message)


def test_bad_script_files(tmp_path, recipe):
    common_args = ["--mode", "slurm", "--method", "daino", "--dry_run", "--script_file"]
    proc = launcher(*common_args, tmp_path / "missing.sh")
    assert_one_line_error(proc, r"script file not found: .*missing.sh")
    bad = write(tmp_path / "bad.sh", f"--config {tmp_path / 'cfg.yaml'}\n--foo 1\n")
    assert_one_line_error(launcher(*common_args, bad), r"unknown option '--foo' in script file")
    nocfg = write(tmp_path / "nocfg.sh", "--config nope/cfg.yaml\n")
    assert_one_line_error(launcher(*common_args, nocfg), r"config file not found: nope/cfg.yaml")
    noinit = write(tmp_path / "noinit.sh", f"--config {tmp_path / 'cfg.yaml'} --init /x/ckpt.pth")
    assert_one_line_error(launcher(*common_args, noinit), r"init checkpoint not found: /x/ckpt")


def test_sbatch_missing(tmp_path, recipe):
    bindir = tmp_path / "bin"  # a PATH with python but without any Slurm command
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    env = dict(os.environ, PATH=str(bindir))
    args = ["--mode", "slurm", "--method", "suave", "--script_file", recipe]
    proc = launcher(*args, "--output_dir", tmp_path / "runs", env=env)
    assert_one_line_error(proc, r"^error: sbatch not found: install Slurm or use --mode local$")
    assert launcher(*args, "--dry_run", env=env).returncode == 0  # dry runs need no Slurm


def test_launch_slurm_with_fake_sbatch(tmp_path, monkeypatch):
    fake = write(tmp_path / "bin" / "sbatch", "#!/bin/sh\necho \"$@\" > \"$(dirname $0)/args\"\n"
                 "echo '4242;cluster'\n")  # fmt: skip
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    target = tmp_path / "runs" / "exp" / "slurm" / "job.sbatch"
    assert jl.launch_slurm("#!/bin/bash\necho hi\n", target) == 0
    assert target.read_text() == "#!/bin/bash\necho hi\n"
    assert (fake.parent / "args").read_text().split() == ["--parsable", str(target)]
    failing = write(tmp_path / "bin" / "sbatch", "#!/bin/sh\necho 'sbatch: error: bad qos' >&2\n"
                    "exit 1\n")  # fmt: skip
    failing.chmod(0o755)
    with pytest.raises(jl.LauncherError, match="sbatch failed: sbatch: error: bad qos"):
        jl.launch_slurm("#!/bin/bash\n", target)


def test_launch_local_single_and_torchrun(monkeypatch):
    calls = []
    monkeypatch.setattr(jl.subprocess, "call", lambda cmd: calls.append(cmd) or 3)
    assert jl.launch_local(["m.py", "a=1"], 1, python="py") == 3
    assert jl.launch_local(["m.py", "a=1"], 2, python="py") == 3
    assert calls[0] == ["py", "m.py", "a=1"]
    assert calls[1] == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "m.py", "a=1"
    ]  # fmt: skip


def test_local_mode_returns_child_exit_code(tmp_path, recipe, monkeypatch):
    """A real local run through a stand-in entry point (independent of main_suave.py)."""
    fake_root = tmp_path / "repo"
    write(fake_root / "main_suave.py",
          "import os, sys\nprint('ARGS', sys.argv[1:], 'RANK', os.environ.get('RANK'))\n"
          "sys.exit(5 if 'train.seed=5' in sys.argv else 0)\n")  # fmt: skip
    monkeypatch.setattr(jl, "ROOT", fake_root)
    args = ["--mode", "local", "--method", "suave", "--script_file", str(recipe)]
    assert jl.cli([*args, "--output_dir", str(tmp_path / "runs")], LAUNCHABLE) == 0
    # a real config key (the launcher now checks keys before it runs anything)
    assert jl.cli([*args, "--output_dir", str(tmp_path / "runs"), "train.seed=5"], LAUNCHABLE) == 5


def test_sbatch_script_is_valid_bash(tmp_path):
    script = jl.render_sbatch(["m.py", "x=1"], "n", tmp_path, tmp_path, tasks_per_node=2)
    path = write(tmp_path / "job.sbatch", script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


@pytest.mark.parametrize(
    "script", sorted(ROOT.glob("*/scripts/*.sh")), ids=lambda p: f"{p.parent.parent.name}/{p.name}"
)
def test_shipped_recipe_files_parse_and_load(script):
    """Every recipe file parses, names an existing config, and that config validates."""
    from common.config import load_config

    method = script.parent.parent.name
    recipe = jl.parse_script_file(script)
    assert (ROOT / recipe.config).is_file() and recipe.config.startswith(f"{method}/configs/")
    if method == "suave":
        from suave.method import SuaveRunConfig as run_config
    else:
        from daino.method import DainoRunConfig as run_config
    load_config(run_config, ROOT / recipe.config, recipe.overrides)
