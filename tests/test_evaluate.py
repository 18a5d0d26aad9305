"""The evaluation protocol on a tiny digits problem."""

import math

import pytest
import torch

from isa_distill.data import load_dataset
from isa_distill.data.preprocess import Preprocessor
from isa_distill.data.splits import Split
from isa_distill.evaluate import (
    PROTOCOL_STEPS,
    centred_one_hot,
    evaluate_random_subset,
    evaluate_set,
    krr_accuracy,
    lr_factor,
    protocol_steps,
    train_network,
)

# A larger lr than the protocol so that 60 steps suffice on this easy problem.
TINY = dict(width=8, steps=60, lr=3e-3, warmup=10, num_models=2, flip=False, progress=False)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    preprocessor = Preprocessor.fit(data.train.images, zca=False)
    train = Split(preprocessor.transform(data.train.images), data.train.labels)
    val = Split(preprocessor.transform(data.val.images), data.val.labels)
    return train, val


def test_centred_one_hot():
    targets = centred_one_hot(torch.tensor([2, 0]), 4)
    assert torch.allclose(targets[0], torch.tensor([-0.25, -0.25, 0.75, -0.25]))
    assert torch.allclose(targets.sum(1), torch.zeros(2))
    with pytest.raises(ValueError, match="labels must lie"):
        centred_one_hot(torch.tensor([4]), 4)


def test_protocol_steps_uses_the_table_and_its_nearest_entry():
    assert all(protocol_steps(m) == steps for m, steps in PROTOCOL_STEPS.items())
    assert protocol_steps(20) == PROTOCOL_STEPS[10] and protocol_steps(50) == PROTOCOL_STEPS[100]
    assert protocol_steps(100_000) == PROTOCOL_STEPS[5000]


def test_schedule_warms_up_linearly_then_decays_to_one_percent():
    factors = [lr_factor(s, steps=100, warmup=10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert lr_factor(100, steps=100, warmup=10) == pytest.approx(0.01)
    middle = lr_factor(55, steps=100, warmup=10)
    assert middle == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_random_subset_beats_chance_and_is_reproducible(digits):
    train, val = digits
    first = evaluate_random_subset(train, 10, test=val, seed=0, **TINY)
    again = evaluate_random_subset(train, 10, test=val, seed=0, **TINY)
    assert first == again
    assert len(first.accuracies) == 2 and all(0 <= a <= 1 for a in first.accuracies)
    assert first.mean > 0.3  # chance is 0.1
    assert first.std == pytest.approx(float(torch.tensor(first.accuracies).std(correction=0)))


def test_soft_labels_and_int_labels_train_the_same_way(digits):
    train, val = digits
    images, labels = train.images[:100], train.labels[:100]
    soft = centred_one_hot(labels, 10)
    from_int = evaluate_set(images, labels, test=val, num_classes=10, **TINY)
    from_soft = evaluate_set(images, soft, test=val, **TINY)
    assert from_int.accuracies == from_soft.accuracies


def test_different_seeds_train_different_networks(digits):
    train, val = digits
    images, labels = train.images[:100], train.labels[:100]
    options = dict(TINY, num_models=1, augment=False)
    first = train_network_output(images, labels, val, seed=0, **options)
    second = train_network_output(images, labels, val, seed=1, **options)
    assert not torch.equal(first, second)


def train_network_output(images, labels, val, *, seed, **options):
    from isa_distill.evaluate import _seeds

    init_seed, data_seed = _seeds(seed, 1)[0]
    model = train_network(
        images, centred_one_hot(labels, 10), arch="conv", norm="none", width=options["width"],
        depth=3, steps=5, lr=3e-4, warmup=1, batch_size=50, augment=False, flip=False,
        init_seed=init_seed, data_seed=data_seed, device=torch.device("cpu"),
    )  # fmt: skip
    with torch.no_grad():
        return model.eval()(val.images[:4])


def test_bad_arguments_are_rejected(digits):
    train, val = digits
    with pytest.raises(ValueError, match="soft labels"):
        evaluate_set(train.images[:10], torch.zeros(10, 3), test=val, num_classes=10, **TINY)
    with pytest.raises(ValueError, match="per sample"):
        evaluate_set(torch.zeros(10, 1, 4, 4), train.labels[:10], test=val, **TINY)
    with pytest.raises(TypeError, match="test must be"):
        evaluate_set(train.images[:10], train.labels[:10], test=3, **TINY)
    nan_images = train.images[:10].clone()
    nan_images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        evaluate_set(nan_images, train.labels[:10], test=val, **TINY)


def test_krr_predictor_accuracy_beats_chance(digits):
    pytest.importorskip("isa_distill.functional")
    train, val = digits
    from isa_distill.models import build_model

    torch.manual_seed(0)
    model = build_model("conv", in_channels=1, num_classes=10, image_size=8, width=8)
    accuracy = krr_accuracy(model, train.images[:200], train.labels[:200], val, num_classes=10)
    assert 0.3 < accuracy <= 1.0
