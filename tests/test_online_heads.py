"""Online linear heads (``suave.online_heads`` / ``daino.online_heads``): they learn from detached
features, so the method trains exactly as without them, and they travel with the method's
checkpoints. Accuracy on a real run: tests/test_train_suave.py and tests/test_daino_train.py;
exact resume with heads: tests/test_resume.py; the results table: tests/test_aggregate_protocol.py.
"""

from __future__ import annotations

import pytest
import torch

import main_daino
import main_suave
from common.checkpoint import load_file
from common.config import load_config
from common.data import build_train_data
from common.method import StepContext
from common.models.online_heads import PREFIX
from daino.method import Daino, DainoRunConfig
from suave.method import Suave, SuaveRunConfig
from tests.reliability_utils import DAINO, SUAVE

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = {
    "suave": (SuaveRunConfig, Suave.build, SUAVE, main_suave.main,
              ["suave.mixup=switch", "suave.mixup_on=both"]),
    "daino": (DainoRunConfig, Daino.build, DAINO, main_daino.main, ["daino.mixup=switch"]),
}  # fmt: skip
TAPS = {"suave": ["backbone", "proj1", "proj2"], "daino": ["backbone", "hidden", "bottleneck"]}


def recipe(method: str, data_root, *extra: str) -> tuple[str, list[str]]:
    """(config file, overrides) of the tiny reliability recipe with labeled mixup on."""
    _, _, args, _, mixup = METHODS[method]
    return args[1], [*args[2:], *mixup, f"data.root={data_root}", *extra]


def method_grads(method: str, data_root, heads: bool, batch: dict):
    config_cls, build, *_ = METHODS[method]
    config, overrides = recipe(method, data_root, f"{method}.online_heads={heads}")
    cfg = load_config(config_cls, config, overrides)
    torch.manual_seed(0)
    model = build(cfg, 3, 1)
    if heads:  # trained heads (zero ones would pass no gradient back even if not detached)
        with torch.no_grad():
            for param in model.online_heads.parameters():
                param.normal_(generator=torch.Generator().manual_seed(3))
    model.setup(cfg.train.epochs, 4)
    model.train()
    ctx = StepContext(0, 0, 0, 4, 12, torch.device("cpu"), torch.Generator().manual_seed(5))
    out = model.training_step(batch, ctx)
    out.backward_loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if not n.startswith(PREFIX)}
    heads_grads = {n: p.grad for n, p in model.named_parameters() if n.startswith(PREFIX)}
    return out, grads, heads_grads


@pytest.mark.parametrize("method", ["suave", "daino"])
def test_heads_leave_every_method_gradient_identical(method, tiny_data):
    """One step on a real batch (labeled mixup on), heads on vs off, same seed: every method
    parameter's gradient is bitwise equal, the heads have their own, the logged loss is equal."""
    config_cls = METHODS[method][0]
    config, overrides = recipe(method, tiny_data)
    cfg = load_config(config_cls, config, overrides)
    data = build_train_data(cfg.data, 8, 4, 0, 0, 1, torch.device("cpu"))
    data.sampler.set_epoch(0, 0)
    batch = next(iter(data.loader))
    batch.pop("bad_image_indices", None)

    out_off, off, none = method_grads(method, tiny_data, False, batch)
    out_on, on, heads = method_grads(method, tiny_data, True, batch)
    assert not none and off.keys() == on.keys() and len(off) > 10
    for name, grad in off.items():
        if grad is None:
            assert on[name] is None, name
        else:
            assert torch.equal(grad, on[name]), name
    assert torch.equal(out_off.loss, out_on.loss) and out_off.extra_loss is None
    assert "loss_online_heads" in out_on.terms and out_on.extra_loss.item() > 0
    assert sorted({n.split(".")[2] for n in heads}) == sorted(TAPS[method])
    assert all(g is not None and g.abs().sum() > 0 for g in heads.values()), heads.keys()


@pytest.mark.parametrize(
    "method,optim",
    [("suave", ["optim.name=lars", "optim.exclude_bias_norm=false"]), ("daino", [])],
)
def test_training_with_heads_ends_with_the_same_method_weights(method, optim, tmp_path, tiny_data):
    """Four real steps with and without heads (Suave: the official LARS, Daino: AdamW): the
    method's weights, buffers, EMA/teacher and its optimiser state end bitwise equal; the heads
    sit in the optimiser without weight decay, outside the teacher/EMA; model.init of the
    checkpoint (a fine-tuning stage) continues the heads."""
    config, overrides = recipe(method, tiny_data, *optim, "train.max_steps=4")
    main = METHODS[method][3]
    for heads in (False, True):
        main(["--config", config, *overrides, f"{method}.online_heads={heads}",
              "--output_dir", str(tmp_path), "--name", f"heads_{heads}"])  # fmt: skip
    off, on = (load_file(tmp_path / f"heads_{h}/checkpoints/last.pth") for h in (False, True))
    assert not [k for k in off["model"] if k.startswith(PREFIX)]
    head_keys = [k for k in on["model"] if k.startswith(PREFIX)]
    assert len(head_keys) == 6 and not [k for k in on["model"] if "online_heads" in k[1:] and
                                        not k.startswith(PREFIX)]  # fmt: skip
    for key, value in off["model"].items():
        assert torch.equal(value, on["model"][key]), key
    groups_off, groups_on = off["optimizer"]["param_groups"], on["optimizer"]["param_groups"]
    assert groups_on[: len(groups_off)] == groups_off
    extra = groups_on[len(groups_off) :]
    assert [g.get("online_heads") for g in extra] == [True, True]
    assert all(g["weight_decay"] == 0.0 for g in extra)
    assert [g.get("lars") for g in extra] == ([True, True] if method == "suave" else [None] * 2)
    state_off, state_on = off["optimizer"]["state"], on["optimizer"]["state"]
    for idx, state in state_off.items():  # the method's parameters come first in both
        for key, value in state.items():
            assert torch.equal(value, state_on[idx][key]), (idx, key)
    for key in head_keys:
        assert on["model"][key].abs().sum() > 0, key  # trained from their zero start

    config_cls, build, *_ = METHODS[method]
    ckpt = tmp_path / "heads_True" / "checkpoints" / "last.pth"
    cfg = load_config(config_cls, config, [*overrides, f"{method}.online_heads=true",
                                           f"model.init={ckpt}"])  # fmt: skip
    tuned = build(cfg, 3, 1)
    for key in head_keys:
        assert torch.equal(tuned.state_dict()[key], on["model"][key]), key


def test_no_heads_without_labels(tiny_data):
    """A zero-label (SwAV) run has nothing to train heads with: the switch is ignored."""
    config, overrides = recipe("suave", tiny_data, "suave.online_heads=true",
                               "train.batch_size_labeled=0", "data.labels_per_class=0")  # fmt: skip
    model = Suave.build(load_config(SuaveRunConfig, config, overrides), 3, 1)
    assert model.online_heads is None
    assert not [k for k in model.state_dict() if k.startswith(PREFIX)]
