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
    class_sorted_batch,
    class_sorted_order,
    evaluate_random_subset,
    evaluate_set,
    krr_accuracy,
    lr_factor,
    protocol_steps,
    selection_interval,
    train_network,
)
from isa_distill.models import build_model

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


def test_centred_one_hot_names_the_range_it_found():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), found -3 to 1"):
        centred_one_hot(torch.tensor([-3, 1]), 4)


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


def test_nonsense_that_would_score_silently_is_refused(digits):
    # Each of these used to train and report an accuracy (0.1, 0.0, ...) of nothing.
    train, val = digits
    images, labels = train.images[:10], train.labels[:10]
    soft = centred_one_hot(labels, 10)
    nan_test = val.images.clone()
    nan_test[0, 0, 0, 0] = float("nan")
    cases = [
        (dict(labels=soft[:, :5]), "test labels go up to 9, but the networks have 5 outputs"),
        (dict(labels=labels - 20), "integer labels must be class indices >= 0"),
        (dict(test=(val.images, val.labels.float() + 0.5)), "test labels must be class indices"),
        (dict(test=(nan_test, val.labels)), "test images must be finite floats"),
        (dict(test=(val.images.numpy(), val.labels)), "test must hold torch tensors"),
        (dict(lr=float("inf")), "lr must be a finite number > 0"),
        (dict(steps=2.5), "steps must be an int >= 1, got 2.5"),
        (dict(num_models=1.5), "num_models must be an int >= 1"),
        (dict(num_models=10**20), "num_models must be at most 1000"),
        (dict(select="best-val", select_every=100, val=val, steps=2),
         "select_every=100 exceeds the networks' 2 steps"),
        (dict(batch_size="8"), "batch_size must be an int >= 1"),
    ]
    for change, message in cases:
        arguments = dict(images=images, labels=labels, test=val, **TINY) | change
        with pytest.raises((ValueError, TypeError), match=message):
            evaluate_set(**arguments)


def test_krr_predictor_accuracy_beats_chance(digits):
    pytest.importorskip("isa_distill.functional")
    train, val = digits
    from isa_distill.models import build_model

    torch.manual_seed(0)
    model = build_model("conv", in_channels=1, num_classes=10, image_size=8, width=8)
    accuracy = krr_accuracy(model, train.images[:200], train.labels[:200], val, num_classes=10)
    assert 0.3 < accuracy <= 1.0


# ----------------------------------------------------------------------------- batch order


def test_class_sorted_batches_cycle_through_the_set_in_class_order():
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0])
    order = class_sorted_order(centred_one_hot(labels, 3))
    assert order.tolist() == [1, 3, 6, 2, 5, 0, 4]  # by class, stored order within a class
    batches = [class_sorted_batch(order, step, 3).tolist() for step in range(4)]
    assert batches == [[1, 3, 6], [2, 5, 0], [4, 1, 3], [6, 2, 5]]  # wraps around, no shuffle
    soft = torch.tensor([[0.1, 0.7, 0.2], [0.9, 0.0, 0.1], [0.2, 0.3, 0.4]])
    assert class_sorted_order(soft).tolist() == [1, 0, 2]  # soft labels: by argmax


def recorded_batches(monkeypatch, images, targets, *, batches, data_seed, steps=4):
    """The input batches train_network feeds its network (no augmentation)."""
    from isa_distill import evaluate as module

    seen = []

    def recording_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].clone()))
        return model

    monkeypatch.setattr(module, "build_model", recording_model)
    train_network(
        images, targets, arch="conv", norm="none", width=4, depth=1, steps=steps, lr=1e-3,
        warmup=1, batch_size=4, augment=False, flip=False, init_seed=0, data_seed=data_seed,
        device=torch.device("cpu"), batches=batches,
    )  # fmt: skip
    return seen


def test_class_sorted_training_batches_are_the_sorted_set_whatever_the_seed(monkeypatch, digits):
    train, _ = digits
    images, labels = train.images[:10], train.labels[:10]
    targets = centred_one_hot(labels, 10)
    order = class_sorted_order(targets)
    expected = [images[class_sorted_batch(order, step, 4)] for step in range(4)]
    for seed in (0, 1):
        seen = recorded_batches(monkeypatch, images, targets, batches="class-sorted",
                                data_seed=seed)  # fmt: skip
        assert len(seen) == 4 and all(torch.equal(a, b) for a, b in zip(seen, expected))
    shuffled = [recorded_batches(monkeypatch, images, targets, batches="shuffled", data_seed=s)
                for s in (0, 1)]  # fmt: skip
    assert not all(torch.equal(a, b) for a, b in zip(*shuffled))


# ----------------------------------------------------------------------------- best-val


