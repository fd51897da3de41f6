"""Daino's loss: DINO's self-distillation on unlabeled crops + cross-entropy on labeled images.

Pure functions (testable on CPU without a model) plus ``DainoLoss``, which owns the state DINO's
loss keeps between steps: the center of the teacher outputs (a buffer, so it is checkpointed
with the method) and the per-epoch teacher-temperature schedule.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import dist
from common.losses import soft_cross_entropy


def teacher_temperature_schedule(
    warmup_temp: float, temp: float, warmup_epochs: int, epochs: int
) -> np.ndarray:
    """Per-epoch teacher temperatures, DINO's convention: ``linspace(warmup, temp, warmup_epochs)``
    (both ends included, so ``temp`` is reached at epoch ``warmup_epochs - 1``), then ``temp``.

    A low temperature early sharpens the targets while the teacher is still weak; epochs beyond a
    short run's end are simply cut off.
    """
    warmup_epochs = max(int(warmup_epochs), 0)
    ramp = np.linspace(warmup_temp, temp, warmup_epochs)
    rest = np.full(max(epochs - warmup_epochs, 0), float(temp))
    return np.concatenate([ramp, rest])[:epochs].astype(np.float64)


def teacher_probabilities(
    teacher_logits: torch.Tensor, center: torch.Tensor, temperature: float
) -> torch.Tensor:
    """DINO's pseudo-label: softmax((teacher logits - center) / temperature), in float32.

    Centering keeps one class from dominating, sharpening keeps targets from going uniform.
    """
    return F.softmax((teacher_logits.float() - center) / temperature, dim=-1)


def dino_cross_view_loss(
    student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor], student_temp: float
) -> torch.Tensor:
    """Every student crop predicts every teacher (global) crop except its own view.

    ``student_logits[v]``: B x K logits of crop v (globals first, so student crop t and teacher
    crop t are the same view); ``teacher_probs[t]``: B x K targets of global crop t. Returns the
    mean of CE(softmax(student_v / tau), teacher_t) over all pairs v != t.

    One log-softmax over all student crops stacked (V x B x K), then all T x V cross-entropies
    as one matrix product of the flattened targets and log-probabilities.
    """
    num_student, num_teacher = len(student_logits), len(teacher_probs)
    pairs = num_student * num_teacher - min(num_student, num_teacher)
    if pairs <= 0:
        raise ValueError("the DINO loss needs at least two crops")
    shapes = {tuple(x.shape) for x in [*student_logits, *teacher_probs]}
    if len(shapes) != 1:
        return _dino_cross_view_loss_loop(student_logits, teacher_probs, student_temp, pairs)
    batch = student_logits[0].shape[0]
    log_p = F.log_softmax(torch.stack(student_logits).float() / student_temp, dim=-1)
    targets = torch.stack(teacher_probs).float()
    ce = -(targets.reshape(num_teacher, -1) @ log_p.reshape(num_student, -1).t())  # T x V
    same = min(num_student, num_teacher)
    diagonal = torch.diagonal(ce[:same, :same]).sum()
    return (ce.sum() - diagonal) / (batch * pairs)


def _dino_cross_view_loss_loop(
    student_logits: list[torch.Tensor],
    teacher_probs: list[torch.Tensor],
    student_temp: float,
    pairs: int,
) -> torch.Tensor:
    """The same mean, pair by pair (crops of different batch sizes)."""
    total = student_logits[0].new_zeros((), dtype=torch.float32)
    for t, target in enumerate(teacher_probs):
        for v, logits in enumerate(student_logits):
            if v != t:
                total = total + soft_cross_entropy(logits / student_temp, target)
    return total / pairs


@torch.no_grad()
def batch_center(teacher_logits: torch.Tensor) -> torch.Tensor:
    """1 x K mean of the teacher outputs over the global batch (all ranks, all global crops).

    Sums and counts are all-reduced together, so W processes give exactly the center one process
    would compute on their concatenated batches.
    """
    logits = teacher_logits.detach().float()
    stats = torch.cat([logits.sum(dim=0), logits.new_tensor([float(logits.shape[0])])])
    dist.all_reduce_(stats)
    return (stats[:-1] / stats[-1]).unsqueeze(0)


class DainoLoss(nn.Module):
    """DINO's unlabeled loss with its center buffer and teacher-temperature schedule."""

    def __init__(
        self,
        num_classes: int,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 10,
        center_momentum: float = 0.9,
        epochs: int = 100,
    ):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self._temps = (warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)
        self.register_buffer("center", torch.zeros(1, num_classes))
        self.set_epochs(epochs)

    def set_epochs(self, epochs: int) -> None:
        """(Re)build the per-epoch schedule once the run length is known."""
        self.teacher_temps = teacher_temperature_schedule(*self._temps, max(epochs, 1))

    def teacher_temperature(self, epoch: int) -> float:
        return float(self.teacher_temps[min(epoch, len(self.teacher_temps) - 1)])

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """center = m * center + (1 - m) * mean of this step's teacher outputs (global batch)."""
        m = self.center_momentum
        self.center.mul_(m).add_(batch_center(teacher_logits), alpha=1.0 - m)

    def forward(
        self, student_logits: list[torch.Tensor], teacher_logits: list[torch.Tensor], epoch: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Loss of this step (targets use the center *before* it absorbs this batch, like DINO).

        Returns the loss and the teacher targets (for monitoring).
        """
        temp = self.teacher_temperature(epoch)
        probs = [teacher_probabilities(t.detach(), self.center, temp) for t in teacher_logits]
        loss = dino_cross_view_loss(student_logits, probs, self.student_temp)
        self.update_center(torch.cat(teacher_logits))
        return loss, probs
