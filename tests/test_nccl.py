"""The collectives of Sinkhorn-Knopp, Daino's centering and the metric reductions on NCCL.

One GPU cannot hold two NCCL ranks, so this forms a process group of one NCCL rank: every
collective then really runs through NCCL on CUDA tensors (dtype, contiguity and in-place rules
are NCCL's, which gloo on CPU does not check) and must give what the single-process path gives.
Skipped without a GPU; the 2-process equalities are proven with gloo in test_dist.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as torch_dist

from common import dist
from daino.loss import batch_center
from suave.sinkhorn import sinkhorn_knopp

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch_dist.is_nccl_available()), reason="needs NCCL + GPU"
)


def test_collectives_through_nccl_equal_single_process():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 100, generator=g)
    logits = torch.randn(128, 1000, generator=g)
    reference_q = sinkhorn_knopp(scores, 0.05, 3).double()  # CPU, before the group forms
    nccl_group = torch.device("cuda", 0)
    torch_dist.init_process_group(
        "nccl", store=torch_dist.HashStore(), rank=0, world_size=1, device_id=nccl_group
    )
    try:
        check_collectives(scores, logits, reference_q, nccl_group)
    finally:
        torch_dist.destroy_process_group()


def check_collectives(scores, logits, reference_q, nccl_group: torch.device) -> None:
    assert dist.is_dist() and dist.world_size() == 1
    q = sinkhorn_knopp(scores.to(nccl_group).half(), 0.05, 3)
    torch.testing.assert_close(q.cpu().double(), reference_q, rtol=0, atol=2e-2)
    q32 = sinkhorn_knopp(scores.to(nccl_group), 0.05, 3)
    torch.testing.assert_close(q32.cpu().double(), reference_q, rtol=1e-4, atol=1e-5)
    center = batch_center(logits.to(nccl_group).bfloat16())
    torch.testing.assert_close(center.cpu(), logits.mean(0, keepdim=True), rtol=1e-2, atol=1e-2)
    values = torch.tensor([1.0, 2.0], device=nccl_group)
    assert dist.all_reduce_(values, "mean").tolist() == [1.0, 2.0]
    gathered = dist.all_gather_cat(torch.arange(4.0, device=nccl_group).view(2, 2))
    assert gathered.shape == (2, 2)
    dist.barrier()
