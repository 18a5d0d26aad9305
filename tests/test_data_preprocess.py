"""Standardisation + ZCA: exact inverse, whitening, state round trip."""

import pytest
import torch

from isa_distill.data.preprocess import Preprocessor


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
