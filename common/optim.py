"""Optimisers and parameter groups: LARS (SwAV/Suave), SGD, AdamW (DINO/Daino).

Biases and normalisation parameters (every tensor with ndim <= 1) get neither weight decay nor
the LARS trust ratio, as the paper's recipe asks. The engine writes the scheduled learning rate
into every group and the scheduled weight decay into groups with ``apply_wd``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from common.errors import UserError


@dataclass
class OptimConfig:
    name: Literal["lars", "sgd", "adamw"] = "lars"
    base_lr: float = 0.4  # at reference batch size ``lr_batch_ref`` (unlabeled, global)
    lr_batch_ref: int = 256
    scale_lr: bool = True  # linear scaling by global unlabeled batch / lr_batch_ref
    final_lr: float = 0.001
    warmup_epochs: float = 5.0
    start_warmup_lr: float = 0.0
    weight_decay: float = 1e-6
    final_weight_decay: float | None = None  # cosine weight-decay schedule (DINO), None = fixed
    momentum: float = 0.9
    trust_coefficient: float = 0.001
    # LARS only: True = biases and norm parameters get neither weight decay nor trust scaling
    # (our historical choice); False = the official Suave/SwAV LARS (exclude_bias_n_norm=False),
    # where they are decayed and trust-scaled like the weights. SGD/AdamW always exclude them.
    exclude_bias_norm: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 0.0  # max grad norm; 0 = off
    # SGD/AdamW kernels. auto: AdamW fused on CUDA and CPU (benchmarks/bench_optim.py), SGD
    # foreach; LARS always uses foreach ops. torch's fused SGD is refused: it fails on parameters
    # whose gradients start late (prototypes / last layer frozen in the first epoch) and writes
    # uninitialised memory into its momentum on steps an fp16 GradScaler skips (both found on an
    # H100, reproduced on CPU in tests/test_fast_paths.py).
    implementation: Literal["auto", "foreach", "fused", "loop"] = "auto"

    def validate(self) -> None:
        if self.base_lr <= 0 or self.final_lr < 0 or self.weight_decay < 0:
            raise UserError("optim.base_lr must be > 0, final_lr and weight_decay >= 0")
        refuse_fused_sgd(self)
        if self.lr_batch_ref <= 0:
            raise UserError("optim.lr_batch_ref must be positive")
        if self.warmup_epochs < 0:
            raise UserError("optim.warmup_epochs must be >= 0")
        if min(self.start_warmup_lr, self.final_weight_decay or 0.0, self.momentum) < 0:
            raise UserError("optim.start_warmup_lr, final_weight_decay and momentum must be >= 0")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise UserError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")

    @property
    def excludes_bias_norm(self) -> bool:
        """Whether biases and norm parameters skip weight decay (and LARS scaling): the option
        only applies to LARS; SGD/AdamW always exclude them."""
        return self.exclude_bias_norm or self.name != "lars"

    def peak_lr(self, global_batch: int) -> float:
        return self.base_lr * global_batch / self.lr_batch_ref if self.scale_lr else self.base_lr


def param_groups(model: nn.Module, exclude_bias_norm: bool = True) -> list[dict]:
    """Two groups: weights (decay + LARS) and biases/norms (neither, or both when
    ``exclude_bias_norm`` is False: the official LARS)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 and exclude_bias_norm else decay).append(param)
    if not exclude_bias_norm:
        return [{"params": decay, "apply_wd": True, "lars": True}]
    return [
        {"params": decay, "apply_wd": True, "lars": True},
        {"params": no_decay, "apply_wd": False, "lars": False, "weight_decay": 0.0},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017; LARC without clipping).

    update = lr * momentum_buffer, buffer = m * buffer + ratio * (g + wd * w),
    ratio = trust * |w| / (|g| + wd * |w|) for groups with ``lars``, else 1.
    """

    def __init__(self, params, lr: float, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001,
                 eps: float = 1e-8):  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars=True)  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd, momentum = group["weight_decay"], group["momentum"]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:  # 0 * momentum + update == update exactly
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
                bufs.append(state["momentum_buffer"])
            # In place on the buffers: buf = m * buf + ratio * g + ratio * wd * w. No temporary
            # (g + wd * w) or ratio * (...) copies of every parameter: on CPU each fresh
            # allocation of that size is paid again in page faults at every step.
            torch._foreach_mul_(bufs, momentum)
            if group["lars"]:
                # All trust ratios as one vector: a handful of kernels per step instead of ~10
                # per parameter (~1,600 launches for ResNet-50, which cost more than the math).
                w = torch.stack(torch._foreach_norm(params))
                gn = torch.stack(torch._foreach_norm(grads))
                trust, eps = group["trust_coefficient"], group["eps"]
                ratio = torch.where((w > 0) & (gn > 0), trust * w / (gn + wd * w + eps), 1.0)
                torch._foreach_addcmul_(bufs, grads, list(ratio.unbind()))
                if wd:
                    torch._foreach_addcmul_(bufs, params, list((ratio * wd).unbind()))
            else:
                torch._foreach_add_(bufs, grads)
                if wd:
                    torch._foreach_add_(bufs, params, alpha=wd)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss


def refuse_fused_sgd(cfg: OptimConfig) -> None:
    if cfg.name == "sgd" and cfg.implementation == "fused":
        raise UserError(
            "optim.implementation=fused is not offered for SGD (torch's fused SGD breaks on "
            "late-starting parameters and on fp16 skipped steps): use auto or foreach"
        )


def build_optimizer(cfg: OptimConfig, groups: list[dict], device: torch.device):
    lr = cfg.base_lr  # overwritten every step by the schedule
    device = torch.device(device)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    trust_coefficient=cfg.trust_coefficient)  # fmt: skip
    for group in groups:
        group.setdefault("weight_decay", cfg.weight_decay)
        group.pop("lars", None)
    refuse_fused_sgd(cfg)
    impl = {}
    if cfg.implementation in ("foreach", "fused"):
        impl = {cfg.implementation: True}
    elif cfg.implementation == "auto" and device.type in ("cuda", "cpu"):
        # AdamW: one kernel per step, on CPU ~4x faster than foreach/loop
        impl = {"fused": True} if cfg.name == "adamw" else {"foreach": True}
    elif cfg.implementation == "loop":
        impl = {"foreach": False}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, **impl)
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, **impl)
