"""Standardisation + (block) ZCA: exact inverse, whitening, state round trip."""

import pytest
import torch

from isa_distill.data import preprocess
from isa_distill.data.preprocess import Preprocessor, from_blocks, to_blocks, zca_block_side


def correlated_images(n=600, channels=2, size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    dim = channels * size * size
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    latent = torch.rand(n, dim, generator=generator, dtype=torch.float64)
    return (latent @ mixing / dim + 0.5).float().reshape(n, channels, size, size)


def test_standardisation_gives_zero_mean_unit_std_per_channel():
    images = correlated_images()
    out = Preprocessor.fit(images, zca=False).transform(images)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out.std(dim=(0, 2, 3), correction=0), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("zca", [False, True])
def test_inverse_undoes_transform(zca):
    images = correlated_images()
    preprocessor = Preprocessor.fit(images, zca=zca)
    transformed = preprocessor.transform(images[:50])
    assert transformed.shape == images[:50].shape and transformed.dtype == torch.float32
    assert not torch.allclose(transformed, images[:50], atol=1e-2)
    assert torch.allclose(preprocessor.inverse(transformed), images[:50], atol=1e-4)


def test_zca_whitens_train_covariance_when_unregularised():
    images = correlated_images()
    out = Preprocessor.fit(images, zca=True, zca_reg=0.0).transform(images).flatten(1).double()
    cov = out.T @ out / len(out)
    assert torch.allclose(cov, torch.eye(cov.shape[0], dtype=torch.float64), atol=1e-3)


def test_zca_regulariser_shrinks_eigenvalues_as_the_protocol_says():
    images = correlated_images()
    preprocessor = Preprocessor.fit(images, zca=True, zca_reg=0.1)
    out = preprocessor.transform(images).flatten(1).double()
    whitened_eigs = torch.linalg.eigvalsh(out.T @ out / len(out)).sort().values
    s = preprocessor.zca_eigenvalues
    ridge = 0.1 * s.sum() / s.numel()
    assert torch.allclose(whitened_eigs, (s / (s + ridge)).sort().values, atol=1e-4)
    assert float(whitened_eigs.max()) < 1.0


def test_state_dict_round_trip_reproduces_transform():
    images = correlated_images()
    preprocessor = Preprocessor.fit(images, zca=True)
    state = preprocessor.state_dict()
    assert state["zca"] is True and isinstance(state["zca_reg"], float)
    restored = Preprocessor.from_state_dict(state)
    assert torch.allclose(restored.transform(images), preprocessor.transform(images), atol=1e-5)
    assert torch.allclose(restored.inverse(restored.transform(images)), images, atol=1e-4)


def test_state_dict_missing_keys_is_a_clear_error():
    state = Preprocessor.fit(correlated_images(), zca=True).state_dict()
    del state["zca_eigenvectors"]
    with pytest.raises(ValueError, match="zca_eigenvectors"):
        Preprocessor.from_state_dict(state)


def test_wrong_input_shape_names_the_problem():
    preprocessor = Preprocessor.fit(correlated_images(), zca=True)
    with pytest.raises(ValueError, match="channels"):
        preprocessor.transform(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="values per image"):
        preprocessor.transform(torch.zeros(2, 2, 5, 5))


def test_constant_channel_cannot_be_standardised():
    with pytest.raises(ValueError, match="constant"):
        Preprocessor.fit(torch.zeros(10, 1, 4, 4), zca=False)


# ----------------------------------------------------------------------------- block ZCA


def mean_block_covariance(out, side):
    blocks = to_blocks(out.double(), side)
    rows = blocks.reshape(-1, blocks.shape[-1])
    return rows.T @ rows / len(rows)


@pytest.fixture
def small_full_zca_limit(monkeypatch):
    """A full ZCA of 2 x 4 x 4 = 32 values is 'too large': blocks of 2 x 2 x 2 = 8 fit."""
    monkeypatch.setattr(preprocess, "MAX_ZCA_DIM", 8)


def test_block_zca_is_picked_automatically_when_the_full_one_is_too_large(small_full_zca_limit):
    images = correlated_images()
    preprocessor = Preprocessor.fit(images, zca=True)
    assert preprocessor.zca_block == 2
    assert preprocessor.zca_eigenvectors.shape == (8, 8)
    transformed = preprocessor.transform(images[:50])
    assert not torch.allclose(transformed, images[:50], atol=1e-2)
    assert torch.allclose(preprocessor.inverse(transformed), images[:50], atol=1e-4)


def test_block_side_follows_the_official_choice_for_128_pixel_images():
    assert zca_block_side(3, 128, 128) == 64  # ImageNette / ImageWoof at 128 px
    assert zca_block_side(3, 64, 64) is None  # a full ZCA still fits
    assert zca_block_side(3, 96, 96) == 48


def test_blocks_are_the_interleaved_pixel_grids_and_invert_exactly():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    blocks = to_blocks(x, 2)  # strides 2 (rows) and 3 (columns): 6 blocks of 3 * 2 * 2 values
    assert blocks.shape == (2, 6, 12)
    assert torch.equal(blocks[:, 0], x[:, :, 0::2, 0::3].reshape(2, 12))
    assert torch.equal(blocks[:, 1 * 3 + 2], x[:, :, 1::2, 2::3].reshape(2, 12))
    assert torch.equal(from_blocks(blocks, x.shape, 2), x)


def test_block_zca_whitens_the_mean_block_covariance_when_unregularised(small_full_zca_limit):
    images = correlated_images()
    out = Preprocessor.fit(images, zca=True, zca_reg=0.0).transform(images)
    cov = mean_block_covariance(out, 2)
    assert torch.allclose(cov, torch.eye(8, dtype=torch.float64), atol=1e-3)


def test_block_zca_regulariser_follows_the_full_zca_rule(small_full_zca_limit):
    images = correlated_images()
    preprocessor = Preprocessor.fit(images, zca=True, zca_reg=0.1)
    cov = mean_block_covariance(preprocessor.transform(images), 2)
    s = preprocessor.zca_eigenvalues
    ridge = 0.1 * s.sum() / s.numel()  # trace of the mean block covariance / d
    whitened_eigs = torch.linalg.eigvalsh(cov).sort().values
    assert torch.allclose(whitened_eigs, (s / (s + ridge)).sort().values, atol=1e-4)


def test_block_zca_acts_on_each_block_alone(small_full_zca_limit):
    images = correlated_images()
    preprocessor = Preprocessor.fit(images, zca=True)
    x = images[:3].clone()
    changed = x.clone()
    changed[:, :, 1::2, 0::2] += 0.3  # only block (1, 0) of the 2 x 2 interleaved grid
    difference = (preprocessor.transform(changed) - preprocessor.transform(x)).abs()
    inside = torch.zeros_like(difference, dtype=torch.bool)
    inside[:, :, 1::2, 0::2] = True
    assert float(difference[inside].max()) > 0.01
    assert float(difference[~inside].max()) < 1e-5


def test_block_zca_state_round_trip(small_full_zca_limit):
    images = correlated_images()
    preprocessor = Preprocessor.fit(images, zca=True)
    state = preprocessor.state_dict()
    assert state["zca_block"] == 2
    restored = Preprocessor.from_state_dict(state)
    assert restored.zca_block == 2
    assert torch.equal(restored.transform(images), preprocessor.transform(images))


def test_a_block_the_size_of_the_image_is_the_full_zca_and_old_states_load_as_full():
    images = correlated_images()
    full = Preprocessor.fit(images, zca=True, zca_block=4)
    assert full.zca_block is None and full.state_dict()["zca_block"] is None
    old_state = full.state_dict()
    del old_state["zca_block"]  # written before block ZCA existed: a full ZCA
    assert torch.equal(Preprocessor.from_state_dict(old_state).transform(images),
                       full.transform(images))  # fmt: skip


def test_bad_block_requests_name_the_problem():
    images = correlated_images()
    with pytest.raises(ValueError, match="zca_block=3 must divide"):
        Preprocessor.fit(images, zca=True, zca_block=3)
    with pytest.raises(ValueError, match="zca_block must be a positive int"):
        Preprocessor.fit(images, zca=True, zca_block=0)
    preprocessor = Preprocessor.fit(images, zca=True, zca_block=2)
    with pytest.raises(ValueError, match="divisible by 2"):
        preprocessor.transform(torch.zeros(2, 2, 16, 1))
    state = preprocessor.state_dict()
    state["zca_block"] = 1
    with pytest.raises(ValueError, match="1-pixel block"):
        Preprocessor.from_state_dict(state)


# ----------------------------------------------------------------------------- variants for imports


def test_given_constants_are_kept_and_an_absolute_ridge_is_stored_as_its_relative_value():
    images = torch.rand(30, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    p = Preprocessor.fit(images, zca=True, mean=[0.5, 0.25], std=[0.2, 0.4], zca_reg=0.1,
                         zca_reg_absolute=True)  # fmt: skip
    assert p.mean.tolist() == pytest.approx([0.5, 0.25]) and p.std.tolist() == pytest.approx(
        [0.2, 0.4])  # fmt: skip
    assert p.zca_ridge == pytest.approx(0.1)
    with pytest.raises(ValueError, match="mean and std go together"):
        Preprocessor.fit(images, mean=[0.5, 0.25])
    with pytest.raises(ValueError, match="need 2 values"):
        Preprocessor.fit(images, mean=[0.5], std=[0.2])


def test_layer_norm_state_round_trip_and_states_without_it_load_as_before():
    images = torch.rand(30, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    p = Preprocessor.fit(images, zca=True, zca_center=False, layer_norm=True)
    assert p.layer_norm and float(p.zca_mean.abs().max()) == 0.0
    restored = Preprocessor.from_state_dict(p.state_dict())
    assert torch.equal(restored.transform(images), p.transform(images))
    assert restored.layer_norm_scale == p.layer_norm_scale
    plain = Preprocessor.fit(images, zca=True)
    assert "layer_norm" not in plain.state_dict()  # the protocol's runs store what they did
    assert not Preprocessor.from_state_dict(plain.state_dict()).layer_norm
    with pytest.raises(ValueError, match="layer_norm=True goes with zca=True"):
        Preprocessor.fit(images, zca=False, layer_norm=True)
