"""``model.backbone=timm:<name>``: any timm model as a feature extractor, weights from a local
file only, a clear line when timm is missing; a couple of real Suave steps on a timm ResNet."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from common.errors import UserError
from common.models.factory import ModelConfig, build_backbone

timm = pytest.importorskip("timm")


def test_missing_timm_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(UserError, match=r"needs the timm package: pip install timm"):
        ModelConfig(backbone="timm:resnet10t").validate()
    with pytest.raises(UserError, match=r"needs the timm package"):
        build_backbone("timm:resnet10t")


@pytest.mark.parametrize(
    "backbone, weights, message",
    [
        (
            "timm:hf-hub:timm/resnet10t.c3_in1k",
            None,
            r"asks for hub weights; nothing is downloaded",
        ),
        ("timm:timm/resnet10t", None, r"asks for hub weights"),
        ("timm:", None, r"needs a model name"),
        ("timm:resnet10t", "https://example.org/w.pth", r"is not a local file"),
        ("timm:resnet10t", "hf_hub:timm/resnet10t", r"is not a local file"),
        ("resnet18", "/tmp/w.pth", r"timm_weights is for model.backbone=timm"),
        ("resnet_tiny_nope", None, r"unknown backbone .* or timm:<name>"),
    ],
)
def test_bad_timm_settings_are_refused(backbone, weights, message):
    with pytest.raises(UserError, match=message):
        ModelConfig(backbone=backbone, timm_weights=weights).validate()


def test_unknown_timm_model_is_named():
    with pytest.raises(UserError, match=r"timm has no model 'resnet_does_not_exist'"):
        build_backbone("timm:resnet_does_not_exist")


def test_pooled_features_never_pretrained(monkeypatch):
    calls = []
    create = timm.create_model

    def spy(name, **kwargs):
        calls.append(kwargs)
        return create(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    cnn, cnn_dim = build_backbone("timm:resnet10t")
    vit, vit_dim = build_backbone("timm:test_vit", drop_path=0.1)
    assert all(c["pretrained"] is False and c["num_classes"] == 0 for c in calls)
    assert (cnn_dim, vit_dim) == (512, 64)
    with torch.no_grad():
        assert cnn(torch.randn(2, 3, 24, 24)).shape == (2, 512)
        for size in (32, 16):  # multi-crop: global and local crops of other sizes
            assert vit(torch.randn(2, 3, size, size)).shape == (2, 64)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_from_a_local_file(tmp_path, suffix):
    """A full timm model's state dict (classifier included, as timm saves it) fills the
    feature extractor exactly; another architecture's file is refused naming the keys."""
    source = timm.create_model("resnet10t", pretrained=False, num_classes=7)
    path = tmp_path / f"resnet10t{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)  # timm's checkpoint layout
    model, _ = build_backbone("timm:resnet10t", weights=str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    with pytest.raises(UserError, match=r"does not fit timm:test_vit \(missing: "):
        build_backbone("timm:test_vit", weights=str(path))
    with pytest.raises(UserError, match=r"file not found"):
        build_backbone("timm:resnet10t", weights=str(tmp_path / "none.pth"))


@pytest.mark.usefixtures("one_thread")
def test_suave_steps_on_real_images_with_a_timm_backbone(tmp_path, tiny_data):
    """Two Suave steps on real CIFAR-10 images with timm's ResNet-10-T initialised from a local
    file; the checkpoint records the timm backbone and evaluation rebuilds it."""
    import main_suave
    from common.checkpoint import load_file
    from common.probes.networks import load_eval_model
    from registry import METHODS
    from tests.reliability_utils import SUAVE

    weights = tmp_path / "r10t.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), weights)
    args = [*SUAVE, f"data.root={tiny_data}", "--output_dir", str(tmp_path), "--name", "t",
            "model.backbone=timm:resnet10t", f"model.timm_weights={weights}",
            "train.max_steps=2", "log.plots=false"]  # fmt: skip
    summary = main_suave.main(args)
    assert summary["step"] == 2 and math.isfinite(summary.get("val_top1", 0.0))
    ckpt_path = tmp_path / "t" / "checkpoints" / "last.pth"
    ckpt = load_file(ckpt_path)
    assert ckpt["meta"]["backbone"] == "timm:resnet10t"
    assert any(k.startswith("net.backbone.layer4.") for k in ckpt["model"])
    model = load_eval_model(str(ckpt_path), "auto", None, "teacher", methods=METHODS)
    with torch.no_grad():
        feats = model.features(torch.randn(2, 3, 16, 16))
    assert feats.shape == (2, 512)
