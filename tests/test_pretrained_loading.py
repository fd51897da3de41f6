"""Loading SwAV / DINO releases: synthetic files in the official key layouts, built from our models.

Every backbone tensor must be filled (compared one by one), prototypes never, and every bad file
must end in a one-line UserError naming it.
"""

import argparse
import fractions
import warnings

import pytest
import torch
from torch import nn

from common.compat import ensure_torchvision
from common.errors import UserError
from common.models.dino_head import DINOHead
from common.models.pretrained import (
    LoadReport,
    load_dino_backbone,
    load_dino_full,
    load_swav_backbone,
    read_checkpoint,
)
from common.models.vit import VisionTransformer, vit_small, vit_tiny
from tests.helpers import randomize

# Through the CPU-torch shim; a plain top-level torchvision import could run before it.
resnet18 = ensure_torchvision().models.resnet18
resnet50 = ensure_torchvision().models.resnet50


def resnet(arch=resnet18):
    model = arch()
    model.fc = nn.Identity()
    return model


class SwavLike(nn.Module):
    """Our Suave layout: backbone, projector Linear-BN-ReLU-Linear (indices 0,1,3), prototypes."""

    def __init__(self, k, arch=resnet18, feat=512, hidden=64, out=16):
        super().__init__()
        self.backbone = resnet(arch)
        self.projector = nn.Sequential(
            nn.Linear(feat, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out)
        )
        self.prototypes = nn.Linear(out, k, bias=False)


class DinoLike(nn.Module):
    def __init__(self, backbone, k):
        super().__init__()
        self.backbone = backbone
        self.head = DINOHead(backbone.embed_dim, k, hidden_dim=32, bottleneck_dim=16)


def swav_release(model):
    """Official SwAV layout: DDP ``module.`` prefix, ``projection_head.*``, ``prototypes.*``."""
    out = {}
    for key, value in model.state_dict().items():
        key = key.replace("projector.", "projection_head.", 1)
        out["module." + key.removeprefix("backbone.")] = value
    return out


def official_head_state(head):
    """A DINOHead state dict with the old ``weight_g``/``weight_v`` names of the releases."""
    out = {}
    for key, value in head.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        out[key.replace("parametrizations.weight.original1", "weight_v")] = value
    return out


def dino_full_release(student, teacher):
    """Official DINO training checkpoint layout (student DDP-wrapped, teacher not)."""

    def flat(model, prefix):
        state = {f"{prefix}backbone.{k}": v for k, v in model.backbone.state_dict().items()}
        state.update({f"{prefix}head.{k}": v for k, v in official_head_state(model.head).items()})
        return state

    return {
        "student": flat(student, "module."),
        "teacher": flat(teacher, ""),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", out_dim=65536, norm_last_layer=False),
        "dino_loss": {"center": torch.zeros(1, 65536)},
    }


def assert_all_equal(module, reference):
    ref = reference.state_dict()
    for key, value in module.state_dict().items():
        assert torch.equal(value, ref[key]), key


