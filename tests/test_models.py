"""Every architecture: feature and logit shapes on 8x8, 28x28 and 32x32 inputs, each norm."""

import math

import pytest
import torch

from isa_distill.models import KNOWN_MODELS, NORMS, build_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("name", KNOWN_MODELS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize(("size", "channels"), [(8, 1), (28, 1), (32, 3)])
def test_features_and_logits_shapes(name, norm, size, channels):
    model = build_model(
        name, in_channels=channels, num_classes=7, image_size=size, width=8, norm=norm
    )
    x = torch.randn(3, channels, size, size, generator=torch.Generator().manual_seed(0))
    features, logits = model.features(x), model(x)
    assert features.shape == (3, model.feature_dim)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    assert torch.allclose(logits, model.head(features), atol=1e-5)


@pytest.mark.parametrize("size", [28, 32])
def test_conv_features_match_the_protocol(size):
    model = build_model("conv", in_channels=1, num_classes=10, image_size=size)
    assert model.feature_dim == 4 * 4 * 512  # 28x28 is padded to 32x32 by the first conv
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512]


def test_conv_norm_sits_before_blocks_two_and_three_only():
    model = build_model("conv", in_channels=3, num_classes=10, image_size=32, norm="batch")
    kinds = [type(m).__name__ for m in model.body]
    assert kinds.index("BatchNorm2d") > kinds.index("AvgPool2d") and kinds.count("BatchNorm2d") == 2
    assert all(m.momentum == 0.9 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_lecun_normal_init_and_zero_bias():
    torch.manual_seed(0)
    model = build_model("conv", in_channels=3, num_classes=10, image_size=32, width=64)
    conv = model.body[0]
    assert float(conv.bias.detach().abs().max()) == 0.0
    fan_in = conv.weight[0].numel()
    assert float(conv.weight.detach().std()) == pytest.approx(1 / math.sqrt(fan_in), rel=0.15)


def test_truncated_normal_matches_the_distribution_and_reads_nothing_back(monkeypatch):
    from scipy import stats

    from isa_distill.models.layers import truncated_normal_

    reads = []

    def spy(name):
        real = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            reads.append(name)
            return real(self, *args, **kwargs)

        return read

    for name in ("item", "__bool__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    torch.manual_seed(0)
    values = truncated_normal_(torch.empty(200_000), std=0.5)
    assert reads == []  # no value goes back to the host: no GPU synchronisation
    monkeypatch.undo()
    assert float(values.min()) >= -1.0 and float(values.max()) <= 1.0
    # Kolmogorov-Smirnov against scipy's normal truncated at +-2 std.
    statistic = stats.kstest(values.double().numpy(), stats.truncnorm(-2, 2, scale=0.5).cdf).statistic
    assert statistic < 0.005, statistic
    torch.manual_seed(0)
    assert torch.equal(truncated_normal_(torch.empty(200_000), std=0.5), values)


def test_conv_too_deep_for_the_image_is_a_clear_error():
    with pytest.raises(ValueError, match="depth"):
        build_model("conv", in_channels=1, num_classes=10, image_size=8, depth=4)


def test_unknown_model_and_bad_norm_are_rejected():
    with pytest.raises(ValueError, match="known models"):
        build_model("vit", in_channels=3, num_classes=10, image_size=32)
    with pytest.raises(ValueError, match="norm"):
        build_model("conv", in_channels=3, num_classes=10, image_size=32, norm="layer")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("conv", in_channels=3, num_classes=0, image_size=32)
