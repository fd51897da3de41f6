from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.config import load_config, merge_overrides, to_dict
from common.errors import UserError
from suave.method import SuaveRunConfig


@dataclass
class Inner:
    lr: float = 0.1
    steps: int = 3
    flag: bool = False
    sizes: tuple[float, float] = (0.1, 1.0)
    name: str | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    seed: int = 0


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lr: 0.5\n  sizes: [0.2, 0.9]\nseed: 3\n")
    cfg = load_config(Outer, path, ["inner.steps=7", "inner.flag=true", "inner.name=abc"])
    assert cfg.inner.lr == 0.5 and cfg.inner.steps == 7 and cfg.inner.flag is True
    assert cfg.inner.sizes == (0.2, 0.9) and cfg.inner.name == "abc" and cfg.seed == 3
    assert to_dict(cfg)["inner"]["sizes"] == [0.2, 0.9]


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.lrr=1", "unknown config key 'inner.lrr'"),
        ("inner.steps=abc", "config key 'inner.steps' must be int"),
        ("inner.steps=1.5", "config key 'inner.steps' must be int"),
        ("inner.flag=maybe", "must be true or false"),
        ("inner=3", "must be a mapping"),
        ("novalue", "must look like key.sub=value"),
        ("inner.lr.x=1", "config key 'inner.lr' must be float"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(Outer, None, [override])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(Outer, bad)


def test_defaults_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text("inner:\n  lr: 0.5\n  steps: 9\n")
    (tmp_path / "child.yaml").write_text("defaults: base.yaml\ninner:\n  steps: 2\n")
    cfg = load_config(Outer, tmp_path / "child.yaml")
    assert (cfg.inner.lr, cfg.inner.steps) == (0.5, 2)


def test_merge_overrides_does_not_mutate():
    data = {"a": {"b": 1}}
    out = merge_overrides(data, ["a.b=2"])
    assert data["a"]["b"] == 1 and out["a"]["b"] == 2


SUAVE_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "suave" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SUAVE_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(SuaveRunConfig, path)
    assert cfg.train.epochs > 0 and cfg.optim.name in ("lars", "sgd", "adamw")


def test_paper_recipes_match_spec():
    """The ImageNet recipes carry the paper's hyper-parameters (SPEC "Suave")."""
    cfg = load_config(SuaveRunConfig, "suave/configs/imagenet_10perc.yaml")
    assert (cfg.optim.name, cfg.optim.base_lr, cfg.optim.final_lr) == ("lars", 0.4, 0.001)
    assert (cfg.optim.warmup_epochs, cfg.optim.weight_decay, cfg.train.epochs) == (5, 1e-6, 100)
    assert (cfg.suave.queue_length, cfg.suave.epsilon, cfg.suave.sinkhorn_iterations) == (
        3840,
        0.05,
        3,
    )
    assert (cfg.suave.temperature, cfg.suave.label_smoothing) == (0.1, 0.01)
    assert (cfg.data.global_size, cfg.data.local_size, cfg.data.global_scale) == (
        224,
        96,
        (0.14, 1.0),
    )
    assert cfg.data.label_list.endswith("10percent.txt") and cfg.model.init_format == "swav"
    one = load_config(SuaveRunConfig, "suave/configs/imagenet_1perc.yaml")
    assert one.data.label_list.endswith("1percent.txt")
    ft = load_config(SuaveRunConfig, "suave/configs/finetune_1perc.yaml")
    assert (ft.train.epochs, ft.optim.base_lr, ft.optim.final_lr, ft.optim.warmup_epochs) == (
        3,
        0.02,
        0.0002,
        0,
    )  # fmt: skip (official finetune_1perc.sh)
    assert (ft.suave.label_smoothing, ft.suave.init_prototypes, ft.model.init_projector) == (
        0.01,
        False,
        True,
    )  # fmt: skip (official: prototypes re-initialised)
    assert ft.data.num_local == 0 and ft.data.global_scale == (0.08, 1.0)
    assert ft.data.label_list.endswith("1percent.txt")
    per_class = [
        load_config(SuaveRunConfig, f"suave/configs/cifar100_{n}.yaml").data.labels_per_class
        for n in (400, 2500, 10000)
    ]
    assert per_class == [4, 25, 100]


def test_run_config_validation():
    with pytest.raises(UserError, match="crops_for_assign"):
        load_config(SuaveRunConfig, None, ["suave.crops_for_assign=[0,5]"])
    with pytest.raises(UserError, match="unknown backbone"):
        load_config(SuaveRunConfig, None, ["model.backbone=resnet9000"])
    with pytest.raises(UserError, match="global_scale"):
        load_config(SuaveRunConfig, None, ["data.global_scale=[0.5,0.1]"])


def test_labels_or_not_is_settled_once_when_the_config_loads():
    """``has_labels``: one derived value that data, methods and evaluation read. Zero labels
    per class is self-supervised pre-training whatever labeled batch the recipe names; the
    resolved batch is what the run saves (and what a resume compares)."""
    recipe = "suave/configs/cpu_demo.yaml"
    ssl = load_config(SuaveRunConfig, recipe, ["data.labels_per_class=0"])
    assert not ssl.has_labels and ssl.train.batch_size_labeled == 0
    assert to_dict(ssl)["train"]["batch_size_labeled"] == 0
    semi = load_config(SuaveRunConfig, recipe, ["data.labels_per_class=4"])
    assert semi.has_labels and semi.train.batch_size_labeled > 0
    no_batch = load_config(SuaveRunConfig, recipe, ["train.batch_size_labeled=0"])
    assert not no_batch.has_labels


@pytest.mark.parametrize("section", ["suave", "daino", "supervised"])
def test_every_method_section_has_the_shared_mixup_keys_and_check(section):
    """The mixup keys live once (common.mixup.MixupConfig); each method section loads them from
    YAML / overrides and names itself when they are wrong."""
    from registry import METHODS

    run_config = METHODS[section].config_cls
    cfg = load_config(run_config, None, [f"{section}.mixup=switch", f"{section}.mixup_alpha=0.4"])
    assert (getattr(cfg, section).mixup, getattr(cfg, section).mixup_alpha) == ("switch", 0.4)
    with pytest.raises(UserError, match=rf"^{section}\.mixup_alpha must be > 0"):
        load_config(run_config, None, [f"{section}.mixup_alpha=0"])
    with pytest.raises(UserError, match=rf"{section}\.mixup"):
        load_config(run_config, None, [f"{section}.mixup=blend"])
