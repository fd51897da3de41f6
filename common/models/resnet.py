"""ResNet backbones returning pooled features (no classifier).

ImageNet ResNets are torchvision's, so official SwAV/DINO checkpoints load by key name. CIFAR
variants swap the 7x7/stride-2 stem and max-pool for a 3x3/stride-1 conv, the usual choice for
32 px images. ``resnet_mini`` is a narrow 4-stage BasicBlock net for CPU demos and tests.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet


def _cifar_stem(model: tv_resnet.ResNet) -> tv_resnet.ResNet:
    width = model.conv1.out_channels
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def torchvision_resnet(depth: int, cifar_stem: bool = False, zero_init_residual: bool = True):
    """Torchvision ResNet-``depth`` with ``fc`` removed; returns (module, feature dim)."""
    builders = {18: tv_resnet.resnet18, 34: tv_resnet.resnet34, 50: tv_resnet.resnet50}
    model = builders[depth](weights=None, zero_init_residual=zero_init_residual)
    dim = model.fc.in_features
    model.fc = nn.Identity()
    if cifar_stem:
        _cifar_stem(model)
    return model, dim


class MiniResNet(nn.Module):
    """Narrow ResNet (BasicBlocks, one per stage) for quick CPU runs on small images."""

    def __init__(self, widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, in_ch = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stage = []
            for b in range(n):
                down = None
                if b == 0 and (stride != 1 or in_ch != w):
                    down = nn.Sequential(
                        nn.Conv2d(in_ch, w, 1, stride, bias=False), nn.BatchNorm2d(w)
                    )
                stage.append(tv_resnet.BasicBlock(in_ch, w, stride if b == 0 else 1, down))
                in_ch = w
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return torch.flatten(self.pool(x), 1)


class WideBasic(nn.Module):
    """Pre-activation wide residual block (Zagoruyko & Komodakis)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, momentum=0.001)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, momentum=0.001)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.act(self.bn2(self.conv1(out))))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-k for 32 px images, the backbone of FixMatch/FlexMatch/SimMatch on CIFAR-100."""

    def __init__(self, depth: int = 28, widen: int = 8):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WideResNet depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks, in_ch = [], widths[0]
        for stage, w in enumerate(widths[1:]):
            for b in range(n):
                blocks.append(WideBasic(in_ch, w, (1 if stage == 0 else 2) if b == 0 else 1))
                in_ch = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_ch, momentum=0.001)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.blocks(self.conv1(x))))
        return torch.flatten(self.pool(x), 1)
