"""End-to-end Slurm: a real one-node cluster on this machine (scripts/slurm_local_cluster.sh).

Run with ``pytest -m slurm tests/test_slurm_cluster.py`` (needs root; installs slurm-wlm + munge
with apt if missing, skips if that is impossible). Jobs go through ``job_launcher.py --mode
slurm``; the first two tests use a stand-in entry point so they only test the launcher + Slurm
wiring, the last ones run the real ``main_suave.py`` on a few CIFAR-10 images.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

import job_launcher as jl
from registry import LAUNCHABLE

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm_local_cluster.sh"
TINY_DATA = ROOT.parent / "shared" / "data" / "cifar10-mini"

# A stand-in for main_<method>.py: reports what Slurm gave this task, and on SIGUSR1 (what the
# batch script's --signal sends) rank 0 requeues the job, as the real entry points do. The
# override train.seed=17 (a real config key: the launcher validates keys) asks it to wait.
STAND_IN = """
import json, os, signal, subprocess, sys, time
keys = ["SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS", "MASTER_ADDR",
        "MASTER_PORT", "SLURM_RESTART_COUNT", "RANK", "OMP_NUM_THREADS"]
info = {k: os.environ.get(k) for k in keys}
info["argv"] = sys.argv[1:]
print("TASK " + json.dumps(info), flush=True)
if "train.seed=17" in sys.argv and not os.environ.get("SLURM_RESTART_COUNT"):
    def on_usr1(signum, frame):
        print("USR1 rank " + os.environ["SLURM_PROCID"], flush=True)
        if os.environ["SLURM_PROCID"] == "0":
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True)
    signal.signal(signal.SIGUSR1, on_usr1)
    print("READY", flush=True)
    for _ in range(600):
        time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (apt-get, /etc/slurm, daemons)")
    was_running = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode
    proc = subprocess.run(
        ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=600
    )
    if proc.returncode == 4:
        pytest.skip(f"cannot install Slurm here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield
    if was_running != 0:  # leave a cluster that was already up as we found it
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)


