"""Batch norm with statistics over the global batch, on any device.

``torch.nn.SyncBatchNorm`` only runs on GPUs; on CPU (gloo) we all-reduce the per-channel sums
ourselves through the autograd-aware ``torch.distributed.nn`` collective, so W processes with
batch B normalise exactly like one process with batch W*B (up to float rounding).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed import nn as dist_nn

from common import dist


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Drop-in for BatchNorm1d/2d (same parameter and buffer names) syncing statistics."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_dist() and dist.world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        xf = x.float()
        count = torch.tensor([x.numel() / channels], dtype=torch.float32, device=x.device)
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        total = dist_nn.functional.all_reduce(local)
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum
                if momentum is None:  # cumulative moving average
                    momentum = 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm with a synchronised one: torch's on CUDA, ours elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        new = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        new.to(next(iter(module.state_dict().values())).device)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert(child))
    return module
