"""What every experiment shares: dataset, IPC, preset, step budgets, seeds and device.

Two presets:

``cpu``    (default) finishes in minutes on 2 CPU cores: the distillation preset ``cpu`` of
           ``isa_distill.presets`` cut to ``steps=200`` outer steps with a 256-sample target
           batch, evaluation by 2 networks of 300 steps each, 3 paired seeds.
``paper``  the paper's settings on a GPU: the ``paper`` distillation preset (500k steps),
           5 evaluation networks with the protocol's step budget, 3 paired seeds.

Both run on CUDA when torch sees a GPU and on the CPU otherwise (``device="auto"``); the
settings hold the device chosen.

``optimizer`` and ``lr`` (None: the distillation preset's) choose the optimiser of the synthetic
set for every variant of an experiment; ``lr`` None with an ``optimizer`` given means that
optimiser's default rate (``isa_distill.distill.DEFAULT_LR``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..devices import check_available, resolve_device
from ..distill import OPTIMIZERS
from ..draws import check_seed
from ..evaluate import MAX_MODELS
from ..presets import PRESETS

_EXPERIMENT_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(steps=200, batch_size=256, eval_models=2, eval_steps=300, seeds=(0, 1, 2),
                device="auto"),
    "paper": dict(steps=None, batch_size=None, eval_models=5, eval_steps=None, seeds=(0, 1, 2),
                  device="auto"),
}


@dataclass(frozen=True)
class ExperimentSettings:
    """Settings of one experiment run; ``None`` budgets defer to the distillation preset or
    the evaluation protocol."""

    dataset: str = "digits"
    data_root: str | None = None
    ipc: int = 10
    preset: str = "cpu"
    steps: int | None = 200  # outer distillation steps (None: the preset's)
    batch_size: int | None = 256  # target batch (None: the preset's)
    eval_models: int = 2  # networks trained per evaluated set
    eval_steps: int | None = 300  # steps per evaluation network (None: protocol table)
    seeds: tuple[int, ...] = (0, 1, 2)  # paired seeds: distillation and evaluation
    device: str = "cpu"  # experiment_settings turns "auto" into cuda or cpu
    progress: bool = False
    optimizer: str | None = None  # optimiser of the synthetic set (None: the preset's)
    lr: float | None = None  # its peak learning rate (None: the optimiser's default)

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr is not None and (
            isinstance(self.lr, bool) or not isinstance(self.lr, (int, float))
            or not math.isfinite(self.lr) or self.lr <= 0
        ):
            raise ValueError(f"lr must be a finite positive number, got {self.lr!r}")
        for name in ("ipc", "eval_models"):
            _check_positive(name, getattr(self, name))
        if self.eval_models > MAX_MODELS:
            raise ValueError(f"eval_models must be at most {MAX_MODELS}, got {self.eval_models}")
        for name in ("steps", "batch_size", "eval_steps"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        for seed in self.seeds:
            check_seed(seed, "every seed in seeds")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def experiment_settings(preset: str = "cpu", **overrides: Any) -> ExperimentSettings:
    """The settings of ``preset`` with ``overrides`` (``None`` values are ignored)."""
    if preset not in _EXPERIMENT_PRESETS:
        raise ValueError(f"preset must be one of {tuple(_EXPERIMENT_PRESETS)}, got {preset!r}")
    fields = {f.name for f in dataclasses.fields(ExperimentSettings)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown experiment settings {sorted(unknown)}")
    values = {**_EXPERIMENT_PRESETS[preset], "preset": preset}
    values.update({key: value for key, value in overrides.items() if value is not None})
    values["device"] = resolve_device(values["device"])  # "auto": CUDA when available
    check_available(values["device"])
    if "seeds" in values:
        values["seeds"] = tuple(values["seeds"])
    settings = ExperimentSettings(**values)
    settings.validate()
    return settings


# Settings that do not change one (variant or arm, seed) result: the seed list only selects which
# pairs run, and progress bars are display.
_NOT_IN_KEY = ("seeds", "progress")


def settings_key(settings: ExperimentSettings) -> dict[str, Any]:
    """What must match for a stored (variant or arm, seed) result to be reused."""
    values = dataclasses.asdict(settings)
    for name in _NOT_IN_KEY:
        values.pop(name)
    return values
