"""Where each outer step's features come from: the feature source, a strategy of the loop.

The loop (``isa_distill.distill``) asks its source for the network of every step and tells it
when the step is done; everything else (the loss, ISA and discard, the synthetic set's update)
is the same for every source.

``pool``    FRePo's pool of trained models (the protocol's default): P Conv-BN models with
            staggered update counters; the model of a step takes ONE online Adam step on support
            rows afterwards, is re-initialised after ``max_online_updates`` updates, and the
            next model is drawn uniformly.
``random``  RFAD (Loo et al. 2022): every step samples R fresh randomly initialised ConvNets
            and never trains them. Their features, concatenated and scaled, give a random-feature
            estimate of the ConvNet's NNGP kernel (see ``RandomConvFeatures``).

Both draw from the run's ``pool`` generator only (model seeds, online rows, the next model), so
an interrupted and resumed run is exact with either. ``state()`` is what the checkpoint stores
under ``"pool"`` and ``"current"``; the random source has nothing to save (an empty pool), since
its networks are rebuilt from seeds drawn at each step.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .devices import resolve_device
from .draws import draw_rows, draw_seed
from .models import build_model
from .optim import fused_adam

SOURCES = ("pool", "random")
# RFAD's kernel is K = 2 F F^T + 0.01 (its public code): the 2 of the ReLU NNGP and a bias
# term, which a constant feature of 0.1 adds to every entry.
NNGP_SCALE = 2.0
BIAS_FEATURE = 0.1
BIAS_STD = 0.1  # RFAD draws the conv biases from N(0, 0.1^2)


@dataclass
class StepNetwork:
    """The network of one step, and its online step (``optimizer`` None: none)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    online_rows: Tensor | None = None


class FeatureSource(ABC):
    """The loop's feature networks: one per step, drawn from the run's pool generator."""

    @abstractmethod
    def network(self, generator: torch.Generator) -> StepNetwork:
        """The network (with ``features``) of the next step, and its online step if any."""

    def after_step(self, generator: torch.Generator) -> None:
        """Called once the step ran (pool: count the update, re-initialise, draw the next)."""
        return None  # a source without state between steps (random networks) does nothing

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """``{"pool": [...], "current": int}``: what the checkpoint stores for this source."""


# ----------------------------------------------------------------------------- the model pool


def new_pool_model(config, data, seed: int) -> nn.Module:
    """A freshly initialised model on the run's device whose weights depend on ``seed`` only.

    It is built directly on the device (the global RNG state is restored afterwards), so a
    re-initialisation costs no host-to-device copy.
    """
    device = torch.device(resolve_device(config.device))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)
        model = build_model(
            config.arch,
            in_channels=data.channels,
            num_classes=data.num_classes,
            image_size=data.image_size,
            width=config.width,
            depth=config.depth,
            norm=config.norm,
        )
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


@dataclass
class PoolMember:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    updates: int


def pool_optimizer(model: nn.Module, config) -> torch.optim.Optimizer:
    return fused_adam(model.parameters(), config.online_lr)


def new_pool_member(config, data, generator, updates: int = 0) -> PoolMember:
    model = new_pool_model(config, data, draw_seed(generator))
    return PoolMember(model, pool_optimizer(model, config), updates)


def initial_pool(config, data, generator) -> list[PoolMember]:
    """Counters staggered 0, K/P, 2K/P, ... so the models re-initialise at different steps."""
    stride = config.max_online_updates // config.pool_size
    return [new_pool_member(config, data, generator, i * stride) for i in range(config.pool_size)]


def restore_pool(states: list[dict[str, Any]], config, data) -> list[PoolMember]:
    pool = []
    for state in states:
        model = new_pool_model(config, data, seed=0)
        model.load_state_dict(state["model"])
        optimizer = pool_optimizer(model, config)
        optimizer.load_state_dict(state["optimizer"])
        pool.append(PoolMember(model, optimizer, int(state["updates"])))
    return pool


class PoolSource(FeatureSource):
    """FRePo's pool; ``training_rows`` is the number of (decoded) support images the online
    step draws its ``min(training_rows, online_batch)`` rows from."""

    def __init__(self, config, data, pool: list[PoolMember], current: int,
                 training_rows: int) -> None:
        self.config, self.data = config, data
        self.pool, self.current = pool, current
        self.training_rows = training_rows
        self.online_rows = min(training_rows, config.online_batch)

    @classmethod
    def start(cls, config, data, generator, training_rows: int) -> PoolSource:
        pool = initial_pool(config, data, generator)
        current = int(torch.randint(config.pool_size, (1,), generator=generator))
        return cls(config, data, pool, current, training_rows)

    @classmethod
    def restore(cls, checkpoint, config, data, training_rows: int) -> PoolSource:
        pool = restore_pool(checkpoint["pool"], config, data)
        return cls(config, data, pool, int(checkpoint["current"]), training_rows)

    def network(self, generator: torch.Generator) -> StepNetwork:
        member = self.pool[self.current]
        rows = draw_rows(self.training_rows, self.online_rows, generator,
                         torch.device(resolve_device(self.config.device)))
        return StepNetwork(member.model, member.optimizer, rows)

    def after_step(self, generator: torch.Generator) -> None:
        member = self.pool[self.current]
        member.updates += 1
        if member.updates > self.config.max_online_updates:
            self.pool[self.current] = new_pool_member(self.config, self.data, generator)
        self.current = int(torch.randint(self.config.pool_size, (1,), generator=generator))

    def state(self) -> dict[str, Any]:
        return {
            "pool": [
                {"model": m.model.state_dict(), "optimizer": m.optimizer.state_dict(),
                 "updates": m.updates}
                for m in self.pool
            ],
            "current": self.current,
        }