def test_best_val_keeps_the_weights_of_the_best_validation_score(monkeypatch, digits):
    from isa_distill import evaluate as module

    train, val = digits
    scripted = iter([0.2, 0.9, 0.5, 0.9, 0.3])  # best at the 2nd score; the tie comes later
    scored = []

    def scripted_accuracy(model, split, *, device="cpu"):
        assert split is val
        scored.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(module, "test_accuracy", scripted_accuracy)
    model = train_network(
        train.images[:50], centred_one_hot(train.labels[:50], 10), arch="conv", norm="none",
        width=4, depth=2, steps=10, lr=1e-2, warmup=1, batch_size=25, augment=True, flip=False,
        init_seed=0, data_seed=0, device=torch.device("cpu"), select="best-val", val=val,
        select_every=2,
    )  # fmt: skip
    assert len(scored) == 5  # after steps 2, 4, 6, 8, 10
    final = model.state_dict()
    assert all(torch.equal(final[k], scored[1][k]) for k in final)
    assert not all(torch.equal(final[k], scored[4][k]) for k in final)
    assert model.training  # the selected network is handed back as trained, in train mode


def test_best_val_never_reads_the_test_split(monkeypatch, digits):
    from isa_distill import evaluate as module

    train, val = digits
    test = Split(val.images[:40].clone(), val.labels[:40].clone())
    calls = []
    real = module.test_accuracy

    def spy(model, split, *, device="cpu"):
        images, _ = split
        calls.append({id(test.images): "test", id(val.images): "val"}.get(id(images), "?"))
        return real(model, split, device=device)

    monkeypatch.setattr(module, "test_accuracy", spy)
    result = evaluate_set(
        train.images[:30], train.labels[:30], test=test, val=val, num_classes=10,
        select="best-val", **dict(TINY, steps=20),
    )  # fmt: skip
    # Per network: validation scores every 2 steps, then ONE test score on the kept weights.
    assert calls == (["val"] * 10 + ["test"]) * 2
    assert len(result.accuracies) == 2 and all(0 <= a <= 1 for a in result.accuracies)


def test_best_val_without_a_validation_split_is_a_clear_error(digits):
    train, val = digits
    with pytest.raises(ValueError, match="best-val.*validation split"):
        evaluate_set(train.images[:10], train.labels[:10], test=val, select="best-val", **TINY)
    with pytest.raises(ValueError, match="select must be one of"):
        evaluate_set(train.images[:10], train.labels[:10], test=val, select="best", **TINY)
    with pytest.raises(ValueError, match="batches must be one of"):
        evaluate_set(train.images[:10], train.labels[:10], test=val, batches="sorted", **TINY)
    with pytest.raises(ValueError, match="select_every"):
        evaluate_set(train.images[:10], train.labels[:10], test=val, val=val, select="best-val",
                     select_every=0, **TINY)  # fmt: skip


def test_selection_interval_is_a_tenth_of_the_budget_by_default():
    assert selection_interval(1000) == 100 and selection_interval(5) == 1
    assert selection_interval(1000, 7) == 7


# ----------------------------------------------------------------------------- your own network


class SmallMLP(torch.nn.Module):
    """A user's network: forward gives class scores, features the penultimate layer."""

    def __init__(self, pixels: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(pixels, 32),
                                        torch.nn.ReLU())  # fmt: skip
        self.head = torch.nn.Linear(32, classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def test_a_users_network_is_trained_and_scored(digits):
    train, val = digits
    options = dict(TINY, augment=False)
    result = evaluate_set(train.images[:100], train.labels[:100], test=val, num_classes=10,
                          model_fn=SmallMLP, krr=True, **options)  # fmt: skip
    assert result.mean > 0.3 and len(result.accuracies) == 2
    assert result.krr_accuracies is not None and min(result.krr_accuracies) > 0.3
    again = evaluate_set(train.images[:100], train.labels[:100], test=val, num_classes=10,
                         model_fn=SmallMLP, krr=True, **options)  # fmt: skip
    assert again == result  # model_fn runs under the seed, like the built-in networks
    built_in = evaluate_set(train.images[:100], train.labels[:100], test=val, num_classes=10,
                            **options)  # fmt: skip
    assert built_in.accuracies != result.accuracies


def test_a_users_network_with_the_wrong_outputs_is_named(digits):
    train, val = digits
    with pytest.raises(ValueError, match=r"must return \(batch, 10\) class scores.*\(50, 7\)"):
        evaluate_set(train.images[:50], train.labels[:50], test=val, num_classes=10,
                     model_fn=lambda: SmallMLP(classes=7), **TINY)  # fmt: skip
    with pytest.raises(TypeError, match="model_fn must return an nn.Module, it returned str"):
        evaluate_set(train.images[:50], train.labels[:50], test=val, num_classes=10,
                     model_fn=lambda: "net", **TINY)  # fmt: skip
    plain = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # noqa: E731
    with pytest.raises(ValueError, match="needs a features"):
        evaluate_set(train.images[:50], train.labels[:50], test=val, num_classes=10,
                     model_fn=plain, krr=True, **TINY)  # fmt: skip
    assert evaluate_set(train.images[:50], train.labels[:50], test=val, num_classes=10,
                        model_fn=plain, **dict(TINY, steps=2)).mean >= 0  # forward is enough
