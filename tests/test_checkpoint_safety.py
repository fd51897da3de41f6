"""Checkpoints: atomic writes survive a kill, keep-last-K, corrupt files are detected and skipped on
--resume, and loading never unpickles code (weights_only=True everywhere; official releases only
through the allow-list of common.models.pretrained).
"""

from __future__ import annotations

import argparse
import ast
import logging
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import main_suave
from common.checkpoint import checkpoint_files, load_file, load_latest, save_checkpoint
from common.errors import UserError
from common.models.pretrained import read_checkpoint
from tests.helpers import assert_cli_error
from tests.reliability_utils import ROOT, SUAVE, entry_env

pytestmark = pytest.mark.usefixtures("one_thread")


def state(step: int, size: int = 1000) -> dict:
    return {"model": {"w": torch.full((size,), float(step))}, "meta": {"method": "t"}, "step": step}


def steps_on_disk(ckpt_dir: Path) -> list[int]:
    return [int(p.stem.split("_")[1]) for p in checkpoint_files(ckpt_dir)]


def flip_tensor_byte(path: Path) -> None:
    """Flip one byte inside the tensor data (not the zip directory): only the CRC can tell."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename)
    raw = bytearray(path.read_bytes())
    header = info.header_offset
    name_len = int.from_bytes(raw[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(raw[header + 28 : header + 30], "little")
    raw[header + 30 + name_len + extra_len + 8] ^= 0xFF
    path.write_bytes(bytes(raw))


# ----------------------------------------------------------------------------- atomic writes
KILL_DURING_WRITE = """
import io, os, signal, sys
import torch
import common
from common import checkpoint as ck

ckpt_dir = sys.argv[1]
ck.save_checkpoint({"model": {"w": torch.full((200000,), 3.0)}, "meta": {}, "step": 3}, ckpt_dir, 3)
real_save = torch.save

def dying_save(obj, handle, *args, **kwargs):  # half the bytes reach the disk, then SIGKILL
    buffer = io.BytesIO()
    real_save(obj, buffer)
    handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = dying_save
ck.save_checkpoint({"model": {"w": torch.full((200000,), 6.0)}, "meta": {}, "step": 6}, ckpt_dir, 6)
"""


def test_kill_during_write_keeps_the_previous_checkpoint(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_DURING_WRITE), str(ckpt_dir)],
        cwd=ROOT, env=entry_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = [p.name for p in ckpt_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1, list(ckpt_dir.iterdir())  # the half-written temp file
    assert steps_on_disk(ckpt_dir) == [3]  # the new name never appeared
    ckpt, path = load_latest(ckpt_dir)
    assert path.name == "last.pth" and ckpt["step"] == 3 and float(ckpt["model"]["w"][0]) == 3.0
    save_checkpoint(state(4), ckpt_dir, 4)  # the resumed run's next save clears the debris
    assert not [p for p in ckpt_dir.iterdir() if p.name.endswith(".tmp")]


def test_an_error_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "checkpoints"
    save_checkpoint(state(3), ckpt_dir, 3)

    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(state(6), ckpt_dir, 6)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["checkpoint_00000003.pth", "last.pth"]
    assert load_latest(ckpt_dir)[0]["step"] == 3


def test_keep_last_k_plus_last(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    for step in range(1, 6):
        save_checkpoint(state(step), ckpt_dir, step, keep=2)
    assert steps_on_disk(ckpt_dir) == [5, 4]
    assert torch.equal(load_file(ckpt_dir / "last.pth")["model"]["w"], state(5)["model"]["w"])
    # Files newer than the step being saved belong to an abandoned attempt (a resume went back to
    # an older checkpoint because they were unreadable): they must neither count among the newest
    # K (pushing out good ones) nor stay behind.
    (ckpt_dir / "checkpoint_00000009.pth").write_bytes(b"unreadable")
    save_checkpoint(state(5), ckpt_dir, 5, keep=2)
    assert steps_on_disk(ckpt_dir) == [5, 4]
    assert load_latest(ckpt_dir)[0]["step"] == 5


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_newest_checkpoint_is_named_and_skipped(tmp_path, caplog, damage):
    ckpt_dir = tmp_path / "checkpoints"
    save_checkpoint(state(3), ckpt_dir, 3)
    save_checkpoint(state(6), ckpt_dir, 6)
    newest = ckpt_dir / "checkpoint_00000006.pth"
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])  # same inode as last.pth: both damaged
    elif damage == "flip":
        flip_tensor_byte(newest)
    else:
        newest.write_bytes(b"" if damage == "empty" else b"\x00garbage" * 100)
    with pytest.raises(UserError, match="checkpoint_00000006.pth is corrupt"):
        load_file(newest)
    with caplog.at_level(logging.WARNING):
        ckpt, path = load_latest(ckpt_dir)
    assert path.name == "checkpoint_00000003.pth" and ckpt["step"] == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("checkpoint_00000006.pth" in m and "older checkpoint" in m for m in warned), warned


def test_resume_skips_a_corrupt_checkpoint(tmp_path, tiny_data, capsys):
    """Through the CLI: a warning names the damaged file, the run resumes from the one before."""
    args = [*SUAVE, f"data.root={tiny_data}", "--output_dir", str(tmp_path), "--name", "r"]
    assert main_suave.main([*args, "train.max_steps=4"])["step"] == 4
    flip_tensor_byte(tmp_path / "r" / "checkpoints" / "checkpoint_00000004.pth")
    capsys.readouterr()
    assert main_suave.main([*args, "--resume", "train.max_steps=5"])["step"] == 5
    out = capsys.readouterr().out
    assert "WARNING checkpoint" in out and "checkpoint_00000004.pth is corrupt" in out, out
    assert "checkpoint_00000003.pth at step 3" in out
    assert load_file(tmp_path / "r" / "checkpoints" / "checkpoint_00000004.pth")["step"] == 4
    for path in (tmp_path / "r" / "checkpoints").iterdir():  # all garbage gone or rewritten
        load_file(path)
    # Nothing loadable at all: refuse rather than silently start from scratch over the run.
    for path in (tmp_path / "r" / "checkpoints").iterdir():
        path.write_bytes(b"junk")
    assert_cli_error(
        capsys, main_suave.main, [*args, "--resume"], r"no loadable checkpoint .*all corrupt"
    )


# ----------------------------------------------------------------------------- safe loading
class Evil:
    """Unpickling this would run code: it creates the sentinel file."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return exec, (f"open({self.sentinel!r}, 'w').close()",)