# ----------------------------------------------------------------------------- random networks


class RandomConvFeatures(nn.Module):
    """R random ConvNets of RFAD, run together; ``features`` is their random-feature map.

    Each network: ``depth`` blocks of [3x3 conv with ``width`` channels and a bias, padding 1 ->
    ReLU -> 2x2 average pool], no normalisation; weights ~ N(0, 2 / fan_in), biases
    ~ N(0, 0.1^2) (RFAD's ``ConvNet_wide`` with its Gaussian init). Network r's features f_r(x)
    are its flattened output, d values. The source's features are

        phi(x) = [sqrt(2 / (R d)) f_1(x), ..., sqrt(2 / (R d)) f_R(x), 0.1]

    so phi(x) . phi(x') = 2/R sum_r f_r(x) . f_r(x') / d + 0.01: the mean of the R networks'
    empirical NNGP kernels (each scaled by 2 / d) plus RFAD's bias term, which is RFAD's
    kernel. The mean over R networks is what the 1/sqrt(R) does: K's entries concentrate around
    their expectation over networks, with a spread that shrinks like 1/sqrt(R).

    The R networks run as grouped convolutions (one call per block). ``resample(seeds)``
    redraws every weight in place, network r from ``seeds[r]`` alone, so the module (and a
    compiled graph that holds it) stays the same object across steps.
    """

    def __init__(self, *, in_channels: int, image_size: int, models: int, width: int,
                 depth: int, device: torch.device | str = "cpu") -> None:
        super().__init__()
        size = image_size
        for _ in range(depth):
            size //= 2
        if size < 1:
            raise ValueError(
                f"random_depth={depth} is too deep for {image_size}x{image_size} images (each "
                "block halves the map); use a smaller random_depth"
            )
        self.models, self.width, self.depth = models, width, depth
        self.per_model = width * size * size
        self.scale = math.sqrt(NNGP_SCALE / (models * self.per_model))
        for block in range(depth):
            fan_in = in_channels if block == 0 else width
            self.register_buffer(f"weight{block}",
                                 torch.zeros(models * width, fan_in, 3, 3, device=device))
            self.register_buffer(f"bias{block}", torch.zeros(models * width, device=device))

    @property
    def feature_dim(self) -> int:
        return self.models * self.per_model + 1

    def resample(self, seeds: list[int]) -> None:
        """Redraw network r's weights from ``seeds[r]`` (a device generator per network)."""
        if len(seeds) != self.models:
            raise ValueError(f"need {self.models} seeds, got {len(seeds)}")
        device = self.weight0.device
        for r, seed in enumerate(seeds):
            generator = torch.Generator(device=device).manual_seed(seed)
            rows = slice(r * self.width, (r + 1) * self.width)
            for block in range(self.depth):
                weight = getattr(self, f"weight{block}")[rows]
                std = math.sqrt(2.0 / weight[0].numel())
                weight.normal_(0.0, std, generator=generator)
                getattr(self, f"bias{block}")[rows].normal_(0.0, BIAS_STD, generator=generator)

    def network_features(self, images: Tensor) -> Tensor:
        """(B, R, d): every network's flattened output f_r(x), unscaled."""
        h = images
        for block in range(self.depth):
            # Block 0 sees the same input for every network: one ordinary convolution with
            # R * width outputs; later blocks convolve each network's own channels (groups=R).
            groups = 1 if block == 0 else self.models
            h = F.conv2d(h, getattr(self, f"weight{block}"), getattr(self, f"bias{block}"),
                         padding=1, groups=groups)
            h = F.avg_pool2d(F.relu(h), 2)
        return h.reshape(len(images), self.models, self.per_model)

    def features(self, images: Tensor) -> Tensor:
        scaled = self.network_features(images).flatten(1) * self.scale
        bias = torch.full((len(images), 1), BIAS_FEATURE, dtype=scaled.dtype,
                          device=scaled.device)
        return torch.cat([scaled, bias], dim=1)


class RandomSource(FeatureSource):
    """RFAD's source: R fresh random networks per step, seeds from the pool generator."""

    def __init__(self, config, data) -> None:
        self.features = RandomConvFeatures(
            in_channels=data.channels, image_size=data.image_size, models=config.random_models,
            width=config.random_width, depth=config.random_depth,
            device=torch.device(resolve_device(config.device)),
        )

    def network(self, generator: torch.Generator) -> StepNetwork:
        self.features.resample([draw_seed(generator) for _ in range(self.features.models)])
        return StepNetwork(self.features)

    def state(self) -> dict[str, Any]:
        return {"pool": [], "current": 0}


def make_source(config, data, generator: torch.Generator, training_rows: int,
                checkpoint: dict[str, Any] | None = None) -> FeatureSource:
    """The run's source, fresh (its first draws from ``generator``) or from ``checkpoint``."""
    if config.source == "random":
        return RandomSource(config, data)
    if checkpoint is None:
        return PoolSource.start(config, data, generator, training_rows)
    return PoolSource.restore(checkpoint, config, data, training_rows)
