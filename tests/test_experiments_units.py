"""Units of the experiments: statistics, k-NN manifold metrics, herding, attacks, variants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from isa_distill.data import Split, load_dataset
from isa_distill.data.preprocess import Preprocessor
from isa_distill.evaluate import centred_one_hot
from isa_distill.evaluate import test_accuracy as accuracy_on
from isa_distill.experiments.ablate import load_seed_results, settings_key, summarise
from isa_distill.experiments.continual import herding_indices
from isa_distill.experiments.knn_manifold import knn_radii, manifold_metrics
from isa_distill.experiments.mia import (
    Target,
    attack,
    attack_target,
    attacker_split,
    draw_candidates,
)
from isa_distill.experiments.pipeline import distill_config
from isa_distill.experiments.settings import experiment_settings
from isa_distill.experiments.stats import paired_difference
from isa_distill.experiments.variants import (
    FIDELITY_VARIANTS,
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


def _candidates(per_class=50, classes=10):
    """Labels and membership of a class-balanced candidate pool (members first per class)."""
    labels = np.repeat(np.arange(classes), 2 * per_class)
    member = np.tile(np.r_[np.ones(per_class), np.zeros(per_class)], classes)
    return member, labels


def test_attack_separates_separable_members_and_stays_in_range_on_noise():
    rng = np.random.default_rng(0)
    member, labels = _candidates(10)
    loss = np.where(member == 1, 0.0, 1.0) + 0.01 * rng.standard_normal(200)
    separable = attack(np.c_[loss, rng.standard_normal((200, 3))], member, labels)
    assert separable["threshold"][1] > 0.99 and separable["logistic"][1] > 0.99
    noise = attack(rng.standard_normal((200, 4)), member, labels)
    for accuracy, auc in noise.values():
        assert 0.0 <= accuracy <= 1.0 and 0.0 <= auc <= 1.0
    with pytest.raises(ValueError, match="member must hold only 0"):
        attack(rng.standard_normal((200, 4)), member * 2, labels)
    with pytest.raises(ValueError, match="features must be"):
        attack(rng.standard_normal((199, 4)), member, labels)


def test_attacker_split_halves_every_class_and_membership_cell():
    member, labels = _candidates(7, classes=3)
    train, test = attacker_split(member, labels, seed=1)
    assert sorted(np.r_[train, test].tolist()) == list(range(len(member)))
    for side, size in ((train, 3), (test, 4)):  # the odd row of a cell goes to test
        for label in range(3):
            for is_member in (0, 1):
                cell = (labels[side] == label) & (member[side] == is_member)
                assert cell.sum() == size


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_only_features_give_every_attacker_exactly_chance(seed):
    # A class-dependent loss and the label carry no membership: with members and non-members
    # balanced in each class of attacker-test, any score that is a function of the class gives
    # AUC 0.5. Stratifying on membership alone gave 0.45-0.47 here (the halves mirror).
    member, labels = _candidates()
    onehot = centred_one_hot(torch.as_tensor(labels), 10).numpy()
    features = np.c_[0.1 * labels + 0.3, onehot]
    for name, (_, auc) in attack(features, member, labels, seed).items():
        assert auc == pytest.approx(0.5, abs=1e-9), name


def test_attack_on_never_seen_identically_distributed_candidates_is_near_chance():
    # Features of a model that saw neither group: class-dependent, membership-free.
    member, labels = _candidates()
    onehot = centred_one_hot(torch.as_tensor(labels), 10).numpy()
    aucs = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        predictions = 0.6 * onehot + 0.3 * rng.standard_normal(onehot.shape)
        loss = 0.5 * np.square(predictions - onehot).sum(1)
        aucs.append(attack(np.c_[loss, predictions, onehot], member, labels, seed))
    for name in aucs[0]:
        mean = np.mean([run[name][1] for run in aucs])
        assert abs(mean - 0.5) < 0.04, (name, mean)  # sd of the mean of 4 runs: about 0.013


def test_draw_candidates_is_disjoint_balanced_and_never_touches_val_or_test():
    data = load_dataset("digits")
    members, others = draw_candidates(data.train, 500, data.num_classes, seed=3)
    assert torch.bincount(members.labels).tolist() == [50] * 10
    assert torch.bincount(others.labels).tolist() == [50] * 10
    seen = {row.numpy().tobytes() for row in members.images.flatten(1)}
    assert len(seen) == 500
    for split in (others, data.val, data.test):
        assert not seen & {row.numpy().tobytes() for row in split.images.flatten(1)}
    train = {row.numpy().tobytes() for row in data.train.images.flatten(1)}
    assert {row.numpy().tobytes() for row in others.images.flatten(1)} <= train
    with pytest.raises(ValueError, match="non-members of every class"):
        draw_candidates(data.train, 1200, data.num_classes)
    with pytest.raises(ValueError, match="members must be an int >= 2 \\* classes = 20"):
        draw_candidates(data.train, 10, data.num_classes)


@pytest.mark.usefixtures("single_thread")
def test_a_target_that_memorises_its_members_is_attackable_by_every_attacker():
    data = load_dataset("digits")
    members, others = draw_candidates(data.train, 100, data.num_classes)
    prep = Preprocessor.fit(members.images, zca=False)
    members, others = (Split(prep.transform(s.images), s.labels) for s in (members, others))
    settings = experiment_settings("cpu", seeds=(0,))
    target = Target(members.images, members.labels, members, others)
    model, results = attack_target(target, 10, 600, settings, 0, augment=False)
    assert accuracy_on(model, members) == 1.0  # it fits its members
    for name, (_, auc) in results.items():
        assert auc > 0.8, name  # measured 0.90 (k-NN) to 0.99 (threshold)


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
    assert VARIANTS["baseline"].overrides == {"epsilon": 0.0, "discard": 0.0,
                                              "class_reduction": "half_sum"}


@pytest.mark.parametrize("name, epsilon, discard, reduction", [
    ("baseline", 0.0, 0.0, "half_sum"),
    ("discard-only", 0.0, 0.2, "half_sum"),
    ("isa-towards", 1.0, 0.2, "half_sum"),
    ("isa-away", -1.0, 0.2, "half_sum"),
    ("isa-official", -1.0, 0.2, "mean"),
])
def test_fidelity_variants_pin_their_semantics_under_every_preset(name, epsilon, discard,
                                                                  reduction):
    assert name in FIDELITY_VARIANTS
    for preset in ("cpu", "paper"):
        settings = experiment_settings(preset, dataset="fashion-mnist", device="cpu")
        config = distill_config(settings, 0, **VARIANTS[name].overrides)
        assert (config.epsilon, config.discard, config.class_reduction) == (
            epsilon, discard, reduction)
        assert config.partner == "nearest" and not VARIANTS[name].hooks


def test_experiment_optimizer_and_lr_reach_the_distillation_config():
    default = distill_config(experiment_settings("cpu"), 0)
    assert (default.optimizer, default.peak_lr) == ("adam", 1e-3)  # the cpu preset's
    lamb = distill_config(experiment_settings("cpu", optimizer="lamb"), 0)
    assert (lamb.optimizer, lamb.peak_lr) == ("lamb", 3e-4)  # LAMB's default rate
    tuned = distill_config(experiment_settings("cpu", optimizer="lamb", lr=1e-3), 0)
    assert (tuned.optimizer, tuned.peak_lr) == ("lamb", 1e-3)
    # A variant's own override wins over the experiment's setting.
    assert distill_config(experiment_settings("cpu", optimizer="adam"), 0,
                          optimizer="lamb").optimizer == "lamb"


def _seed_row(variant, seed, accuracy, distill_s=10.0):
    return dict(variant=variant, seed=seed, accuracy=accuracy, network_std=0.01,
                network_accuracies=repr(accuracy), distill_s=distill_s, eval_s=2.0)


def test_summarise_pairs_seeds_and_averages_wall_times():
    results = {}
    for seed, (base, other) in enumerate([(0.50, 0.52), (0.60, 0.63), (0.55, 0.56)]):
        results[("baseline", seed)] = _seed_row("baseline", seed, base, 10.0 + seed)
        results[("isa-away", seed)] = _seed_row("isa-away", seed, other, 20.0)
    results[("isa-away", 7)] = _seed_row("isa-away", 7, 0.0)  # not selected: ignored
    rows = summarise(results, resolve_variants(["baseline", "isa-away"]), (0, 1, 2))
    base, away = rows
    assert base["diff_vs_baseline"] == 0.0 and base["distill_s"] == pytest.approx(11.0)
    assert away["acc_mean"] == pytest.approx(np.mean([0.52, 0.63, 0.56]))
    assert away["diff_vs_baseline"] == pytest.approx(0.02)
    assert away["ci95_low"] < 0.02 < away["ci95_high"]
    assert away["distill_s"] == 20.0 and away["eval_s"] == 2.0 and away["seeds"] == 3


def test_stored_seed_results_are_reused_only_under_the_same_settings(tmp_path):
    import json

    settings = experiment_settings("cpu", optimizer="adam")
    assert load_seed_results(tmp_path, settings_key(settings)) == {}  # nothing stored yet
    (tmp_path / "seeds.csv").write_text(
        "variant,seed,accuracy,network_std,network_accuracies,distill_s,eval_s\n"
        "baseline,3,0.125,0.0,0.125,4.5,1.0\n")
    with pytest.raises(ValueError, match="no settings.json"):
        load_seed_results(tmp_path, settings_key(settings))
    (tmp_path / "settings.json").write_text(json.dumps(settings_key(settings)))
    stored = load_seed_results(tmp_path, settings_key(settings))
    assert stored[("baseline", 3)]["accuracy"] == 0.125
    assert stored[("baseline", 3)]["distill_s"] == 4.5
    # Other seeds may be asked for; other budgets or optimisers may not.
    assert load_seed_results(tmp_path, settings_key(
        experiment_settings("cpu", optimizer="adam", seeds=(5, 6))))
    with pytest.raises(ValueError, match="optimizer: stored 'adam', now 'lamb'"):
        load_seed_results(tmp_path, settings_key(experiment_settings("cpu", optimizer="lamb")))
    with pytest.raises(ValueError, match="steps"):
        load_seed_results(tmp_path, settings_key(
            experiment_settings("cpu", optimizer="adam", steps=1000)))


def test_experiment_settings_reject_bad_values():
    with pytest.raises(ValueError, match="preset"):
        experiment_settings("gpu")
    with pytest.raises(ValueError, match="unknown experiment settings"):
        experiment_settings("cpu", widht=3)
    with pytest.raises(ValueError, match="eval_models"):
        experiment_settings("cpu", eval_models=0)
    with pytest.raises(ValueError, match="seeds"):
        experiment_settings("cpu", seeds=(0, 0))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        experiment_settings("cpu", optimizer="sgd")
    for lr in (0.0, -1e-3, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="lr must be a finite positive number"):
            experiment_settings("cpu", lr=lr)