def one_line_error(fn, *args, match=None, **kwargs):
    with pytest.raises(UserError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


# ----------------------------------------------------------------------------- SwAV


@pytest.mark.parametrize("wrapped", [False, True])
def test_swav_fills_backbone_never_prototypes(tmp_path, wrapped):
    torch.manual_seed(0)
    source = randomize(SwavLike(k=3000))
    state = swav_release(source)
    assert "module.prototypes.weight" in state and "module.conv1.weight" in state
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save({"state_dict": state} if wrapped else state, path)

    target = SwavLike(k=10)
    projector_before = {k: v.clone() for k, v in target.projector.state_dict().items()}
    prototypes_before = target.prototypes.weight.clone()
    report = load_swav_backbone(target, path)
    assert isinstance(report, LoadReport)
    assert_all_equal(target.backbone, source.backbone)
    assert torch.equal(target.prototypes.weight, prototypes_before)
    for key, value in target.projector.state_dict().items():
        assert torch.equal(value, projector_before[key])
    assert "prototypes.weight" in report.skipped and not report.missing
    assert len(report.loaded) == len(source.backbone.state_dict())

    report = load_swav_backbone(target, path, load_projector=True)
    assert_all_equal(target.projector, source.projector)
    assert torch.equal(target.prototypes.weight, prototypes_before)
    assert not any("prototypes" in k for k in report.loaded)
    assert "projector.3.weight" in report.loaded


def test_swav_wrong_architecture_and_wrong_files(tmp_path):
    torch.manual_seed(0)
    small = tmp_path / "r18.pth"
    torch.save(swav_release(SwavLike(k=5)), small)
    msg = one_line_error(load_swav_backbone, SwavLike(k=5, arch=resnet50, feat=2048), small)
    assert str(small) in msg and "wrong shape" in msg

    dino = tmp_path / "dino.pth"
    torch.save(DinoLike(vit_tiny(), 5).state_dict(), dino)
    one_line_error(load_swav_backbone, SwavLike(k=5), dino, match="0 of .* backbone tensors")

    # Projector requested but its shape differs (hidden 64 in the file, 32 in the model).
    msg = one_line_error(
        load_swav_backbone, SwavLike(k=5, hidden=32), small, load_projector=True, match="projector"
    )
    assert "wrong shape" in msg

    no_proj = tmp_path / "no_proj.pth"
    torch.save({"module." + k: v for k, v in resnet().state_dict().items()}, no_proj)
    one_line_error(
        load_swav_backbone, SwavLike(k=5), no_proj, load_projector=True, match="no SwAV projector"
    )


# ----------------------------------------------------------------------------- DINO


def tiny_vit():
    """ViT-S names and widths at depth 2: checks the layout without the cost of 12 blocks."""
    return VisionTransformer(embed_dim=384, depth=2, num_heads=6)


def test_dino_full_checkpoint_student_and_teacher(tmp_path):
    torch.manual_seed(0)
    student_src = randomize(DinoLike(tiny_vit(), k=64))
    teacher_src = randomize(DinoLike(tiny_vit(), k=64))
    path = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    torch.save(dino_full_release(student_src, teacher_src), path)
    with pytest.raises(Exception, match="Weights only"):  # it really needs the allow-list
        torch.load(path, weights_only=True)

    # Same K as the file: every tensor, heads included, is copied.
    student, teacher = DinoLike(tiny_vit(), k=64), DinoLike(tiny_vit(), k=64)
    reports = load_dino_full(student, teacher, path)
    assert_all_equal(student, student_src)
    assert_all_equal(teacher, teacher_src)
    assert not reports["student"].missing and not reports["teacher"].skipped

    # Our K (classes) differs from the file's: backbones + MLP load, last layer kept at init.
    student, teacher = DinoLike(tiny_vit(), k=10), DinoLike(tiny_vit(), k=10)
    last_before = teacher.head.last_layer.parametrizations.weight.original1.clone()
    reports = load_dino_full(student, teacher, path)
    assert_all_equal(student.backbone, student_src.backbone)
    assert_all_equal(teacher.backbone, teacher_src.backbone)
    assert_all_equal(teacher.head.mlp, teacher_src.head.mlp)
    assert torch.equal(teacher.head.last_layer.parametrizations.weight.original1, last_before)
    assert "head.last_layer.parametrizations.weight.original1" in reports["teacher"].skipped
    assert any("shape" in note for note in reports["teacher"].notes)

    # Backbone only, from either side.
    backbone = tiny_vit()
    report = load_dino_backbone(backbone, path)
    assert_all_equal(backbone, teacher_src.backbone)
    assert any(k.startswith("head.") for k in report.skipped)
    load_dino_backbone(backbone, path, which="student")
    assert_all_equal(backbone, student_src.backbone)


def test_dino_vit_backbone_only_release_and_wrong_size(tmp_path):
    torch.manual_seed(0)
    source = randomize(vit_small())
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(source.state_dict(), path)  # bare keys, as released
    target = vit_small()
    report = load_dino_backbone(target, path)
    assert_all_equal(target, source)
    assert len(report.loaded) == 150 and not report.missing

    wrong = tmp_path / "dino_vit_tiny.pth"
    torch.save(vit_tiny().state_dict(), wrong)
    msg = one_line_error(load_dino_backbone, vit_small(), wrong, match="wrong shape")
    assert str(wrong) in msg and "[" in msg


def test_dino_resnet50_backbone_only_and_resnet18_mismatch(tmp_path):
    torch.manual_seed(0)
    source = randomize(resnet(resnet50))
    path = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save(source.state_dict(), path)
    target = resnet(resnet50)
    report = load_dino_backbone(target, path)
    assert_all_equal(target, source)
    assert len(report.loaded) == len(source.state_dict())

    small = tmp_path / "r18.pth"
    torch.save(resnet(resnet18).state_dict(), small)
    one_line_error(load_dino_backbone, resnet(resnet50), small)  # resnet18 into resnet50
    one_line_error(load_dino_backbone, resnet(resnet18), path)  # and the other way round

    with_fc = tmp_path / "with_fc.pth"  # a classifier in the file is skipped and reported
    torch.save(resnet18().state_dict(), with_fc)
    report = load_dino_backbone(resnet(resnet18), with_fc)
    assert {"fc.weight", "fc.bias"} <= set(report.skipped)

    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in resnet18().state_dict().items() if "layer4" not in k}, missing)
    one_line_error(load_dino_backbone, resnet(resnet18), missing, match="lacks .* layer4")


# ----------------------------------------------------------------------------- bad files


def test_unreadable_files_are_one_line_user_errors(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({k: v for k, v in resnet18().state_dict().items()}, good)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    msg = one_line_error(load_dino_backbone, resnet(), truncated, match="corrupt")
    assert str(truncated) in msg

    legacy = tmp_path / "legacy.pth"  # old non-zip format, cut short
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:-16])
    one_line_error(read_checkpoint, legacy, match="corrupt")

    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    one_line_error(load_swav_backbone, SwavLike(k=3), text, match="corrupt")

    one_line_error(load_swav_backbone, SwavLike(k=3), tmp_path / "nope.pth", match="not found")
    one_line_error(load_dino_backbone, resnet(), tmp_path, match="not a file")

    unsafe = tmp_path / "unsafe.pth"  # a pickled object outside the allow-list is refused
    torch.save({"w": torch.ones(1), "x": fractions.Fraction(1, 3)}, unsafe)
    one_line_error(read_checkpoint, unsafe, match="fractions.Fraction")

    no_tensors = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, no_tensors)
    one_line_error(load_dino_backbone, resnet(), no_tensors, match="no tensors")


def test_namespace_args_load_only_through_allow_list(tmp_path):
    path = tmp_path / "args.pth"
    torch.save({"teacher": {"backbone.w": torch.ones(1)}, "args": argparse.Namespace(a=1)}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no weights_only=False fallback (it would warn / differ)
        obj = read_checkpoint(path)
    assert obj["args"].a == 1
