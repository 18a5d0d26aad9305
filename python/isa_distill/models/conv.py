"""The protocol's "Conv" network (FRePo's ConvNet).

Block i (0-based) = [norm, blocks i >= 1 only, before the conv] -> conv 3x3 with
width * 2^i channels and bias -> ReLU -> 2x2 average pool. Features are the flattened output:
width * 2^(depth-1) * (S / 2^depth)^2 values, S the (padded) input size; 8192 for 32x32 inputs
with width 128 and depth 3. 28x28 inputs are padded to 32x32 by the first conv. The input must be
at least 2^depth pixels wide (8x8 digits work with the default depth 3: 8 -> 4 -> 2 -> 1).
"""

from __future__ import annotations

from torch import nn

from .layers import BN_MOMENTUM, FeatureModel, check_norm, first_conv_padding, make_norm


def build_conv(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: int = 128,
    depth: int = 3,
    norm: str = "none",
    bn_momentum: float = BN_MOMENTUM,
) -> FeatureModel:
    check_norm(norm)
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if image_size < 2**depth:
        raise ValueError(
            f"image_size={image_size} is too small for depth={depth} (needs >= {2**depth}: each "
            "block halves the map); use a smaller depth"
        )
    padding = first_conv_padding(image_size, depth)
    size = image_size + 2 * padding - 2
    layers: list[nn.Module] = []
    channels = in_channels
    for block in range(depth):
        out_channels = width * 2**block
        if block > 0:
            layers.append(make_norm(norm, channels, bn_momentum=bn_momentum))
        layers += [
            nn.Conv2d(channels, out_channels, 3, padding=padding if block == 0 else 1),
            nn.ReLU(),
            nn.AvgPool2d(2),
        ]
        channels = out_channels
        size //= 2
    return FeatureModel(nn.Sequential(*layers), channels * size * size, num_classes)
