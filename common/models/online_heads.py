"""Online linear evaluation heads (the official ``multihead_eval``): linear probes trained on the
fly on *detached* features at several depths of the network.

They learn from the labeled batch of every step and are read at every validation, which is how
the paper reports its headline numbers (Table 6: a probe on the projector's first layer). The
features are detached, so the method's gradients are the same with or without them; the heads
are a module of the method (checkpointed, resumed) but not of its trainable network (not in
DDP, gradient clipping or an EMA teacher).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from common import dist

log = logging.getLogger(__name__)

PREFIX = "online_heads."  # key prefix of the heads in a method's state_dict


class OnlineHeads(nn.Module):
    """One ``nn.Linear(dim, num_classes)`` per named depth, e.g. {"backbone": 2048, ...}.

    Zero-initialised: a linear softmax classifier needs no symmetry breaking, and building the
    heads draws no random numbers, so the method's own initialisation (and every random number
    after it) is the same with heads on or off.
    """

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__()
        self.heads = nn.ModuleDict(
            {name: skip_init(nn.Linear, dim, num_classes) for name, dim in dims.items()}
        )
        for head in self.heads.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @property
    def names(self) -> list[str]:
        return list(self.heads)

    def forward(self, taps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits of every head from its (detached) features."""
        return {name: head(taps[name].detach()) for name, head in self.heads.items()}

    def loss(self, taps: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Sum of the heads' cross-entropies: each head sees only its own term's gradient."""
        logits = self(taps)
        return sum(F.cross_entropy(out.float(), labels) for out in logits.values())

    def sync_gradients(self) -> None:
        """Average the heads' gradients over processes (they are outside DDP)."""
        if dist.world_size() < 2:
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce_(flat, "mean")
            pieces = flat.split([g.numel() for g in grads])
            torch._foreach_copy_(grads, [p.view_as(g) for p, g in zip(pieces, grads)])

    def load_matching(self, ckpt: dict, path: str) -> bool:
        """Take the heads of one of our checkpoints when it has the same heads (fine-tuning a
        run continues its probes); otherwise they start fresh. Returns whether they were loaded."""
        theirs = {k[len(PREFIX) :]: v for k, v in ckpt["model"].items() if k.startswith(PREFIX)}
        own = self.state_dict()
        fits = theirs.keys() == own.keys() and all(
            tuple(v.shape) == tuple(own[k].shape) for k, v in theirs.items()
        )
        if fits:
            self.load_state_dict(theirs)
            log.info("online heads (%s) loaded from %s", ", ".join(self.names), path)
        elif theirs:
            log.info("online heads of %s do not fit this run's: they start fresh", path)
        return fits


def head_param_groups(heads: OnlineHeads, lars: bool, exclude_bias_norm: bool) -> list[dict]:
    """The heads' optimiser groups: the method's learning-rate schedule, no weight decay (a probe
    on detached features has nothing to regularise, as solo-learn's online classifier), and LARS
    trust scaling on the weights as the official code (all parameters in one LARS), which keeps
    the probes stable at the large linearly-scaled learning rates of the LARS recipes."""
    weights = [p for n, p in heads.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in heads.named_parameters() if not n.endswith("weight")]
    common = {"apply_wd": False, "weight_decay": 0.0, "online_heads": True}
    return [
        {"params": weights, "lars": lars, **common},
        {"params": biases, "lars": lars and not exclude_bias_norm, **common},
    ]


def metric_names(name: str) -> tuple[str, str]:
    """Epoch-table columns of one head: (top-1, top-5)."""
    return f"val_top1_head_{name}", f"val_top5_head_{name}"
