"""The evaluation protocol: train fresh networks on a (distilled) set, report test accuracy.

Each of ``num_models`` networks (a built-in architecture, or your own from ``model_fn``) is
freshly initialised and trained with Adam on the set alone:
linear warm-up to ``lr``, cosine decay to 1% of it, loss 1/2 * ||f(x) - y||^2 per sample
(mean over the batch) on the given labels, ONE random augmentation op per batch
(``isa_distill.data.augment``). Images must already be preprocessed exactly like ``test``.

Step budget by set size M (``steps=None``), from the protocol's table; for an M not in the table
the entry nearest in log(M) is used (ties go to the larger M): M = 20 -> 1000 (the entry for
10), M = 50 -> 2000 (the entry for 100), M = 10000 -> 40000 (the entry for 5000).

Batches (``batches``): ``"shuffled"`` (default) draws every batch as a fresh random subset of
the set. ``"class-sorted"`` reproduces the official code's input pipeline exactly: the set is
sorted by class (the argmax of its soft labels; a stable sort, so the stored order is kept
within a class), and batch k holds the positions k * batch_size, ..., (k + 1) * batch_size - 1
of that order taken modulo M, i.e. consecutive batches cycle through the sorted set without
shuffling, starting again at its beginning for every network.

Checkpoint (``select``): ``"last"`` (default) scores the weights after the last step.
``"best-val"`` scores the network on the VALIDATION split every ``select_every`` steps (default:
a tenth of the budget, as often as the official code logs) and after the last step, and keeps
the weights with the best validation accuracy (the earliest of equal ones); the test split is
then scored once, on those weights. The official evaluation reports the last weights (its
distillation keeps the synthetic set with the best TEST accuracy, which this library never
does); ``"best-val"`` is the honest form of checkpoint selection.

Select nothing on the test split: pass the validation split as ``test`` for any choice of
hyperparameters, and the real test split only for the final report.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data.augment import augment_batch
from .data.splits import Split, class_balanced_subset
from .models import build_model

PROTOCOL_STEPS = {
    10: 1000, 100: 2000, 200: 2000, 400: 5000, 500: 5000, 1000: 4000, 2000: 5000, 5000: 40000,
}  # fmt: skip
MAX_BATCH_SIZE = 500
BATCH_ORDERS = ("shuffled", "class-sorted")
SELECTIONS = ("last", "best-val")
SELECT_FRACTION = 0.1  # best-val scores the validation split every tenth of the budget
FINAL_LR_FRACTION = 0.01
# Short runs (tests, smoke runs) would spend all their steps warming up: cap the warm-up.
MAX_WARMUP_FRACTION = 0.5
MAX_MODELS = 1000  # networks per evaluation: the protocol trains 5; more is a typo
PREDICT_BATCH_SIZE = 1000
ModelFactory = Callable[[], nn.Module]  # a user's network: model_fn=lambda: MyNet()


@dataclass(frozen=True)
class EvalResult:
    """Test accuracy (fraction in [0, 1]) per network, with its mean and population std."""

    mean: float
    std: float
    accuracies: list[float]
    krr_accuracies: list[float] | None = None

    @classmethod
    def from_accuracies(
        cls, accuracies: Sequence[float], krr_accuracies: Sequence[float] | None = None
    ) -> EvalResult:
        values = np.asarray(accuracies, dtype=np.float64)
        return cls(
            float(values.mean()),
            float(values.std()),
            [float(a) for a in accuracies],
            None if krr_accuracies is None else [float(a) for a in krr_accuracies],
        )


def protocol_steps(set_size: int) -> int:
    """Training steps for a set of ``set_size`` samples (see the module docstring)."""
    if set_size < 1:
        raise ValueError(f"set_size must be >= 1, got {set_size}")
    sizes = sorted(PROTOCOL_STEPS)
    distance = [abs(math.log(set_size) - math.log(m)) for m in sizes]
    best = min(range(len(sizes)), key=lambda i: (round(distance[i], 12), -sizes[i]))
    return PROTOCOL_STEPS[sizes[best]]


def lr_factor(step: int, *, steps: int, warmup: int) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): linear warm-up, then cosine to 1%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * cosine


def centred_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """1 - 1/C for the true class, -1/C elsewhere; float32 (n, C)."""
    if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(
            f"labels must be a 1-d integer tensor, got {labels.dtype} {tuple(labels.shape)}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), found {int(labels.min())} to "
                         f"{int(labels.max())}")
    one_hot = nn.functional.one_hot(labels.long(), num_classes).float()
    return one_hot - 1.0 / num_classes


def _check_count(name: str, value: object, most: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if most is not None and value > most:
        raise ValueError(f"{name} must be at most {most}, got {value}")


def _test_pair(test, name: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    try:
        images, labels = test
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a Split or an (images, labels) pair") from error
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must hold torch tensors (torch.from_numpy converts arrays), got "
                        f"{type(images).__name__} and {type(labels).__name__}")
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"{name} must hold (n, c, h, w) images and (n,) labels with n > 0, got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name} labels must be class indices >= 0, got {labels.dtype}")
    if not images.is_floating_point():
        raise ValueError(f"{name} images must be finite floats, got {images.dtype}")
    return images, labels.long()


def _check_pair_values(images: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    """The value checks of a test or val pair, once per evaluation: they read the tensors
    back, which ``test_accuracy`` (called at every best-val scoring) does not repeat."""
    if int(labels.min()) < 0:
        raise ValueError(f"{name} labels must be class indices >= 0, found {int(labels.min())}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} images must be finite floats, got NaN or Inf")


def _check_recipe(batches: str, select: str, select_every: int | None, val) -> None:
    """Raise ValueError naming the first bad batch-order or checkpoint-selection option."""
    if batches not in BATCH_ORDERS:
        raise ValueError(f"batches must be one of {BATCH_ORDERS}, got {batches!r}")
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
    if select_every is not None and (
        isinstance(select_every, bool) or not isinstance(select_every, int) or select_every < 1
    ):
        raise ValueError(f"select_every must be a positive int or None, got {select_every!r}")
    if select == "best-val":
        if val is None:
            raise ValueError(
                "select='best-val' needs a validation split: pass val=(images, labels) held out "
                "of train (the test split is never used to select)"
            )
        _test_pair(val, "val")


def _targets(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int | None, test_labels: torch.Tensor
) -> torch.Tensor:
    """Regression targets: soft labels as given, integer labels as centred one-hot."""
    if images.ndim != 4 or len(images) == 0 or not images.is_floating_point():
        raise ValueError(
            f"images must be a non-empty floating (M, c, h, w) tensor, got {tuple(images.shape)}"
        )
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf")
    if labels.is_floating_point():
        if labels.shape != (len(images), labels.shape[-1]) or labels.ndim != 2:
            raise ValueError(
                f"soft labels must have shape ({len(images)}, C), got {tuple(labels.shape)}"
            )
        if num_classes is not None and labels.shape[1] != num_classes:
            raise ValueError(
                f"soft labels have {labels.shape[1]} columns, num_classes={num_classes}"
            )
        if not torch.isfinite(labels).all():
            raise ValueError("labels contain NaN or Inf")
        _check_test_classes(test_labels, labels.shape[1], "the soft labels' columns")
        return labels.float()
    if labels.shape != (len(images),):
        raise ValueError(
            f"integer labels must have shape ({len(images)},), got {tuple(labels.shape)}"
        )
    if int(labels.min()) < 0:
        raise ValueError(f"integer labels must be class indices >= 0, found {int(labels.min())}")
    if num_classes is None:
        num_classes = int(max(labels.max(), test_labels.max())) + 1
    _check_test_classes(test_labels, num_classes, "num_classes")
    return centred_one_hot(labels, num_classes)


def _check_test_classes(test_labels: torch.Tensor, num_classes: int, source: str) -> None:
    """Test labels the network cannot output would score as silent misses."""
    if int(test_labels.max()) >= num_classes:
        raise ValueError(f"test labels go up to {int(test_labels.max())}, but the networks have "
                         f"{num_classes} outputs ({source})")


@torch.no_grad()
def _batched(model: nn.Module, fn, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    model.eval()
    outputs = [fn(chunk.to(device)).float() for chunk in images.split(PREDICT_BATCH_SIZE)]
    return torch.cat(outputs)


def test_accuracy(model: nn.Module, test, *, device: str | torch.device = "cpu") -> float:
    """Fraction of ``test`` (Split or (images, labels)) whose argmax logit is the label."""
    images, labels = _test_pair(test)
    logits = _batched(model, model, images, torch.device(device))
    return float((logits.argmax(1).to(labels.device) == labels).float().mean())


def krr_accuracy(
    model: nn.Module,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    test,
    *,
    reg: float = 1e-6,
    reg_mode: str = "trace",
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> float:
    """KRR-predictor accuracy: kernel ridge regression on ``model.features`` of the support set
    (the distillation's ridge rule) predicts the test labels; the head is not used."""
    from .functional import krr_predict  # the core op; imported lazily (optional for training)

    test_images, test_labels = _test_pair(test)
    targets = _targets(support_images, support_labels, num_classes, test_labels)
    device = torch.device(device)
    support_features = _batched(model, model.features, support_images, device)
    test_features = _batched(model, model.features, test_images, device)
    predictions = krr_predict(
        support_features, targets.to(device), test_features, reg=reg, reg_mode=reg_mode
    )
    return float((predictions.argmax(1).to(test_labels.device) == test_labels).float().mean())


def _seeds(seed: int, count: int) -> list[tuple[int, int]]:
    """Independent (init, data) seeds per network, all derived from ``seed``."""
    base = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, 2**62, (count, 2), generator=base)
    return [(int(a), int(b)) for a, b in draws]


