from dataclasses import dataclass, field

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


@pytest.mark.parametrize("path", ["suave/configs/cpu_demo.yaml"])
def test_shipped_configs_load(path):
    cfg = load_config(SuaveRunConfig, path)
    assert cfg.train.epochs > 0


def test_run_config_validation():
    with pytest.raises(UserError, match="crops_for_assign"):
        load_config(SuaveRunConfig, None, ["suave.crops_for_assign=[0,5]"])
    with pytest.raises(UserError, match="unknown backbone"):
        load_config(SuaveRunConfig, None, ["model.backbone=resnet9000"])
    with pytest.raises(UserError, match="global_scale"):
        load_config(SuaveRunConfig, None, ["data.global_scale=[0.5,0.1]"])
