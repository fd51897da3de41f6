"""Fuzzing the entry points: random ill-typed, out-of-range or malformed CLI / YAML input never
crashes with an unhandled exception. Every case either gets as far as training (``Trainer.fit``
is replaced: no step runs) or exits with code 2 and one ``error:`` line.

Seeds are fixed; ``SUAVEDAINO_FUZZ_CASES`` raises the number of random cases for a longer hunt.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

import main_daino
import main_suave
from common.engine import Trainer
from tests.reliability_utils import DAINO, SUAVE

pytestmark = pytest.mark.usefixtures("one_thread")
CASES = int(os.environ.get("SUAVEDAINO_FUZZ_CASES", "40"))

COMMON_KEYS = [
    "data.dataset", "data.labels_per_class", "data.split_seed", "data.normalization",
    "data.num_global", "data.global_size", "data.global_scale", "data.num_local",
    "data.local_size", "data.local_scale", "data.jitter", "data.global_blur", "data.local_blur",
    "data.labeled_size", "data.labeled_scale", "data.labeled_aug", "data.eval_size",
    "data.eval_resize", "data.num_workers", "data.prefetch_factor", "data.bad_images",
    "data.label_list", "model.backbone", "model.drop_path", "model.init", "model.init_format",
    "model.init_projector", "optim.name", "optim.base_lr", "optim.lr_batch_ref", "optim.final_lr",
    "optim.warmup_epochs", "optim.start_warmup_lr", "optim.weight_decay",
    "optim.final_weight_decay", "optim.momentum", "optim.betas", "optim.clip_grad",
    "optim.implementation", "train.epochs", "train.batch_size_unlabeled",
    "train.batch_size_labeled", "train.seed", "train.device", "train.precision",
    "train.max_steps", "train.checkpoint_every_steps", "train.checkpoint_every_epochs",
    "train.keep_checkpoints", "train.eval_every_epochs", "train.eval_batch_size",
    "train.dist_timeout_s", "log.print_every", "log.wandb_mode", "train.epochz", "nonsense",
    "data", "train.epochs.x",
]  # fmt: skip
SUAVE_KEYS = [
    "suave.temperature", "suave.epsilon", "suave.sinkhorn_iterations", "suave.crops_for_assign",
    "suave.queue_length", "suave.queue_start_epoch", "suave.label_smoothing", "suave.mixup",
    "suave.mixup_alpha", "suave.mixup_on", "suave.momentum", "suave.use_momentum",
    "suave.projector_hidden_dim", "suave.embed_dim", "suave.freeze_prototypes_steps",
]  # fmt: skip
DAINO_KEYS = [
    "daino.head_hidden_dim", "daino.head_bottleneck_dim", "daino.head_layers",
    "daino.student_temp", "daino.teacher_temp", "daino.warmup_teacher_temp",
    "daino.warmup_teacher_temp_epochs", "daino.center_momentum", "daino.teacher_momentum",
    "daino.teacher_momentum_final", "daino.freeze_last_layer_epochs", "daino.label_smoothing",
    "daino.head_use_bn", "daino.norm_last_layer",
]  # fmt: skip
# Wrong types, signs, ranges, enum values and YAML syntax; numbers stay small enough that a
# valid-but-odd value cannot allocate gigabytes (sizes are only used once training starts).
VALUES = [
    "-1", "0", "1", "2", "3", "0.5", "-0.5", "1.5", "64", "1000", "1e3", "abc", "", "null",
    "none", "true", "no", "[1, 2]", "[0.5]", "[0.2, 0.1]", "[]", "[1, 2, 3, 4, 5]", "{a: 1}",
    "nan", "inf", "-inf", "0x10", "'5'", "[", "]]", ":", "a: b: c", "resnet", "cuda", "gpu",
    "cpu", "fp16", "bf16", "lars", "cifar", "mixup", "both", "\x00", "é", "1_000",
]  # fmt: skip


@pytest.fixture
def no_training(monkeypatch):
    """Everything up to the first step runs (data, model, optimiser, schedules); no step does."""
    monkeypatch.setattr(Trainer, "fit", lambda self: {"step": self.start_step, "fuzzed": True})


def outcome(capsys, main, argv: list[str]) -> str:
    """'ok', 'error: ...' (exit 2, one error line, no traceback) or 'CRASH ...' (a defect)."""
    capsys.readouterr()
    try:
        result = main(argv)
    except SystemExit as exc:
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert exc.code == 2 and len(errors) == 1 and "Traceback" not in err, (argv, err)
        return errors[0]
    except Exception as exc:  # noqa: BLE001 - this is what the test is looking for
        tail = [a for a in argv if a not in SUAVE + DAINO and not a.startswith("data.root=")]
        return f"CRASH {type(exc).__name__}: {exc} <- {tail}"
    assert isinstance(result, dict) and result.get("fuzzed"), (argv, result)
    return "ok"


def base_argv(method: str, tiny_data: Path, out: Path) -> list[str]:
    recipe = SUAVE if method == "suave" else DAINO
    return [*recipe, f"data.root={tiny_data}", "--output_dir", str(out)]


MAINS = {"suave": main_suave.main, "daino": main_daino.main}


@pytest.mark.usefixtures("no_training")
def test_random_overrides(tmp_path, tiny_data, capsys):
    rng = random.Random(1234)
    seen, crashes = {"ok": 0, "error": 0}, []
    for case in range(CASES):
        method = "suave" if case % 2 == 0 else "daino"
        keys = COMMON_KEYS + (SUAVE_KEYS if method == "suave" else DAINO_KEYS)
        overrides = [f"{rng.choice(keys)}={rng.choice(VALUES)}" for _ in range(rng.randint(1, 3))]
        argv = base_argv(method, tiny_data, tmp_path / f"c{case}") + ["--name", "r", *overrides]
        result = outcome(capsys, MAINS[method], argv)
        seen["ok" if result == "ok" else "error"] += 1
        crashes += [result] if result.startswith("CRASH") else []
    assert not crashes, "\n".join(crashes)
    assert seen["error"] > CASES // 2 and seen["ok"] > 0, seen  # the fuzzing reaches both ends


@pytest.mark.usefixtures("no_training")
def test_malformed_command_lines(tmp_path, tiny_data, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = base_argv("suave", tiny_data, tmp_path / "runs")
    cases = [
        [], ["--config"], ["--config", str(tmp_path)], ["--config", str(tmp_path / "nope.yaml")],
        [*base, "--name", ""], [*base, "--name", "../escape"], [*base, "--name", "a/b"],
        [*base, "--name", "."], [*base[:-1], str(a_file)], [*base, "--init", str(tmp_path / "x")],
        [*base, "--init", str(tmp_path)], [*base, "--init", str(a_file)], [*base, "=5"],
        [*base, "a..b=1"], [*base, "train.epochs"], [*base, "-x"], [*base, "--", "train.epochs=1"],
        [*base, "train.epochs=1=2"], [*base, "data.root="], [*base, ".=1"], [*base, "--resume"],
    ]  # fmt: skip
    crashes = [r for r in (outcome(capsys, main_suave.main, a) for a in cases) if "CRASH" in r]
    assert not crashes, "\n".join(crashes)


YAML_CASES = [
    "", "\n\n# only a comment\n", "- a\n- b\n", "just a string\n", "42\n", "data: 5\n",
    "data:\n  root: [1, 2]\n", "train: {epochs: [1]}\n", "train:\n\tepochs: 3\n", "{{{\n",
    "data: {num_workers: '0'}\n", "defaults: missing.yaml\n", "defaults: 5\n",
    "defaults: [a.yaml]\n", "defaults: SELF\n", "suave: {crops_for_assign: 7}\n",
    "optim: {betas: 0.9}\n", "data: {global_scale: [0.5]}\n", "data: {jitter: [0.4, 0.4, 0.4]}\n",
    "model: {backbone: null}\n", "train: {epochs: 1.5}\n", "train: !!python/object:os.system {}\n",
    "x: &a [*a]\n", "data: {root: !!binary aGVsbG8=}\n",
]  # fmt: skip


def mutate(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(len(chars))
        action = rng.random()
        if action < 0.4:
            del chars[pos]
        elif action < 0.8:
            chars.insert(pos, rng.choice(":[]{}-#'\" \t\n,&*!|>%@`0-9x"))
        else:
            chars[pos] = rng.choice("0123456789-.")
    return "".join(chars)


@pytest.mark.usefixtures("no_training")
def test_malformed_yaml_files(tmp_path, tiny_data, capsys):
    rng = random.Random(99)
    valid = (
        Path(__file__).resolve().parents[1] / "suave" / "configs" / "cpu_demo.yaml"
    ).read_text()
    texts = [t.replace("SELF", "self.yaml") for t in YAML_CASES]
    texts += [mutate(valid, rng) for _ in range(CASES // 2)]
    crashes = []
    for i, text in enumerate(texts):
        config = tmp_path / f"c{i}" / "self.yaml"
        config.parent.mkdir()
        config.write_text(text)
        argv = ["--config", str(config), *SUAVE[2:], f"data.root={tiny_data}",
                "--output_dir", str(tmp_path / f"c{i}" / "runs"), "--name", "r"]  # fmt: skip
        result = outcome(capsys, main_suave.main, argv)
        crashes += [f"{result} {text!r}"] if result.startswith("CRASH") else []
    assert not crashes, "\n".join(crashes)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"data:\n  root: \xff\xfe\x00bad\n")
    line = outcome(capsys, main_suave.main, ["--config", str(binary)])
    assert re.search(r"binary.yaml", line), line
