"""ResNet-18 for small images: a 3x3 stride-1 stem, four stages of two basic blocks, global
average pooling (features = 8 * width = 512 values with the default width 64)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import BN_MOMENTUM, FeatureModel, check_norm, make_norm


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str, momentum):
        super().__init__()
        bias = norm == "none"  # a bias before a norm layer is redundant
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=bias)
        self.norm1 = make_norm(norm, out_channels, bn_momentum=momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=bias)
        self.norm2 = make_norm(norm, out_channels, bn_momentum=momentum)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias),
                make_norm(norm, out_channels, bn_momentum=momentum),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


def build_resnet18(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: int = 64,
    norm: str = "batch",
    bn_momentum: float = BN_MOMENTUM,
) -> FeatureModel:
    check_norm(norm)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 3, 1, 1, bias=norm == "none"),
        make_norm(norm, width, bn_momentum=bn_momentum),
        nn.ReLU(),
    ]
    channels = width
    for stage in range(4):
        out_channels = width * 2**stage
        stride = 1 if stage == 0 else 2
        layers += [
            BasicBlock(channels, out_channels, stride, norm, bn_momentum),
            BasicBlock(out_channels, out_channels, 1, norm, bn_momentum),
        ]
        channels = out_channels
    layers.append(nn.AdaptiveAvgPool2d(1))
    return FeatureModel(nn.Sequential(*layers), channels, num_classes)
