"""AlexNet for small images (the dataset-condensation benchmark variant): five convs
(5x5, 5x5, 3x3, 3x3, 3x3) with max pools after the 1st, 2nd and 5th, no classifier MLP.
28x28 inputs are padded to 32x32 by the first conv; pools are skipped once the map is 1x1."""

from __future__ import annotations

from torch import nn

from .layers import BN_MOMENTUM, FeatureModel, check_norm, first_conv_padding, make_norm, maybe_pool

# (output channels at width 128, kernel, pool after?); channels scale with width / 128.
ALEXNET_PLAN = ((128, 5, True), (192, 5, True), (256, 3, False), (192, 3, False), (192, 3, True))


def build_alexnet(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: int = 128,
    norm: str = "none",
    bn_momentum: float = BN_MOMENTUM,
) -> FeatureModel:
    check_norm(norm)
    layers: list[nn.Module] = []
    channels = in_channels
    padding = first_conv_padding(image_size, downsamplings=3, kernel=5)
    size = image_size + 2 * padding - 4
    for index, (base_channels, kernel, pool_after) in enumerate(ALEXNET_PLAN):
        out_channels = base_channels * width // 128
        pad = padding if index == 0 else kernel // 2
        layers += [
            nn.Conv2d(channels, out_channels, kernel, padding=pad),
            make_norm(norm, out_channels, bn_momentum=bn_momentum),
            nn.ReLU(),
        ]
        if pool_after:
            pool, size = maybe_pool(size, nn.MaxPool2d)
            layers.append(pool)
        channels = out_channels
    return FeatureModel(nn.Sequential(*layers), channels * size * size, num_classes)
