"""Thin calls into the library shared by the experiments: data, distillation, evaluation and
the fixed feature space. Nothing here re-implements the pipeline; it only wires settings in."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data import CLI_NAMES, DatasetSplits, Split, allows_flip, load_dataset
from ..data.preprocess import Preprocessor
from ..distill import DistillConfig, DistillResult, distill, resolved_zca
from ..evaluate import EvalResult, centred_one_hot, evaluate_set, train_network
from ..presets import preset_config
from .settings import ExperimentSettings
from .variants import Variant

# Distillation ends with a one-network validation probe that the experiments never read; one
# step keeps it from costing time (a `val_every=0` that means "never" would be cleaner).
_UNUSED_VALIDATION_STEPS = 1
FEATURE_NETWORK_STEPS = {"cpu": 500, "paper": 5000}


def load_data(settings: ExperimentSettings) -> DatasetSplits:
    return load_dataset(settings.dataset, settings.data_root, seed=0, argument_names=CLI_NAMES)


def load_run_dataset(meta: dict, data_root: str | None) -> DatasetSplits:
    """The dataset of a run (meta.json): from ``data_root``, else the root the run stored;
    image folders at the run's size and channels."""
    options = {}
    if meta["dataset"] == "image-folder":
        options = dict(image_size=meta["image_size"], grayscale=meta["channels"] == 1)
    root = data_root if data_root is not None else meta.get("data_root")
    return load_dataset(meta["dataset"], root, seed=0, argument_names=CLI_NAMES, **options)


def distill_config(settings: ExperimentSettings, seed: int, *, preset: str | None = None,
                   **overrides) -> DistillConfig:
    """The preset's config at this IPC and seed with the experiment's budgets and optimiser
    (``None`` settings keep the preset's; ``overrides`` win over both). The seed fixes
    the synthetic init, the target-batch stream and the pool inits, so variants that share it
    are paired. ``preset``: a distillation preset other than the experiment's (e.g. ``rfad``)."""
    values = dict(
        ipc=settings.ipc, seed=seed, steps=settings.steps, batch_size=settings.batch_size,
        device=settings.device, val_every=0, val_steps=_UNUSED_VALIDATION_STEPS,
        checkpoint_every=10**9, log_every=10**9, optimizer=settings.optimizer, lr=settings.lr,
    )
    values.update(overrides)
    return preset_config(settings.dataset, preset or settings.preset, **values)


def distill_variant(
    data: DatasetSplits, settings: ExperimentSettings, variant: Variant, seed: int, **overrides
) -> DistillResult:
    config = distill_config(settings, seed, **{**variant.overrides, **overrides})
    return distill(data, config, progress=settings.progress, **variant.hooks)


def preprocessed(split: Split, preprocessor: Preprocessor) -> Split:
    return Split(preprocessor.transform(split.images), split.labels)


def real_preprocessor(data: DatasetSplits, settings: ExperimentSettings) -> Preprocessor:
    """The preprocessing ``distill`` fits for this dataset (same rule, same train images)."""
    config = distill_config(settings, settings.seeds[0])
    return Preprocessor.fit(data.train.images, zca=resolved_zca(config, data.name))


@dataclass(frozen=True)
class EvalNetwork:
    """Architecture of the evaluation networks: the distillation net without normalisation."""

    arch: str = "conv"
    norm: str = "none"
    width: int | None = None
    depth: int = 3


def eval_network(settings: ExperimentSettings) -> EvalNetwork:
    config = distill_config(settings, settings.seeds[0])
    return EvalNetwork(config.arch, "none", config.width, config.depth)


def evaluate(
    images: torch.Tensor, labels: torch.Tensor, test: Split, settings: ExperimentSettings,
    seed: int, *, dataset: str, num_classes: int, network: EvalNetwork | None = None,
) -> EvalResult:
    """The protocol's evaluation with the experiment's budget; ``seed`` pairs the networks."""
    network = network or eval_network(settings)
    return evaluate_set(
        images, labels, test=test, arch=network.arch, norm=network.norm, width=network.width,
        depth=network.depth, num_models=settings.eval_models, steps=settings.eval_steps,
        flip=allows_flip(dataset), seed=seed, device=settings.device, progress=settings.progress,
        num_classes=num_classes,
    )


def feature_network(
    train: Split, num_classes: int, settings: ExperimentSettings, *, seed: int = 0,
    steps: int | None = None, flip: bool = False,
) -> nn.Module:
    """A fixed feature space: the evaluation Conv trained on the (preprocessed) real train split
    with the protocol's recipe (Adam 3e-4, warm-up, cosine, augmentation, ``flip`` as the
    dataset allows) for
    ``steps`` (None: ``FEATURE_NETWORK_STEPS[preset]``) of batch 256; ``model.features`` is
    the space."""
    network = eval_network(settings)
    steps = FEATURE_NETWORK_STEPS[settings.preset] if steps is None else steps
    model = train_network(
        train.images, centred_one_hot(train.labels, num_classes), arch=network.arch,
        norm=network.norm, width=network.width, depth=network.depth, steps=steps, lr=3e-4,
        warmup=max(1, min(500, steps // 5)), batch_size=min(256, len(train)), augment=True, flip=flip,
        init_seed=seed, data_seed=seed + 1, device=torch.device(settings.device),
    )
    return model.eval()


@torch.no_grad()
def features(model: nn.Module, images: torch.Tensor, device: str, batch: int = 1000):
    model.eval()
    chunks = [model.features(chunk.to(device)).float().cpu() for chunk in images.split(batch)]
    return torch.cat(chunks)