def class_sorted_order(targets: torch.Tensor) -> torch.Tensor:
    """Row indices of the set sorted by class (argmax of each target row), stable within a class;
    a CPU int64 tensor."""
    return torch.sort(targets.argmax(1).cpu(), stable=True).indices


def class_sorted_batch(order: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """Batch ``step`` (0-based) of the class-sorted cycle: positions step * batch_size, ...,
    (step + 1) * batch_size - 1 of ``order``, modulo its length (the official ``repeat().batch``)."""
    positions = (step * batch_size + torch.arange(batch_size)) % len(order)
    return order[positions]


def selection_interval(steps: int, select_every: int | None = None) -> int:
    """Steps between validation scores of ``select="best-val"``: ``select_every`` if given,
    else a tenth of ``steps`` (at least 1)."""
    return select_every if select_every is not None else max(1, int(SELECT_FRACTION * steps))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def train_network(
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    arch: str,
    norm: str,
    width: int | None,
    depth: int,
    steps: int,
    lr: float,
    warmup: int,
    batch_size: int,
    augment: bool,
    flip: bool,
    init_seed: int,
    data_seed: int,
    device: torch.device,
    progress_bar=None,
    batches: str = "shuffled",
    select: str = "last",
    val=None,
    select_every: int | None = None,
    model_fn: ModelFactory | None = None,
) -> nn.Module:
    """Train one freshly initialised network on (images, targets) with the protocol's recipe.

    ``batches`` and ``select`` as in the module docstring; ``val`` (Split or (images, labels))
    is only read by ``select="best-val"``, which returns the network with the weights of its
    best validation score. There is no test split here: selection cannot see it.
    ``model_fn`` (see ``evaluate_set``) replaces ``arch``, ``norm``, ``width`` and ``depth``.
    """
    _check_recipe(batches, select, select_every, val)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(init_seed)
        if model_fn is not None:
            model = _user_network(model_fn)
        else:
            model = build_model(
                arch,
                in_channels=images.shape[1],
                num_classes=targets.shape[1],
                image_size=images.shape[-1],
                width=width,
                depth=depth,
                norm=norm,
            )
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps=steps, warmup=warmup)
    )
    generator = torch.Generator().manual_seed(data_seed)
    images, targets = images.to(device), targets.to(device)
    order = class_sorted_order(targets) if batches == "class-sorted" else None
    every = selection_interval(steps, select_every)
    best_accuracy, best_weights = -1.0, None
    for step in range(steps):
        if order is None:
            index = torch.randperm(len(images), generator=generator)[:batch_size]
        else:
            index = class_sorted_batch(order, step, batch_size)
        index = index.to(device)
        batch = images[index]
        if augment:
            batch = augment_batch(batch, generator, flip=flip)
        outputs = model(batch)
        if step == 0 and model_fn is not None:
            _check_user_outputs(outputs, len(batch), targets.shape[1])
        loss = 0.5 * (outputs - targets[index]).square().sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress_bar is not None:
            progress_bar.update()
        done = step + 1
        if select == "best-val" and (done % every == 0 or done == steps):
            accuracy = test_accuracy(model, val, device=device)
            model.train()  # scoring switched the network to eval mode
            if accuracy > best_accuracy:
                best_accuracy, best_weights = accuracy, _weights(model)
    if best_weights is not None:
        model.load_state_dict(best_weights)
    return model


