"""Units of the experiments: statistics, k-NN manifold metrics, herding, attacks, variants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from isa_distill.evaluate import centred_one_hot
from isa_distill.experiments.continual import herding_indices
from isa_distill.experiments.knn_manifold import knn_radii, manifold_metrics
from isa_distill.experiments.mia import attack
from isa_distill.experiments.settings import experiment_settings
from isa_distill.experiments.stats import paired_difference
from isa_distill.experiments.variants import (
    HOOKED_VARIANTS,
    VARIANTS,
    feature_mixup_loss,
    input_mixup,
    keep_easiest_loss,
    monte_carlo_loss,
    resolve_variants,
)
from isa_distill.functional import krr_predict


class _Config:
    reg = 1e-6


def _problem(seed=0, m=6, n=20, d=12, c=3):
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(m, d, generator=g, dtype=torch.float64, requires_grad=True)
    ys = torch.randn(m, c, generator=g, dtype=torch.float64)
    ft = torch.randn(n, d, generator=g, dtype=torch.float64)
    yt = centred_one_hot(torch.randint(c, (n,), generator=g), c).double()
    return fs, ys, ft, yt


def test_paired_difference_of_a_constant_shift_is_that_shift_with_no_width():
    base = [0.5, 0.6, 0.7]
    mean, low, high = paired_difference([b + 0.1 for b in base], base)
    assert mean == pytest.approx(0.1)
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)


def test_paired_difference_interval_contains_the_mean_and_one_pair_has_none():
    mean, low, high = paired_difference([0.1, 0.5, 0.2, 0.4], [0.2, 0.2, 0.2, 0.2])
    assert low < mean < high
    mean, low, high = paired_difference([0.3], [0.2])
    assert mean == pytest.approx(0.1) and math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([0.1, 0.2], [0.1])


def test_manifold_metrics_are_one_for_identical_sets_and_zero_for_distant_ones():
    points = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    assert manifold_metrics(points, points.clone(), k=3) == {
        "precision": 1.0, "recall": 1.0, "coverage": 1.0}
    far = manifold_metrics(points, points + 1000.0, k=3)
    assert far == {"precision": 0.0, "recall": 0.0, "coverage": 0.0}


def test_manifold_metrics_lie_in_unit_interval_and_radii_skip_the_point_itself():
    g = torch.Generator().manual_seed(1)
    real, synthetic = torch.randn(60, 4, generator=g), 0.5 * torch.randn(15, 4, generator=g)
    for value in manifold_metrics(real, synthetic, k=5).values():
        assert 0.0 <= value <= 1.0
    line = torch.tensor([[0.0], [1.0], [3.0]])
    assert knn_radii(line, 1).tolist() == [1.0, 1.0, 2.0]


def test_manifold_metrics_reject_bad_arguments():
    points = torch.randn(10, 3)
    with pytest.raises(ValueError, match="more than k=5"):
        manifold_metrics(points, points[:5], k=5)
    with pytest.raises(ValueError, match="feature sizes"):
        manifold_metrics(points, torch.randn(10, 4), k=2)
    with pytest.raises(ValueError, match="NaN"):
        manifold_metrics(points, torch.full((10, 3), float("nan")), k=2)


def test_herding_picks_the_point_nearest_the_mean_first_and_never_repeats():
    points = torch.randn(30, 3, generator=torch.Generator().manual_seed(2))
    picked = herding_indices(points, 30)
    assert sorted(picked.tolist()) == list(range(30))
    assert int(picked[0]) == int((points - points.mean(0)).norm(dim=1).argmin())
    with pytest.raises(ValueError, match="cannot herd"):
        herding_indices(points, 31)


def test_attack_separates_separable_members_and_stays_in_range_on_noise():
    rng = np.random.default_rng(0)
    member = np.r_[np.ones(100), np.zeros(100)]
    loss = np.where(member == 1, 0.0, 1.0) + 0.01 * rng.standard_normal(200)
    separable = attack(np.c_[loss, rng.standard_normal((200, 3))], member)
    assert separable["threshold"][1] > 0.99 and separable["logistic"][1] > 0.99
    noise = attack(rng.standard_normal((200, 4)), member)
    for accuracy, auc in noise.values():
        assert 0.0 <= accuracy <= 1.0 and 0.0 <= auc <= 1.0


def test_keep_easiest_loss_is_the_mean_of_the_smallest_plain_losses():
    fs, ys, ft, yt = _problem()
    plain = 0.5 * (krr_predict(fs.detach(), ys, ft) - yt).square().sum(1)
    expected = plain.sort().values[: 20 - 6].mean()  # drop floor(0.3 * 20) = 6 hardest
    loss = keep_easiest_loss(0.3)(fs, ys, ft, yt, settings=_Config, generator=None)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert fs.grad is not None and torch.isfinite(fs.grad).all()


def test_hooked_losses_are_finite_and_differentiable():
    generator = torch.Generator().manual_seed(0)
    for loss_fn in (feature_mixup_loss, monte_carlo_loss(4)):
        fs, ys, ft, yt = _problem(3)
        loss = loss_fn(fs, ys, ft, yt, settings=_Config, generator=generator)
        loss.backward()
        assert torch.isfinite(loss) and fs.grad.abs().sum() > 0


def test_input_mixup_keeps_shapes_and_mixes_labels_convexly():
    images = torch.randn(8, 1, 4, 4)
    labels = centred_one_hot(torch.arange(8) % 4, 4)
    mixed_images, mixed_labels = input_mixup(images, labels, torch.Generator().manual_seed(0))
    assert mixed_images.shape == images.shape and mixed_labels.shape == labels.shape
    assert torch.allclose(mixed_labels.sum(1), torch.zeros(8), atol=1e-6)
    assert (mixed_labels >= -0.25 - 1e-6).all() and (mixed_labels <= 0.75 + 1e-6).all()


def test_resolve_variants_names_the_problem():
    with pytest.raises(ValueError, match="unknown variants"):
        resolve_variants(["baseline", "nope"])
    with pytest.raises(ValueError, match="distinct"):
        resolve_variants(["easy10", "easy10"])
    with pytest.raises(ValueError, match="at least one"):
        resolve_variants([])
    assert [v.name for v in resolve_variants(list(HOOKED_VARIANTS))] == list(HOOKED_VARIANTS)
    assert VARIANTS["baseline"].overrides == {"epsilon": 0.0, "discard": 0.0}


def test_experiment_settings_reject_bad_values():
    with pytest.raises(ValueError, match="preset"):
        experiment_settings("gpu")
    with pytest.raises(ValueError, match="unknown experiment settings"):
        experiment_settings("cpu", widht=3)
    with pytest.raises(ValueError, match="eval_models"):
        experiment_settings("cpu", eval_models=0)
    with pytest.raises(ValueError, match="seeds"):
        experiment_settings("cpu", seeds=(0, 0))
