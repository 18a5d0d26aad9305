"""Networks whose flattened ``features(x)`` feed the kernel and whose ``forward`` adds a head.

Cross-architecture defaults follow the paper's table: Conv none (evaluation) or batch
(distillation), ResNet-18 none or batch, VGG-11 batch, AlexNet none. Every norm is accepted
for every architecture.
"""

from __future__ import annotations

from torch import nn

from .alexnet import build_alexnet
from .conv import build_conv
from .layers import BN_MOMENTUM, NORMS, FeatureModel, lecun_normal_
from .resnet import build_resnet18
from .vgg import build_vgg11

_BUILDERS = {
    "conv": build_conv,
    "resnet18": build_resnet18,
    "vgg11": build_vgg11,
    "alexnet": build_alexnet,
}
KNOWN_MODELS = tuple(_BUILDERS)
# Base width when ``width=None``.
DEFAULT_WIDTHS = {"conv": 128, "resnet18": 64, "vgg11": 64, "alexnet": 128}


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: int | None = None,
    depth: int = 3,
    norm: str = "none",
    bn_momentum: float = BN_MOMENTUM,
) -> nn.Module:
    """Build a freshly initialised (LeCun normal, zero bias) ``FeatureModel``.

    ``width`` is the base channel count (``None``: ``DEFAULT_WIDTHS[name]``, 128 for conv);
    ``depth`` applies to ``conv`` only.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}")
    for arg, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("image_size", image_size),
        ("width", DEFAULT_WIDTHS[name] if width is None else width),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    options = dict(
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        width=DEFAULT_WIDTHS[name] if width is None else width,
        norm=norm,
        bn_momentum=bn_momentum,
    )
    if name == "conv":
        options["depth"] = depth
    return _BUILDERS[name](**options)


__all__ = ["BN_MOMENTUM", "KNOWN_MODELS", "NORMS", "FeatureModel", "build_model", "lecun_normal_"]