def _user_network(model_fn: ModelFactory) -> nn.Module:
    if not callable(model_fn):
        raise TypeError(f"model_fn must be a function returning an nn.Module, got {model_fn!r}")
    model = model_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_fn must return an nn.Module, it returned {type(model).__name__}")
    return model


def _check_user_outputs(outputs, batch: int, num_classes: int) -> None:
    shape = tuple(getattr(outputs, "shape", ()))
    if not isinstance(outputs, torch.Tensor) or shape != (batch, num_classes):
        raise ValueError(
            f"model_fn's network must return (batch, {num_classes}) class scores from forward; "
            f"for a batch of {batch} images it returned {shape or type(outputs).__name__}"
        )


def evaluate_set(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    test,
    arch: str = "conv",
    norm: str = "none",
    width: int | None = None,
    depth: int = 3,
    num_models: int = 5,
    steps: int | None = None,
    lr: float = 3e-4,
    warmup: int = 500,
    batch_size: int | None = None,
    augment: bool = True,
    flip: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    num_classes: int | None = None,
    krr: bool = False,
    krr_reg: float = 1e-6,
    batches: str = "shuffled",
    select: str = "last",
    val=None,
    select_every: int | None = None,
    networks: Sequence[int] | None = None,
    progress_label: str = "distilled set",
    model_fn: ModelFactory | None = None,
) -> EvalResult:
    """Train ``num_models`` fresh networks on (images, labels); test accuracy mean and std.

    Args:
        images: (M, c, h, w) preprocessed like ``test``.
        labels: (M, C) float soft labels, or (M,) int labels (trained on centred one-hot).
        test: Split or (images, labels) pair to score on (the validation split for selection).
        steps: training steps (None: ``protocol_steps(M)``).
        warmup: linear warm-up steps, capped at half of ``steps``.
        batch_size: None means min(M, 500).
        flip: allow the horizontal-flip op (False for MNIST-like data).
        seed: seeds every network's initialisation, batches and augmentation.
        krr: also score each trained network as a KRR predictor (``krr_accuracy``).
        batches: ``"shuffled"`` (default) or ``"class-sorted"`` (the official code's unshuffled
            batches; defined in the module docstring).
        select: ``"last"`` (default) or ``"best-val"``: keep the weights with the best accuracy
            on ``val``, scored every ``select_every`` steps (None: a tenth of ``steps``).
        val: the validation split (Split or (images, labels)), needed by ``"best-val"`` only.
        networks: train only these of the ``num_models`` networks (indices), each with the
            seeds it has among all of them; the result holds their accuracies in this order.
            Lets several processes share one evaluation (``isa_distill.distributed``).
        progress_label: what the progress bar calls the set being evaluated.
        model_fn: your own network instead of the built-in ``arch``: a function without
            arguments returning a fresh ``nn.Module`` (e.g. ``lambda: MyNet()``), called once
            per network with the torch seed set from ``seed``. Its ``forward`` maps
            (batch, c, h, w) images to (batch, C) class scores; ``krr=True`` also needs a
            ``features(x)`` method returning (batch, d) features. ``arch``, ``norm``,
            ``width`` and ``depth`` are then unused.

    Raises:
        ValueError: a bad option, incl. ``select="best-val"`` without ``val``.
    """
    _check_recipe(batches, select, select_every, val)
    test_images, test_labels = _test_pair(test)
    _check_pair_values(test_images, test_labels, "test")
    targets = _targets(images, labels, num_classes, test_labels)
    if test_images.shape[1:] != images.shape[1:]:
        raise ValueError(
            f"test images have shape {tuple(test_images.shape[1:])} per sample, the set has "
            f"{tuple(images.shape[1:])}"
        )
    if val is not None and select == "best-val":
        val_images, val_labels = _test_pair(val, "val")
        _check_pair_values(val_images, val_labels, "val")
        if val_images.shape[1:] != images.shape[1:]:
            raise ValueError(
                f"val images have shape {tuple(val_images.shape[1:])} per sample, the set has "
                f"{tuple(images.shape[1:])}"
            )
    _check_count("num_models", num_models, MAX_MODELS)
    seeds = _seeds(seed, num_models)
    if networks is not None:
        networks = list(networks)
        if not networks or any(not 0 <= i < num_models for i in networks):
            raise ValueError(
                f"networks must be non-empty indices in [0, {num_models}), got {networks}"
            )
        seeds = [seeds[i] for i in networks]
    steps = protocol_steps(len(images)) if steps is None else steps
    _check_count("steps", steps)
    if select == "best-val" and select_every is not None and select_every > steps:
        raise ValueError(f"select_every={select_every} exceeds the networks' {steps} steps: "
                         "best-val would have only the final weights to choose from")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    batch_size = min(len(images), MAX_BATCH_SIZE) if batch_size is None else batch_size
    _check_count("batch_size", batch_size)
    warmup = max(1, min(warmup, int(MAX_WARMUP_FRACTION * steps)))
    device = torch.device(device)
    if model_fn is not None and krr:
        with torch.random.fork_rng(devices=[]):  # a look at the network leaves the RNG alone
            network = _user_network(model_fn)
        if not callable(getattr(network, "features", None)):
            raise ValueError("krr=True scores the network's features: model_fn's network needs "
                             "a features(x) method returning (batch, d) features")

    accuracies, krr_accuracies = [], []
    with tqdm(total=len(seeds) * steps, desc=f"evaluate {progress_label}",
              disable=not progress) as bar:
        for init_seed, data_seed in seeds:
            model = train_network(
                images, targets, arch=arch, norm=norm, width=width, depth=depth, steps=steps,
                lr=lr, warmup=warmup, batch_size=batch_size, augment=augment, flip=flip,
                init_seed=init_seed, data_seed=data_seed, device=device, progress_bar=bar,
                batches=batches, select=select, val=val, select_every=select_every,
                model_fn=model_fn,
            )  # fmt: skip
            accuracies.append(test_accuracy(model, (test_images, test_labels), device=device))
            if krr:
                krr_accuracies.append(
                    krr_accuracy(model, images, targets, (test_images, test_labels),
                                 reg=krr_reg, device=device)
                )  # fmt: skip
    return EvalResult.from_accuracies(accuracies, krr_accuracies if krr else None)


def evaluate_random_subset(train: Split, ipc: int, *, test, seed: int = 0, **options) -> EvalResult:
    """The baseline beside every distilled set: a class-balanced real subset of ``ipc`` images
    per class (drawn with ``seed``), centred one-hot labels, the same protocol."""
    subset = class_balanced_subset(train, ipc, torch.Generator().manual_seed(seed))
    num_classes = options.pop("num_classes", None) or int(train.labels.max()) + 1
    options.setdefault("progress_label", "random subset")
    return evaluate_set(
        subset.images, subset.labels, test=test, seed=seed, num_classes=num_classes, **options
    )


def evaluate_full_data(train: Split, *, test, **options) -> EvalResult:
    """Upper reference: the same protocol on the whole (preprocessed) train split."""
    num_classes = options.pop("num_classes", None) or int(train.labels.max()) + 1
    options.setdefault("progress_label", "full train data")
    return evaluate_set(train.images, train.labels, test=test, num_classes=num_classes, **options)
