"""A faster bf16 weight gradient for the small, deep convolutions of CPU-scale networks.

On a CPU under bf16 autocast, oneDNN's weight-gradient kernel for convolutions with only a few
output pixels (the last stages of a ResNet at 24 px, 12 px local crops) is 3-7x slower than their
forward; in fp32 it costs about one forward (benchmarks/RESULTS.md, issue 15, part 15). The
same gradient is a convolution too: correlate the input with the output gradient, the batch taking
the place of the input channels (dW[o, i] = sum_n x[n, i] * dy[n, o], the output gradient used as
a kernel dilated by the forward's stride). That path runs on oneDNN's fast forward kernel.

``train.small_conv_wgrad: swapped`` turns it on (``native``, the default, leaves every
convolution alone). It applies only where it measured faster: a CPU, bf16 autocast, ungrouped
convolutions with zero padding and at most ``MAX_OUTPUT_PIXELS`` output pixels. The choice is a
rule on the config and the input shapes, never a timing, so a resumed run computes with the
same kernels as the run it resumes. The forward and the input gradient are the native ones;
the weight gradient agrees with the native one to bf16 rounding (1e-5 to 1e-4 relative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# 4 x 4 outputs and fewer: resnet_mini's last stage at 24 px (3 x 3) and its last two at 12 px.
# At 6 x 6 the swapped form measured slower again (24 px and 12 px outputs: 5-20x slower).
MAX_OUTPUT_PIXELS = 16


class _SwappedWeightGradConv(torch.autograd.Function):
    """conv2d(x, w, b) whose backward computes dW as a convolution of x by dy."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, stride, padding, dilation, False, [0, 0], 1,
                [True, False, False],
            )[0]  # fmt: skip
        if ctx.needs_input_grad[1]:
            # (C_in, N, H, W) * (C_out, N, H_out, W_out) -> (C_in, C_out, kh', kw'); the roles of
            # stride and dilation swap. kh' >= kh when the stride skipped trailing input rows.
            grad_w = F.conv2d(x.transpose(0, 1), grad_out.transpose(0, 1), None, dilation,
                              padding, stride)  # fmt: skip
            kh, kw = weight.shape[2:]
            grad_w = grad_w[:, :, :kh, :kw].transpose(0, 1)
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def output_pixels(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """Output height x width of ``conv`` on ``x`` (numeric padding)."""
    size = []
    for dim in range(2):
        span = conv.dilation[dim] * (conv.kernel_size[dim] - 1) + 1
        size.append((x.shape[2 + dim] + 2 * conv.padding[dim] - span) // conv.stride[dim] + 1)
    return size[0] * size[1]


class SmallConvWGrad2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state_dict) whose bf16 CPU weight gradient is swapped when
    its output has at most MAX_OUTPUT_PIXELS pixels; any other call is nn.Conv2d's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._swaps(x):
            return super().forward(x)
        dtype = torch.bfloat16
        with torch.autocast("cpu", enabled=False):  # cast as autocast would, then compute
            bias = None if self.bias is None else self.bias.to(dtype)
            return _SwappedWeightGradConv.apply(
                x.to(dtype), self.weight.to(dtype), bias, self.stride, self.padding, self.dilation
            )

    def _swaps(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dim() == 4
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and self.groups == 1
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and torch.is_grad_enabled()
            and output_pixels(self, x) <= MAX_OUTPUT_PIXELS
        )


def use_small_conv_wgrad(module: nn.Module) -> int:
    """Give every plain nn.Conv2d inside ``module`` the swapped bf16 weight gradient, in place
    (parameters, buffers and state_dict keys are unchanged). Returns how many were converted."""
    converted = 0
    for sub in module.modules():
        if type(sub) is nn.Conv2d:
            sub.__class__ = SmallConvWGrad2d
            converted += 1
    return converted
