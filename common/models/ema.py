"""Exponential moving average of a network (momentum teacher / momentum encoder)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update_(
    teacher: nn.Module, student: nn.Module, momentum: float, copy_buffers: bool = False
) -> None:
    """teacher = momentum * teacher + (1 - momentum) * student, parameter by parameter.

    Buffers (BN running statistics) are left to the teacher's own forward passes, as in DINO,
    unless ``copy_buffers`` asks to mirror the student's.
    """
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student must have the same parameters")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1.0 - momentum)
    if copy_buffers:
        for tb, sb in zip(teacher.buffers(), student.buffers()):
            tb.copy_(sb)
