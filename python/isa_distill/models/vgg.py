"""VGG-11 for small images: conv3x3 -> [norm] -> ReLU stacks with 2x2 max pools, no classifier
MLP (the linear head reads the flattened map: 8 * width values for 32x32 or 28x28 inputs).
Pools are skipped once the map is 1x1, so 8x8 inputs work."""

from __future__ import annotations

from torch import nn

from .layers import BN_MOMENTUM, FeatureModel, check_norm, make_norm, maybe_pool

# Multiples of the width; "M" is a 2x2 max pool.
VGG11_PLAN = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")


def build_vgg11(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: int = 64,
    norm: str = "batch",
    bn_momentum: float = BN_MOMENTUM,
) -> FeatureModel:
    check_norm(norm)
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for step in VGG11_PLAN:
        if step == "M":
            pool, size = maybe_pool(size, nn.MaxPool2d)
            layers.append(pool)
            continue
        out_channels = width * step
        layers += [
            nn.Conv2d(channels, out_channels, 3, padding=1),
            make_norm(norm, out_channels, bn_momentum=bn_momentum),
            nn.ReLU(),
        ]
        channels = out_channels
    return FeatureModel(nn.Sequential(*layers), channels * size * size, num_classes)
