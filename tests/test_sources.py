"""Feature sources: RFAD's random networks (draws, scale, resume) and the Platt loss."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import kill_in_step, tiny_config

from isa_distill.distill import DistillConfig, distill, make_generators
from isa_distill.draws import draw_seed
from isa_distill.functional import isa_krr_loss, krr_predict
from isa_distill.platt import platt_isa_loss
from isa_distill.runs import CHECKPOINT, read_log
from isa_distill.sources import BIAS_FEATURE, PoolSource, RandomConvFeatures, make_source
from isa_distill.step import LossSettings

pytestmark = pytest.mark.usefixtures("single_thread")

RANDOM = dict(source="random", random_models=3, random_width=8, random_depth=2)


def ensemble(models: int, width: int = 16, depth: int = 2) -> RandomConvFeatures:
    return RandomConvFeatures(in_channels=1, image_size=8, models=models, width=width,
                              depth=depth)


def test_random_features_are_the_scaled_concatenation_of_independent_networks():
    images = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    three = ensemble(3)
    three.resample([11, 22, 33])
    per_network = three.network_features(images)  # (5, 3, d)
    d = per_network.shape[-1]
    assert d == 16 * 2 * 2
    # Network r depends on seeds[r] alone: alone in an ensemble of one it gives the same output.
    for r, seed in enumerate([11, 22, 33]):
        one = ensemble(1)
        one.resample([seed])
        torch.testing.assert_close(one.network_features(images)[:, 0], per_network[:, r])
    phi = three.features(images)
    expected = torch.cat([per_network.flatten(1) * math.sqrt(2 / (3 * d)),
                          torch.full((5, 1), BIAS_FEATURE)], dim=1)
    torch.testing.assert_close(phi, expected)
    assert phi.shape[1] == three.feature_dim
    # K = 2/R sum_r f_r f_r^T / d + 0.01: the mean of the networks' kernels plus RFAD's bias.
    kernels = [per_network[:, r] @ per_network[:, r].T * 2 / d for r in range(3)]
    torch.testing.assert_close(phi @ phi.T, sum(kernels) / 3 + 0.01)


def test_the_kernel_diagonal_concentrates_as_one_over_sqrt_r():
    # diag K(x, x) over fresh draws: the same mean for every R (a mean of R i.i.d. networks'
    # kernels), and a spread that shrinks like 1/sqrt(R).
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    draws = 60
    seeds = torch.Generator().manual_seed(2)

    def diagonals(models: int) -> torch.Tensor:
        net = ensemble(models, width=4, depth=1)
        values = []
        for _ in range(draws):
            net.resample([draw_seed(seeds) for _ in range(models)])
            phi = net.features(x)
            values.append((phi * phi).sum(1))
        return torch.stack(values)  # (draws, 4)

    one, sixteen = diagonals(1), diagonals(16)
    mean_one, mean_sixteen = one.mean(0), sixteen.mean(0)
    assert torch.all((mean_sixteen - mean_one).abs() < 4 * one.std(0) / math.sqrt(draws))
    ratio = (sixteen.std(0) / one.std(0)).mean()
    assert 0.15 < ratio < 0.40, ratio  # 1/sqrt(16) = 0.25


def test_the_random_source_draws_its_seeds_from_the_pool_generator(tiny_digits):
    config = tiny_config(**RANDOM)
    first, second = make_generators(0)["pool"], make_generators(0)["pool"]
    a, b = make_source(config, tiny_digits, first, 20), make_source(config, tiny_digits, second,
                                                                     20)
    images = torch.randn(4, 1, 8, 8)
    network = a.network(first)
    assert network.optimizer is None and network.online_rows is None  # never trained
    phi_a = network.model.features(images)
    torch.testing.assert_close(b.network(second).model.features(images), phi_a)
    # Three seeds were drawn from the generator, nothing else.
    replay = make_generators(0)["pool"]
    for _ in range(3):
        draw_seed(replay)
    assert torch.equal(first.get_state(), replay.get_state())
    # The next step gets fresh networks.
    assert not torch.allclose(a.network(first).model.features(images), phi_a)
    assert a.state() == {"pool": [], "current": 0}
    assert isinstance(make_source(tiny_config(), tiny_digits, make_generators(0)["pool"], 20),
                      PoolSource)


def test_a_random_source_run_resumes_exactly(tiny_digits, tmp_path, monkeypatch):
    # Random networks, multi-formation and the learned Platt temperature, all checkpointed.
    config = tiny_config(steps=7, checkpoint_every=2, formation=2, krr_loss="platt",
                         optimizer="adam", **RANDOM)
    whole = distill(tiny_digits, config, run_dir=tmp_path / "whole", progress=False)
    other_seed = distill(tiny_digits, tiny_config(steps=7, seed=1, formation=2,
                                                  krr_loss="platt", optimizer="adam", **RANDOM),
                         progress=False)
    assert not torch.equal(whole.images, other_seed.images)

    kill_in_step(monkeypatch, 6)
    with pytest.raises(RuntimeError, match="simulated kill"):
        distill(tiny_digits, config, run_dir=tmp_path / "killed", progress=False)
    checkpoint = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)
    assert checkpoint["step"] == 4 and checkpoint["pool"] == []
    assert checkpoint["log_temperature"].shape == ()

    resumed = distill(tiny_digits, None, run_dir=tmp_path / "killed", resume=True,
                      progress=False)
    assert torch.equal(resumed.images, whole.images)
    assert torch.equal(resumed.labels, whole.labels)
    losses = [[r["loss"] for r in read_log(tmp_path / name / "log.csv")]
              for name in ("whole", "killed")]
    assert losses[0] == losses[1] and len(losses[0]) == 7


def test_the_random_source_trains_no_network_and_moves_the_set(tiny_digits):
    result = distill(tiny_digits, tiny_config(steps=3, **RANDOM), progress=False)
    first = distill(tiny_digits, tiny_config(steps=1, **RANDOM), progress=False)
    assert not torch.equal(result.images, first.images)
    assert all(math.isfinite(row["kernel_loss"]) for row in result.history)


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(source="trained"), r"source must be one of \('pool', 'random'\)"),
    (dict(random_models=0), "random_models must be a positive int"),
    (dict(random_width=2.5), "random_width must be a positive int"),
    (dict(krr_loss="ce"), r"krr_loss must be one of \('mse', 'platt'\)"),
    (dict(krr_loss="platt", epsilon=-1.0), r"krr_loss 'platt' needs epsilon in \[0, 1\]"),
    (dict(krr_loss="platt", compile=True), "compile needs krr_loss 'mse'"),
    (dict(formation=0), "formation must be a positive int"),
])  # fmt: skip
def test_bad_source_settings_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**overrides).validate()


def test_too_deep_random_networks_are_refused(tiny_digits):
    with pytest.raises(ValueError, match="random_depth=4 is too deep for 8x8 images"):
        distill(tiny_digits, tiny_config(source="random", random_depth=4), progress=False)


# ----------------------------------------------------------------------------- the Platt loss


def platt_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(12, 40, generator=g, dtype=torch.float64)
    ys = 0.3 * torch.randn(12, 5, generator=g, dtype=torch.float64)
    ft = torch.randn(30, 40, generator=g, dtype=torch.float64)
    yt = torch.nn.functional.one_hot(torch.randint(5, (30,), generator=g), 5).double() - 0.2
    return fs, ys, ft, yt


def test_platt_without_isa_is_rfads_cross_entropy_on_the_kept_targets():
    fs, ys, ft, yt = platt_problem()
    k = torch.tensor(0.7, dtype=torch.float64)
    settings = LossSettings(num_classes=5, epsilon=0.0, discard=0.2, krr_loss="platt")
    loss, status = platt_isa_loss(fs, ys, ft, yt, k, settings=settings)
    assert int(status) == 0
    _, info = isa_krr_loss(fs, ys, ft, yt, epsilon=0.0, discard=0.2, return_info=True)
    assert len(info.kept) == 30 - 6
    logits = math.exp(0.7) * krr_predict(fs, ys, ft)[info.kept]
    expected = torch.nn.functional.cross_entropy(logits, yt.argmax(1)[info.kept])
    torch.testing.assert_close(loss, expected)


def test_platt_isa_is_the_mean_cross_entropy_along_the_segment():
    fs, ys, ft, yt = platt_problem(1)
    k = torch.tensor(0.3, dtype=torch.float64)
    settings = LossSettings(num_classes=5, epsilon=0.8, discard=0.1, krr_loss="platt")
    loss, _ = platt_isa_loss(fs, ys, ft, yt, k, settings=settings)
    _, info = isa_krr_loss(fs, ys, ft, yt, epsilon=0.8, discard=0.1, return_info=True)
    classes = yt.argmax(1)
    # A fine midpoint rule over a in [0, 0.8], with the virtual samples built in feature space:
    # features and one-hot labels interpolated towards the partner.
    steps, total = 2000, 0.0
    for n in range(steps):
        a = 0.8 * (n + 0.5) / steps
        virtual = ft[info.kept] + a * (ft[info.partner] - ft[info.kept])
        log_p = torch.log_softmax(math.exp(0.3) * krr_predict(fs, ys, virtual), dim=1)
        ce = -((1 - a) * log_p.gather(1, classes[info.kept, None])
               + a * log_p.gather(1, classes[info.partner, None]))
        total += float(ce.mean()) / steps
    assert float(loss) == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "lamb"])
def test_the_platt_temperature_is_learned_with_the_set(tiny_digits, tmp_path, optimizer):
    result = distill(tiny_digits, tiny_config(steps=3, krr_loss="platt", optimizer=optimizer),
                     run_dir=tmp_path / "run", progress=False)
    assert all(math.isfinite(row["kernel_loss"]) for row in result.history)
    # From k = 0, three plain Adam steps of about 1e-2 each (LAMB's trust ratio is off for k).
    k = float(torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["log_temperature"])
    assert 0.01 < abs(k) < 0.05
    fs, ys, ft, yt = platt_problem()
    k = torch.zeros((), dtype=torch.float64, requires_grad=True)
    settings = LossSettings(num_classes=5, epsilon=1.0, discard=0.2, krr_loss="platt")
    platt_isa_loss(fs, ys, ft, yt, k, settings=settings)[0].backward()
    assert k.grad is not None and float(k.grad) != 0.0