def job_field(job_id: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    match = re.search(rf"\b{field}=(\S+)", out.stdout)
    return match.group(1) if match else ""


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_done(job_id: str, timeout: float) -> str:
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
    return wait_for(
        lambda: (s := job_field(job_id, "JobState")) in final and s, timeout, f"job {job_id}"
    )


def submit(capsys, argv: list[str]) -> str:
    assert jl.cli(argv, LAUNCHABLE) == 0
    out = capsys.readouterr().out
    return re.search(r"submitted job (\d+)", out).group(1)


def tasks(log: Path) -> list[dict]:
    text = log.read_text() if log.exists() else ""
    return [json.loads(ln[5:]) for ln in text.splitlines() if ln.startswith("TASK ")]


@pytest.fixture()
def stand_in_repo(tmp_path, monkeypatch):
    """A repository root whose main_suave.py is the stand-in (job_launcher points at it)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "main_suave.py").write_text(STAND_IN)
    (repo / "cfg.yaml").write_text("train: {}\n")
    (repo / "recipe.sh").write_text(f"--config {repo / 'cfg.yaml'} \\\n  train.epochs=1\n")
    monkeypatch.setattr(jl, "ROOT", repo)
    return repo


def test_two_tasks_get_distinct_global_ranks(cluster, stand_in_repo, tmp_path, capsys):
    # INTEGRATE: this checks the launcher + Slurm wiring with a stand-in entry point; the real
    # main_suave.py version is test_suave_cpu_run_on_slurm below.
    runs = tmp_path / "runs"
    job = submit(capsys, ["--mode", "slurm", "--method", "suave", "--num_procs", "2",
                          "--script_file", str(stand_in_repo / "recipe.sh"),
                          "--output_dir", str(runs), "--name", "ranks"])  # fmt: skip
    assert wait_done(job, 45) == "COMPLETED"
    seen = tasks(runs / "ranks" / "slurm" / f"{job}.out")
    assert sorted(t["SLURM_PROCID"] for t in seen) == ["0", "1"]
    assert sorted(t["SLURM_LOCALID"] for t in seen) == ["0", "1"]
    assert {t["SLURM_STEP_NUM_TASKS"] for t in seen} == {"2"}
    assert {t["MASTER_PORT"] for t in seen} == {str(20000 + int(job) % 20000)}
    assert len({t["MASTER_ADDR"] for t in seen}) == 1 and seen[0]["MASTER_ADDR"]
    assert {t["RANK"] for t in seen} == {None}  # no torchrun variables leak into srun tasks
    assert all("--resume" in t["argv"] and "train.epochs=1" in t["argv"] for t in seen)


def test_usr1_requeue_restarts_job(cluster, stand_in_repo, tmp_path, capsys):
    runs = tmp_path / "runs"
    recipe = str(stand_in_repo / "recipe.sh")
    job = submit(capsys, ["--mode", "slurm", "--method", "suave", "--num_procs", "2",
                          "--script_file", recipe, "--output_dir", str(runs), "--name", "requeue",
                          "train.seed=17"])  # fmt: skip
    log = runs / "requeue" / "slurm" / f"{job}.out"
    wait_for(lambda: log.exists() and log.read_text().count("READY") == 2, 30, "2 ready tasks")
    # What Slurm does at --signal=USR1@<s>, without waiting for the time limit to approach.
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    assert wait_done(job, 50) == "COMPLETED"
    assert job_field(job, "Restarts") == "1"
    text = log.read_text()  # --open-mode=append keeps the first run's output
    assert "USR1 rank 0" in text and "USR1 rank 1" in text
    restarted = [t for t in tasks(log) if t["SLURM_RESTART_COUNT"] == "1"]
    assert sorted(t["SLURM_PROCID"] for t in restarted) == ["0", "1"]


def tiny_suave_recipe(tmp_path: Path, steps: int) -> Path:
    if not TINY_DATA.exists():
        pytest.skip(f"local data missing: {TINY_DATA}")
    recipe = tmp_path / "tiny_suave.sh"
    recipe.write_text(
        "--config suave/configs/cpu_demo.yaml\n"
        f"data.root={TINY_DATA} data.num_workers=0 data.labels_per_class=2\n"
        f"train.epochs=1 train.max_steps={steps} log.print_every=1\n"
        "train.batch_size_unlabeled=32 train.batch_size_labeled=8 train.eval_batch_size=250\n"
    )
    return recipe


def test_suave_cpu_run_on_slurm(cluster, tmp_path, capsys, monkeypatch):
    # INTEGRATE: a 2-step run of the real main_suave.py; switch to the CPU demo recipe file
    # (e.g. scripts/*cpu_demo*.sh) once it exists.
    monkeypatch.chdir(ROOT)
    runs = tmp_path / "runs"
    job = submit(capsys, ["--mode", "slurm", "--method", "suave", "--num_procs", "2",
                          "--script_file", str(tiny_suave_recipe(tmp_path, 2)),
                          "--output_dir", str(runs), "--name", "tiny"])  # fmt: skip
    state = wait_done(job, 55)
    text = (runs / "tiny" / "slurm" / f"{job}.out").read_text()
    assert state == "COMPLETED", text[-3000:]
    assert "2 process(es) [slurm]" in text
    assert json.loads((runs / "tiny" / "summary.json").read_text())["step"] == 2


def test_suave_preempted_and_resumed(cluster, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    runs = tmp_path / "runs"
    job = submit(capsys, ["--mode", "slurm", "--method", "suave", "--num_procs", "2",
                          "--script_file", str(tiny_suave_recipe(tmp_path, 8)),
                          "--output_dir", str(runs), "--name", "preempt"])  # fmt: skip
    log = runs / "preempt" / "slurm" / f"{job}.out"
    wait_for(lambda: log.exists() and " step 1 |" in log.read_text(), 40, "training step 1")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    state = wait_done(job, 55)
    text = log.read_text()
    assert state == "COMPLETED", text[-3000:]
    assert job_field(job, "Restarts") == "1", text[-3000:]
    stopped = re.search(r"stopping at step (\d+) after a preemption signal", text)
    assert stopped, text[-3000:]
    assert re.search(rf"resumed from .* at step {stopped.group(1)}\b", text), text[-3000:]
    assert json.loads((runs / "preempt" / "summary.json").read_text())["step"] == 8