def test_every_torch_load_in_the_project_is_weights_only():
    calls = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "tests", "runs") or rel.parts[0].startswith("."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(rel))):
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and getattr(func, "attr", None) == "load":
                if getattr(func.value, "id", None) == "torch":
                    kwargs = {k.arg: k.value for k in node.keywords}
                    safe = isinstance(kwargs.get("weights_only"), ast.Constant) and (
                        kwargs["weights_only"].value is True
                    )
                    calls.append((str(rel), node.lineno, safe))
    assert calls, "no torch.load found: the scan is broken"
    assert all(safe for *_, safe in calls), [c for c in calls if not c[2]]


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_is_refused_not_executed(tmp_path, zip_format, capsys, tiny_data):
    sentinel = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    payload = {"model": {"w": torch.ones(2)}, "meta": {"method": "suave"}, "x": Evil(sentinel)}
    torch.save(payload, evil, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UserError, match=r"evil.pth holds a pickled 'exec', which is never"):
        load_file(evil)
    with pytest.raises(UserError, match=r"evil.pth holds a exec object"):
        read_checkpoint(evil)  # official-release path, with its Namespace allow-list
    assert not sentinel.exists()
    if zip_format:  # the CLI, --init and --resume (the same loaders: one format is enough)
        args = [*SUAVE, f"data.root={tiny_data}", "--output_dir", str(tmp_path / "runs")]
        assert_cli_error(capsys, main_suave.main, [*args, "--init", str(evil)], r"evil.pth .*exec")
        (tmp_path / "runs" / "r" / "checkpoints").mkdir(parents=True)
        (tmp_path / "runs" / "r" / "checkpoints" / "last.pth").write_bytes(evil.read_bytes())
        with pytest.raises(SystemExit) as exc:
            main_suave.main([*args, "--name", "r", "--resume"])
        out, err = capsys.readouterr()
        assert exc.value.code == 2 and "error: no loadable checkpoint" in err, err
        assert "last.pth holds a pickled 'exec'" in out, out  # the warning says why
    assert not sentinel.exists()


def test_allow_list_admits_namespace_but_nothing_inside_it(tmp_path):
    """The official checkpoints' ``args`` Namespace is allowed; an object hidden in it is not."""
    sentinel = tmp_path / "pwned"
    path = tmp_path / "dino_like.pth"
    torch.save(
        {"teacher": {"w": torch.ones(1)}, "args": argparse.Namespace(x=Evil(sentinel))}, path
    )
    with pytest.raises(UserError, match="exec object, which is not loaded"):
        read_checkpoint(path)
    with pytest.raises(
        UserError, match="pickled 'argparse.Namespace'"
    ):  # our own files: no allow-list
        load_file(path)
    assert not sentinel.exists()
