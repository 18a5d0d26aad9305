"""Shared pieces: the feature-model base class, normalisation layers and LeCun-normal init."""

from __future__ import annotations

import math

import torch
from torch import nn

NORMS = ("none", "batch", "instance")
# Flax momentum 0.1 keeps 0.1 of the old statistic: running = 0.1 * old + 0.9 * batch, which is
# torch's momentum=0.9 (torch weights the NEW batch by momentum).
BN_MOMENTUM = 0.9
# Std of a unit normal truncated to [-2, 2]; dividing by it restores unit variance (as flax does).
_TRUNCATED_STD = 0.87962566103423978


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def make_norm(norm: str, channels: int, *, bn_momentum: float = BN_MOMENTUM) -> nn.Module:
    """The norm layer; instance norm is a per-channel GroupNorm (affine, valid on 1x1 maps)."""
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels, momentum=bn_momentum)
    if norm == "instance":
        return nn.GroupNorm(channels, channels)
    return nn.Identity()


@torch.no_grad()
def lecun_normal_(module: nn.Module) -> None:
    """Weights ~ truncated normal with variance 1 / fan_in; biases zero (conv and linear)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            fan_in = layer.weight[0].numel()
            truncated_normal_(layer.weight, std=math.sqrt(1.0 / fan_in) / _TRUNCATED_STD)
            if layer.bias is not None:
                layer.bias.zero_()


# Phi(2), the standard normal CDF at the truncation point.
_CDF_AT_2 = 0.5 * (1.0 + math.erf(2.0 / math.sqrt(2.0)))


@torch.no_grad()
def truncated_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Fill ``tensor`` with N(0, std^2) draws truncated to [-2 std, 2 std], in place.

    By the inverse CDF (a uniform draw in [Phi(-2), Phi(2)] mapped through the normal quantile,
    as flax's initialiser does), not ``nn.init.trunc_normal_``: recent torch versions reject
    and redraw there, which reads ``mask.any()`` back to the host for every weight (a
    synchronisation on a GPU, at every re-initialisation of a pool model) and draws differently
    from older versions. Here the draws for a seed are the same on every torch version.
    """
    bound = 2.0 * _CDF_AT_2 - 1.0  # erf(sqrt(2)): the uniform's range in erf space
    tensor.uniform_(-bound, bound).erfinv_().mul_(std * math.sqrt(2.0))
    return tensor.clamp_(-2.0 * std, 2.0 * std)  # rounding could step just outside


def first_conv_padding(image_size: int, downsamplings: int, kernel: int = 3) -> int:
    """'Same' padding, plus enough to round the input up to a multiple of 2^downsamplings.

    This pads 28x28 inputs to 32x32 (the protocol's Conv); odd shortfalls get no extra padding.
    """
    same = kernel // 2
    step = 2**downsamplings
    extra = -image_size % step
    return same + extra // 2 if extra % 2 == 0 else same


class FeatureModel(nn.Module):
    """A network split as ``features`` (B, feature_dim) followed by a linear ``head``."""

    feature_dim: int

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)
        lecun_normal_(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def maybe_pool(size: int, pool: type[nn.Module]) -> tuple[nn.Module, int]:
    """A 2x2 pool while the map is at least 2x2; identity once it is 1x1 (tiny inputs)."""
    if size >= 2:
        return pool(2), size // 2
    return nn.Identity(), size
