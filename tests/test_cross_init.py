"""One method starts from another's checkpoint of ours: the backbone crosses, the rest is fresh.

Where a checkpoint keeps its backbone is written in its meta (``backbone_prefix``), so neither
method reads the other's layout; checkpoints from before that key are read by their one
``<name>.backbone.`` prefix.
"""

from __future__ import annotations

import pytest
import torch

from common.checkpoint import backbone_prefix_of
from common.config import load_config
from common.errors import UserError
from daino.method import Daino, DainoRunConfig
from suave.method import Suave, SuaveRunConfig
from supervised.method import Supervised, SupervisedRunConfig
from tests.helpers import randomize

BACKBONE = ["model.backbone=resnet_mini"]
SUAVE = [*BACKBONE, "suave.projector_hidden_dim=32", "suave.embed_dim=16"]
DAINO = [*BACKBONE, "daino.head_hidden_dim=32", "daino.head_bottleneck_dim=16"]
SUPERVISED = [*BACKBONE, "supervised.projector_hidden_dim=32", "supervised.embed_dim=16"]


def make(name: str, extra=()):
    cls, cfg_cls, base = {
        "suave": (Suave, SuaveRunConfig, SUAVE),
        "daino": (Daino, DainoRunConfig, DAINO),
        "supervised": (Supervised, SupervisedRunConfig, SUPERVISED),
    }[name]
    return cls(load_config(cfg_cls, None, [*base, *extra]), 5)


def save(method, path, legacy=False):
    meta = method.meta()
    if legacy:  # as written before meta.backbone_prefix
        meta.pop("backbone_prefix")
    randomize(method)
    torch.save({"model": method.state_dict(), "meta": meta, "step": 1}, path)
    return method


def backbone(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.parametrize("source", ["suave", "supervised", "suave_legacy"])
def test_daino_starts_from_a_suave_or_supervised_backbone(tmp_path, source):
    path = tmp_path / "src.pth"
    src = save(make(source.split("_")[0]), path, legacy=source.endswith("legacy"))
    method = make("daino")
    head_before = method.student.head.state_dict()
    method.initialize_from(str(path), "ours")
    expected = backbone(src.state_dict(), "net.backbone.")
    for net in (method.student, method.teacher):
        for key, value in net.backbone.state_dict().items():
            torch.testing.assert_close(value, expected[key], msg=key)
    for key, value in method.student.head.state_dict().items():  # the head stays fresh
        torch.testing.assert_close(value, head_before[key], msg=key)


@pytest.mark.parametrize("source", ["daino", "supervised"])
def test_suave_starts_from_a_daino_or_supervised_backbone(tmp_path, source):
    """Daino: its teacher's backbone (the network it evaluates), and no projector to load; the
    baseline's prototype head has Suave's layout, so its projector loads on request. Old code:
    Daino checkpoints were refused ('holds no Suave/SwAV network weights')."""
    path = tmp_path / "src.pth"
    src = save(make(source), path)
    method = make("suave")
    fresh = {k: v.clone() for k, v in method.net.state_dict().items() if "backbone" not in k}
    method.initialize_from(str(path), "ours", load_projector=False)
    prefix = "teacher.backbone." if source == "daino" else "net.backbone."
    expected = backbone(src.state_dict(), prefix)
    for key, value in method.net.backbone.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)
    for key, value in fresh.items():  # projector and prototypes stay fresh
        torch.testing.assert_close(method.net.state_dict()[key], value, msg=key)

    with_projector = make("suave")
    if source == "daino":
        with pytest.raises(UserError, match=r"\(daino\) has no Suave projector to load: set "
                           "model.init_projector=false"):  # fmt: skip
            with_projector.initialize_from(str(path), "ours", load_projector=True)
        return
    with_projector.initialize_from(str(path), "ours", load_projector=True)
    expected = backbone(src.state_dict(), "net.projector.")
    for key, value in with_projector.net.projector.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)


def test_a_legacy_checkpoint_with_two_backbones_is_refused(tmp_path):
    path = tmp_path / "old_daino.pth"
    save(make("daino"), path, legacy=True)
    with pytest.raises(UserError, match=r"which of its backbones.*student\.backbone\., "
                       r"teacher\.backbone\.") as info:  # fmt: skip
        make("suave").initialize_from(str(path), "ours", load_projector=False)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_backbone_prefix_of():
    assert backbone_prefix_of({"meta": {"backbone_prefix": "teacher.backbone."}}, "p") == (
        "teacher.backbone."
    )
    legacy = {"meta": {}, "model": {"net.backbone.conv1.weight": 0, "net.projector.0.weight": 0,
                                    "online_heads.heads.backbone.weight": 0}}  # fmt: skip
    assert backbone_prefix_of(legacy, "p") == "net.backbone."
    with pytest.raises(UserError, match=r"\(none\)"):
        backbone_prefix_of({"meta": {}, "model": {"x.weight": 0}}, "p")


@pytest.mark.parametrize("target", ["suave", "daino"])
def test_a_backbone_missing_tensors_is_refused_before_loading(tmp_path, target):
    """Every backbone tensor must come from the file (load_partial's ``required``): one missing
    is refused in one line, and nothing of the file is loaded."""
    path = tmp_path / "src.pth"
    save(make("suave"), path)
    ckpt = torch.load(path)
    del ckpt["model"]["net.backbone.conv1.weight"]
    torch.save(ckpt, path)
    method = make(target)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    args = {"load_projector": False} if target == "suave" else {}
    with pytest.raises(UserError, match=r"lacks 1 .*tensors under 'backbone\.', e\.g\. "
                       r"backbone\.conv1\.weight") as info:  # fmt: skip
        method.initialize_from(str(path), "ours", **args)
    assert "\n" not in str(info.value)
    for key, value in method.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
