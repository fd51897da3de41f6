"""The EMA update (one lerp): exact at the ends of the momentum range, as accurate as the
two-pass formula against float64, and buffers mirrored on request."""

from __future__ import annotations

import copy

import torch
from torch import nn

from common.models.ema import ema_update_


def pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    student = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student(torch.randn(5, 8))  # moves the student's BN statistics only
    return teacher, student


def test_momentum_one_keeps_and_zero_copies_exactly():
    teacher, student = pair()
    before = copy.deepcopy(teacher.state_dict())
    ema_update_(teacher, student, 1.0)
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    ema_update_(teacher, student, 0.0)
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s)
    # buffers were not copied: the teacher's BN statistics are its own
    assert torch.equal(teacher[1].running_mean, before["1.running_mean"])


def test_copy_buffers_mirrors_the_student():
    teacher, student = pair()
    ema_update_(teacher, student, 0.9, copy_buffers=True)
    for t, s in zip(teacher.buffers(), student.buffers()):
        assert torch.equal(t, s)
    assert int(teacher[1].num_batches_tracked) == 1


def test_as_accurate_as_two_passes_against_float64():
    teacher, student = pair()
    two_pass = [p.detach().clone() for p in teacher.parameters()]
    ref = [p.detach().double() for p in teacher.parameters()]
    s = [p.detach() for p in student.parameters()]
    for k in range(300):
        m = 0.99 + 0.01 * k / 300
        ema_update_(teacher, student, m)
        torch._foreach_mul_(two_pass, m)
        torch._foreach_add_(two_pass, s, alpha=1 - m)
        torch._foreach_mul_(ref, m)
        torch._foreach_add_(ref, [x.double() for x in s], alpha=1 - m)

    def error(params):
        return max(float((p.double() - r).abs().max() / r.abs().max()) for p, r in zip(params, ref))

    lerp_error = error(list(teacher.parameters()))
    assert lerp_error < 1e-5
    assert lerp_error <= 2 * error(two_pass)
