"""Distil a dataset into a few learned images: FRePo's outer loop with the ISA loss.

This module is the loop around one outer step (``isa_distill.step``, docs/protocol.md): the
schedule, the feature source's lifecycle, the random draws, logging, validation and
checkpoints. Per outer step:

1. Draw a target batch (X_T, Y_T) of the preprocessed train split; the feature source
   (``isa_distill.sources``) gives the step's network: the current pool model with
   min(M, online_batch) support rows for its online step (``source="pool"``, FRePo), or R
   freshly drawn random networks (``source="random"``, RFAD).
2. Run the step: ISA kernel loss + label margin on the decoded set (``formation``), one LAMB
   (or Adam) step on (X_S, Y_S) with lr cosine from ``lr`` to ``lr * lr_final_fraction``, and
   ONE Adam step of a pool model.
3. The source moves on: a pool model past ``max_online_updates`` updates is re-initialised and
   the next model is drawn uniformly; a random source has nothing to do.

``epsilon=0, discard=0`` is the FRePo (or RFAD) baseline. Every random draw comes from one of
three explicit CPU ``torch.Generator``s (target batches, feature networks, loss partners) that
are checkpointed with everything else, so an interrupted and resumed run is bit-identical to an
uninterrupted one on the same device, and a run can be resumed on another device. The step
never waits for the GPU: losses and the checks' status are accumulated on the device and read
once per ``log_every`` steps and before every checkpoint.

Under torchrun (``isa_distill.distributed``) every rank runs this loop with the same draws; the
hooks of ``isa_distill.parallel`` shard the step's network work, and rank 0 alone reads and
writes the run directory and shows progress (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import checks, runs
from .data import DatasetSplits, Split, allows_flip, class_balanced_subset, uses_zca_by_default
from .data.preprocess import Preprocessor
from .devices import AUTO, check_available, parse_device, resolve_device
from .draws import check_seed, draw_rows, draw_seed, make_generators
from .evaluate import centred_one_hot
from .formation import as_training_set, check_formation, encode_mosaic
from .models import KNOWN_MODELS
from .optim import Lamb, fused_adam
from .parallel import SHARD_SEMANTICS, SINGLE_PROCESS, SingleProcess
from .platt import PLATT_LR
from .sources import (
    SOURCES,
    PoolMember,
    initial_pool,
    make_source,
    new_pool_member,
    new_pool_model,
    pool_optimizer,
    restore_pool,
)
from .step import (
    COMPILE_MODES,
    KRR_LOSSES,
    LossHook,
    LossSettings,
    OuterStep,
    StepResult,
    TargetHook,
)

# Re-exported: the pool and the draws lived here before the feature sources had a module.
__all__ = ["PoolMember", "draw_rows", "draw_seed", "initial_pool", "make_generators",
           "new_pool_member", "new_pool_model", "pool_optimizer", "restore_pool"]

OPTIMIZERS = ("lamb", "adam")
PARTNERS = ("nearest", "random")
CLASS_REDUCTIONS = ("half_sum", "mean")
NORMS = ("none", "batch", "instance")
BACKENDS = ("auto", "rust", "torch")
DEFAULT_LR = {"lamb": 3e-4, "adam": 1e-3}


class ConfigError(ValueError):
    """A ``DistillConfig`` field out of range; ``field`` names it (the CLI names its flag)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


BOOL_FIELDS = ("label_margin", "learn_labels", "autocast", "channels_last", "compile")
OPTIONAL_BOOL_FIELDS = ("flip", "zca")  # None: the protocol's rule
REAL_FIELDS = ("epsilon", "discard", "reg", "lr", "lr_final_fraction", "online_lr")
OPTIONAL_REAL_FIELDS = ("lr",)  # None: the optimiser's default


@dataclass
class DistillConfig:
    """Every default of a distillation run in one place: the paper's GPU settings with its loss
    as the text writes it (Eq. 5); ``--preset paper`` takes its code's loss instead (epsilon -1,
    class_reduction "mean"; ``isa_distill.presets``)."""

    # What to distil.
    ipc: int = 10  # images per class in the synthetic set
    steps: int = 500_000  # outer steps
    batch_size: int = 1024  # target batch (capped at the train split's size)
    # The loss. epsilon=0, discard=0 is FRePo's kernel loss.
    epsilon: float = 1.0  # < 0 integrates away from the partner, as the paper's public code
    discard: float = 0.2
    partner: str = "nearest"  # "nearest" | "random"
    class_reduction: str = "half_sum"  # "half_sum" (paper's Eq. 5) | "mean" (its public code)
    reg: float = 1e-6  # ridge, relative to trace(K) / M
    backend: str = "auto"  # isa_krr_loss backend: "auto" | "rust" (CPU) | "torch"
    label_margin: bool = True
    learn_labels: bool = True
    flip: bool | None = None  # None: the protocol's rule for the dataset and IPC
    zca: bool | None = None  # None: the protocol's rule for the dataset
    # Distillation network (Conv-BN).
    arch: str = "conv"
    width: int = 128
    depth: int = 3
    norm: str = "batch"
    # Optimiser of the synthetic set.
    optimizer: str = "lamb"  # "lamb" | "adam"
    lr: float | None = None  # None: 3e-4 for LAMB, 1e-3 for Adam
    lr_final_fraction: float = 0.1  # cosine decay to lr * this
    lr_schedule_steps: int | None = None  # cosine length (None: steps); see cosine_lr
    # Feature source: "pool" (FRePo's trained pool) | "random" (RFAD's random networks).
    source: str = "pool"
    # Model pool (source "pool").
    pool_size: int = 10
    max_online_updates: int = 100
    online_lr: float = 3e-4
    online_batch: int = 1000
    # Random networks (source "random"): R networks per step, RFAD's ConvNet of constant width.
    random_models: int = 8
    random_width: int = 256
    random_depth: int = 3
    krr_loss: str = "mse"  # "mse" (the KRR loss of docs/loss.md) | "platt" (RFAD's, platt.py)
    # Multi-formation: each stored image decodes to F x F upsampled tiles (formation.py).
    formation: int = 1
    # Bookkeeping.
    seed: int = 0  # in [0, 2**32 - 1]; seeds every draw of the run and the validation hold-out
    device: str = "auto"  # "auto": CUDA when available, else CPU; the run records which
    autocast: bool = False  # bfloat16 feature extraction on CUDA
    channels_last: bool = False  # NHWC pool models and target images (cuDNN's native layout)
    compile: bool = False  # torch.compile the step's forward computations (isa_distill.step)
    compile_mode: str = "default"  # torch.compile mode, e.g. "reduce-overhead" (CUDA graphs)
    log_every: int = 100  # CSV rows and progress-bar updates
    checkpoint_every: int = 1000
    val_every: int = 0  # validation accuracy every N steps (0: only at the end)
    val_steps: int = 300  # training steps of the one-network validation probe
    eval_steps: int | None = None  # steps of each final evaluation network (None: protocol table)
    # Several ranks (torchrun): discard and partners over the global batch ("global", equal to
    # one process) or within each rank's shard ("local", as the official pmap code).
    shard_semantics: str = "global"

    def validate(self) -> None:
        """Raise ``ConfigError`` (a ValueError) naming the first field that is out of range."""
        self._check_types()
        positive = ("ipc", "steps", "batch_size", "width", "depth", "pool_size",
                    "max_online_updates", "online_batch", "log_every", "checkpoint_every",
                    "val_steps", "random_models", "random_width", "random_depth")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"{name} must be a positive int, got {value!r}")
        try:
            check_seed(self.seed)
        except ValueError as error:
            raise ConfigError("seed", str(error)) from None
        if isinstance(self.val_every, bool) or not isinstance(self.val_every, int):
            raise ConfigError("val_every", f"val_every must be an int >= 0, got {self.val_every!r}")
        if self.val_every < 0:
            raise ConfigError("val_every", f"val_every must be an int >= 0, got {self.val_every}")
        if self.lr_schedule_steps is not None and (
            isinstance(self.lr_schedule_steps, bool) or not isinstance(self.lr_schedule_steps, int)
            or self.lr_schedule_steps < 1
        ):
            raise ConfigError("lr_schedule_steps", "lr_schedule_steps must be a positive int or "
                              f"None, got {self.lr_schedule_steps!r}")
        if self.eval_steps is not None and (
            isinstance(self.eval_steps, bool) or not isinstance(self.eval_steps, int)
            or self.eval_steps < 1
        ):
            raise ConfigError("eval_steps", "eval_steps must be a positive int or None, got "
                              f"{self.eval_steps!r}")
        if not 0.0 <= self.discard < 1.0:
            raise ConfigError("discard", f"discard must lie in [0, 1), got {self.discard}")
        if not math.isfinite(self.epsilon):
            raise ConfigError("epsilon", f"epsilon must be finite, got {self.epsilon}")
        if not (math.isfinite(self.reg) and self.reg > 0):
            raise ConfigError("reg", f"reg must be a finite positive number, got {self.reg}")
        choices = {"partner": PARTNERS, "optimizer": OPTIMIZERS, "norm": NORMS,
                   "arch": KNOWN_MODELS,
                   "backend": BACKENDS, "class_reduction": CLASS_REDUCTIONS,
                   "compile_mode": COMPILE_MODES, "shard_semantics": SHARD_SEMANTICS,
                   "source": SOURCES, "krr_loss": KRR_LOSSES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{name} must be one of {allowed}, got "
                                  f"{getattr(self, name)!r}")
        for name in ("lr", "online_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(name, f"{name} must be a finite positive number, got {value}")
        if self.compile and self.partner != "nearest":
            raise ConfigError(
                "compile", f"compile needs partner='nearest' (got {self.partner!r}): random "
                "partners draw from a torch.Generator, which torch.compile cannot trace"
            )
        check_formation(self.formation)
        if self.krr_loss == "platt" and not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(
                f"krr_loss 'platt' needs epsilon in [0, 1], got {self.epsilon}: its virtual "
                "samples' labels mix two one-hot classes, which must stay a distribution"
            )
        if self.compile and self.krr_loss != "mse":
            raise ValueError(f"compile needs krr_loss 'mse' (got {self.krr_loss!r})")
        if not 0.0 < self.lr_final_fraction <= 1.0:
            raise ConfigError("lr_final_fraction", "lr_final_fraction must lie in (0, 1], got "
                              f"{self.lr_final_fraction}")
        if self.device != AUTO:
            try:
                parse_device(self.device)
            except ValueError as error:
                raise ConfigError("device", str(error)) from None

    def _check_types(self) -> None:
        """Flags and numbers of the right kind: a string where a bool goes would be truthy
        (flip="no" turns the flip on), and range checks cannot compare a string."""
        for name in BOOL_FIELDS + OPTIONAL_BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool) and not (value is None and name in OPTIONAL_BOOL_FIELDS):
                also = " or None" if name in OPTIONAL_BOOL_FIELDS else ""
                raise ConfigError(name, f"{name} must be True or False{also}, got {value!r}")
        for name in REAL_FIELDS:
            value = getattr(self, name)
            if value is None and name in OPTIONAL_REAL_FIELDS:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(name, f"{name} must be a number, got {value!r}")
        if not isinstance(self.device, str):
            raise ConfigError("device", "device must be a string such as 'auto', 'cpu', 'cuda' "
                              f"or 'cuda:1', got {self.device!r}")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DistillConfig:
        """The config stored by ``to_dict``; fields added since are filled with their defaults,
        which reproduce what older versions did."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown DistillConfig fields {sorted(unknown)}")
        return cls(**values)

    def loss_settings(self, num_classes: int, flip: bool) -> LossSettings:
        return LossSettings(
            num_classes=num_classes, epsilon=self.epsilon, discard=self.discard,
            partner=self.partner, reg=self.reg, class_reduction=self.class_reduction,
            backend=self.backend, flip=flip, label_margin=self.label_margin,
            autocast=self.autocast, formation=self.formation, krr_loss=self.krr_loss,
        )  # fmt: skip


@dataclass
class DistillResult:
    """The distilled set in the network's input space (apply ``preprocessor.inverse`` to view)."""

    images: torch.Tensor
    labels: torch.Tensor
    preprocessor: Preprocessor
    config: DistillConfig
    steps_done: int
    elapsed: float  # seconds of distillation, summed over resumes
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def training_images(self) -> torch.Tensor:
        """The images networks train on: ``images`` decoded (IPC x F^2 per class)."""
        return as_training_set(self.images, self.labels, self.config.formation)[0]

    @property
    def training_labels(self) -> torch.Tensor:
        """One label row per training image (a stored image's label, shared by its tiles)."""
        return as_training_set(self.images, self.labels, self.config.formation)[1]


# ----------------------------------------------------------------------------- small helpers


def default_flip(dataset: str, ipc: int, num_classes: int | None = None) -> bool:
    """The official code's flip rule: CIFAR-100 and Tiny-ImageNet only at IPC 1, other datasets
    that allow flips (CIFAR-10, image folders) at every IPC, never digit and clothing images.

    Tiny-ImageNet has no loader of its own: any dataset with ``num_classes == 200`` (e.g. an
    image folder of it) follows its rule."""
    if not allows_flip(dataset):
        return False
    if dataset == "cifar100" or num_classes == 200:  # 200 classes: Tiny-ImageNet
        return ipc == 1
    return True


def check_ipc(train: Split, ipc: int, num_classes: int, formation: int = 1,
              class_names: list[str] | None = None) -> None:
    """The class-balanced init needs ``ipc`` x ``formation``^2 real images of every class."""
    counts = torch.bincount(train.labels, minlength=num_classes)
    smallest_class = int(counts.argmin())
    smallest = int(counts[smallest_class])
    needed = ipc * formation * formation
    if smallest < needed:
        how = "" if formation == 1 else (
            f" with formation {formation} (its mosaics start from ipc x {formation}^2 = "
            f"{needed} real images per class)")
        name = class_names[smallest_class] if class_names else smallest_class
        largest = smallest // (formation * formation)
        advice = f"; use ipc <= {largest}" if largest >= 1 else ""
        raise ConfigError(
            "ipc",
            f"ipc={ipc} is too large{how}: class {name!r} has only {smallest} images in the train "
            f"split (after the validation hold-out){advice}",
        )


def resolved_flip(config: DistillConfig, dataset: str, num_classes: int | None = None) -> bool:
    if config.flip is not None:
        return config.flip
    return default_flip(dataset, config.ipc, num_classes)


def resolved_zca(config: DistillConfig, dataset: str) -> bool:
    return uses_zca_by_default(dataset) if config.zca is None else config.zca


def initial_support_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Centred one-hot scaled by 1 / sqrt(C / 10), as FRePo initialises its learned labels."""
    return centred_one_hot(labels, num_classes) / math.sqrt(num_classes / 10)


def cosine_lr(step: int, config: DistillConfig) -> float:
    """lr of outer step ``step`` (0-based): cosine from peak to peak * lr_final_fraction over
    the first ``lr_schedule_steps`` steps (None: ``steps``), then the final lr.

    A resume that extends a run (more ``steps``) keeps the cosine's original length: the steps
    added run at the final lr, so the extended run's first steps are exactly the original run's
    (``resumed_config`` sets ``lr_schedule_steps`` to the original ``steps``).
    """
    peak = config.peak_lr
    final = peak * config.lr_final_fraction
    length = config.steps if config.lr_schedule_steps is None else config.lr_schedule_steps
    progress = min(step / max(length - 1, 1), 1.0)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(params: list[torch.Tensor], config: DistillConfig,
                   log_temperature: torch.Tensor | None = None) -> torch.optim.Optimizer:
    """The synthetic set's optimiser; the Platt temperature (if any) in a group of its own
    that takes plain Adam steps at ``PLATT_LR`` times the cosine's factor (RFAD's 1e-2)."""
    groups: list[dict[str, Any]] = [{"params": params}]
    if log_temperature is not None:
        groups.append({"params": [log_temperature], "trust_ratio": False,
                       "lr_scale": PLATT_LR / config.peak_lr})
    if config.optimizer == "lamb":
        return Lamb(groups, lr=config.peak_lr)
    return fused_adam(groups, config.peak_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# ----------------------------------------------------------------------------- validation


def validation_accuracy(
    images: torch.Tensor, labels: torch.Tensor, val: Split, config: DistillConfig, flip: bool
) -> float | None:
    """Accuracy of one Conv-NN trained briefly on the set, on the held-out validation split."""
    if len(val) == 0:
        return None
    from .evaluate import evaluate_set  # evaluation pulls in augmentation; only load when used

    result = evaluate_set(
        images.detach(),
        labels.detach(),
        test=val,
        arch=config.arch,
        norm="none",
        width=config.width,
        depth=config.depth,
        num_models=1,
        steps=config.val_steps,
        flip=flip,
        seed=config.seed,
        device=config.device,
        progress=False,
    )
    return float(result.mean)


def preprocessed(
    split: Split, preprocessor: Preprocessor, device: str, channels_last: bool = False
) -> Split:
    images = preprocessor.transform(split.images).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return Split(images, split.labels.to(device))


class LossWindow:
    """Loss terms and checks' status accumulated on the device between host reads.

    Adding is queued on the device like the step itself. ``check`` and ``read`` are the only
    places where the loop waits for the GPU: every ``log_every`` steps and before each
    checkpoint, so a checkpoint never stores a set damaged by a step whose checks failed.
    """

    def __init__(self, device: torch.device, start: int, stack=SINGLE_PROCESS.stack) -> None:
        self.device = device
        self.stack = stack  # every rank's values, (ranks, ...): ranks check and log together
        self.checked_upto = start  # steps up to here have had their status read
        self.status = torch.zeros((), dtype=torch.int32, device=device)
        self._reset_sums()

    def _reset_sums(self) -> None:
        self.kernel = torch.zeros((), device=self.device)
        self.margin = torch.zeros((), device=self.device)
        self.count = 0

    def add(self, result: StepResult) -> None:
        self.kernel = self.kernel + result.kernel_loss
        self.margin = self.margin + result.margin_loss
        self.status = self.status | result.status
        self.count += 1

    def check(self, done: int) -> None:
        """Raise (or warn about) what the checks found in the steps since the last check."""
        steps = f"distillation steps {self.checked_upto + 1}-{done}"
        status = torch.zeros_like(self.status)
        for rank_status in self.stack(self.status):  # what any rank's checks found
            status = status | rank_status
        try:
            checks.raise_for_status(status, where=steps)
        except (ValueError, ArithmeticError, torch.linalg.LinAlgError) as error:
            raise type(error)(
                f"{error} (the synthetic set is damaged from there on; the last checkpoint "
                "was written before these steps)"
            ) from error
        self.status = torch.zeros_like(self.status)
        self.checked_upto = done

    def read(self, done: int) -> tuple[float, float]:
        """``check``, then the mean kernel and margin terms since the last read."""
        self.check(done)
        sums = self.stack(torch.stack([self.kernel, self.margin])).mean(0)  # mean over ranks
        kernel, margin = (sums / self.count).tolist()
        self._reset_sums()
        return kernel, margin


# ----------------------------------------------------------------------------- checkpoint dict


CHECKPOINT_KEYS = ("step", "support_images", "support_labels", "optimizer", "rng", "elapsed")


def checkpoint_problem(checkpoint: Any, steps_done: int) -> str | None:
    """What makes a loaded checkpoint unusable for a run that has done ``steps_done`` steps, or
    None. Runs written before hashes were recorded load unchecked, so a foreign file gets here."""
    if not isinstance(checkpoint, dict):
        return f"it holds a {type(checkpoint).__name__}, not a dict"
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        return f"it lacks {missing}"
    step = checkpoint["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"its step is {step!r}, not a count"
    if step < steps_done:  # the loop saves the checkpoint before meta.json's count
        return (f"it holds step {step}, but meta.json says {steps_done} steps were done (a "
                "checkpoint of another run, or an older one)")
    return None


def checkpoint_state(step, support_images, support_labels, optimizer, source, generators,
                     elapsed, log_temperature=None) -> dict[str, Any]:
    """Everything the loop needs to continue bit-identically, as a plain dict of CPU tensors:
    the source's state under "pool" and "current" (a random source: an empty pool), and the
    Platt temperature when the run learns one."""
    state = {
        "step": step,
        "support_images": support_images.detach().cpu(),
        "support_labels": support_labels.detach().cpu(),
        "optimizer": optimizer.state_dict(),
        **source.state(),
        "rng": {name: g.get_state() for name, g in generators.items()},
        "elapsed": elapsed,
    }
    if log_temperature is not None:
        state["log_temperature"] = log_temperature.detach().cpu()
    return state


# ----------------------------------------------------------------------------- the loop


# What a resumed run may change: where it runs, how long (see cosine_lr), how often it
# checkpoints, logs and validates, and the final evaluation's budget. Everything else would
# change the distilled set, and is refused.
RESUMABLE_FIELDS = ("device", "steps", "checkpoint_every", "log_every", "val_every", "val_steps",
                    "eval_steps")


def resumed_config(meta: dict[str, Any], config: DistillConfig | None) -> DistillConfig:
    """The config a resumed run continues with: the stored one, or ``config`` when it differs
    from it in ``RESUMABLE_FIELDS`` only (ValueError naming the other fields that differ).

    A ``config.lr_schedule_steps`` of None means the run's. When ``steps`` changes, the cosine
    keeps its length (``lr_schedule_steps`` = the original steps, see ``cosine_lr``).
    """
    stored = DistillConfig.from_dict(meta["config"])
    if config is None:
        return stored
    given = config.to_dict()
    if given["lr_schedule_steps"] is None:
        given["lr_schedule_steps"] = stored.lr_schedule_steps
    changed = {name: value for name, value in given.items() if value != getattr(stored, name)}
    refused = [name for name in sorted(changed) if name not in RESUMABLE_FIELDS]
    if refused:
        differences = ", ".join(
            f"{name} (the run has {getattr(stored, name)!r}, given {changed[name]!r})"
            for name in refused
        )
        raise ValueError(
            f"cannot resume with a different config: {differences}; these change the distilled "
            f"set, only {', '.join(RESUMABLE_FIELDS)} may change on resume"
        )
    resumed = dataclasses.replace(stored, **changed)
    if resumed.steps != stored.steps and resumed.lr_schedule_steps is None:
        resumed = dataclasses.replace(resumed, lr_schedule_steps=stored.steps)
    return resumed


def check_world_size(run: runs.Run, config: DistillConfig, world_size: int) -> None:
    """Refuse to resume a run with local shard semantics on another number of ranks.

    With local semantics each rank discards and pairs within its shard, so the set depends on
    the number of ranks; with global semantics it does not (up to float rounding: the shards'
    features come from batches of other sizes), and any number of ranks may resume a run.
    """
    stored = int(run.meta.get("world_size", 1))
    if config.shard_semantics == "local" and stored != world_size:
        raise ValueError(
            f"run {run.path} was distilled with shard_semantics 'local' on {stored} rank(s); "
            f"resuming it on {world_size} would change the shards within which each rank "
            f"discards and pairs targets. Resume it on {stored} rank(s) in all (torchrun "
            "--nnodes x --nproc_per_node); runs with global semantics resume on any number"
        )


def checked_request(data: DatasetSplits, config: DistillConfig | None, run_dir, resume: bool,
                    parallel: SingleProcess) -> tuple[runs.Run | None, DistillConfig, Any]:
    """(run, config, checkpoint) of a request that passed every check: with ``resume`` the
    run opened in ``run_dir`` with the config it continues with and its last checkpoint;
    otherwise (None, config, None). Raises what ``distill`` documents."""
    data.check()
    run = checkpoint = None
    if resume:
        run = runs.Run.open_for_resume(run_dir, data)
        config = resumed_config(run.meta, config)
        check_world_size(run, config, parallel.world_size)
        checkpoint = run.load_checkpoint()  # raises when missing or damaged
        problem = checkpoint_problem(checkpoint, run.meta["steps_done"])
        if problem:
            raise runs.RunDamagedError(f"{run.path / runs.CHECKPOINT} is not this run's "
                                       f"checkpoint: {problem}")
        if config.steps < checkpoint["step"]:
            raise ValueError(f"steps={config.steps} is fewer than the {checkpoint['step']} steps "
                             f"run {run.path} has done; pass steps >= {checkpoint['step']}")
    else:
        config = DistillConfig() if config is None else config
    config.validate()
    config = dataclasses.replace(config, device=resolve_device(config.device))  # recorded as run
    check_available(config.device)
    if data.num_classes < 2:
        raise ValueError(f"need at least 2 classes to distil, {data.name} has {data.num_classes}")
    check_formation(config.formation, data.image_size)
    check_ipc(data.train, config.ipc, data.num_classes, config.formation, data.class_names)
    flip = resolved_flip(config, data.name, data.num_classes)
    support_rows = config.ipc * data.num_classes * config.formation**2 * (2 if flip else 1)
    parallel.check(config, min(config.batch_size, len(data.train)), support_rows)
    return run, config, checkpoint


def distill(
    data: DatasetSplits,
    config: DistillConfig | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    loss_fn: LossHook | None = None,
    target_transform: TargetHook | None = None,
    parallel: SingleProcess | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> DistillResult:
    """Distil ``data`` with ``config``; with ``run_dir``, checkpoint and write the run there.

    ``loss_fn(F_S, Y_S, F_T, Y_T, *, settings, generator) -> loss`` replaces the ISA loss and
    ``target_transform(images, labels, generator) -> (images, labels)`` rewrites each target
    batch; both exist for the ablations (see ``isa_distill.step.loss_terms``) and are not
    stored with the run. ``on_log(row)`` is called with every row written to log.csv (the
    keys of ``runs.LOG_COLUMNS``; ``val_acc`` None when not measured), on the writing process
    only, e.g. to write the values to TensorBoard (``isa_distill.tensorboard_log``).

    ``resume=True`` continues the run in ``run_dir`` from its last checkpoint with the config
    stored there (``config`` may then be None; if given, it may differ only in
    ``RESUMABLE_FIELDS``: a larger ``steps`` extends a finished or running run at the final lr,
    see ``cosine_lr``). A run without a checkpoint, or whose files do not match the sha256s in
    its meta.json, is refused (``runs.RunNotFoundError`` / ``runs.RunDamagedError``).
    Without ``resume``, an existing non-empty ``run_dir`` is refused (``runs.RunExistsError``)
    and left untouched. While a run is written, another process distilling into the same
    ``run_dir`` is refused (``runs.RunInUseError``) before it writes anything.

    ``parallel``: the ranks of a torchrun launch (``isa_distill.distributed.launch``), each of
    which calls ``distill`` with the same arguments; rank 0 alone reads and writes ``run_dir``
    (a run with local shard semantics resumes only on as many ranks, see
    ``check_world_size``). None: this process alone.
    """
    if not isinstance(data, DatasetSplits):
        raise TypeError(f"data must be a DatasetSplits (from isa_distill.data.load_dataset; for "
                        f"tensors use isa_distill.distill_tensors), got {type(data).__name__}")
    if config is not None and not isinstance(config, DistillConfig):
        raise TypeError(f"config must be a DistillConfig or None, got {type(config).__name__}")
    with contextlib.ExitStack() as held:  # the run directory's lock, from when there is a run
        return _distill(data, config, run_dir, resume, progress, loss_fn, target_transform,
                        parallel, on_log, held)


def _distill(data, config, run_dir, resume, progress, loss_fn, target_transform, parallel,
             on_log, held: contextlib.ExitStack) -> DistillResult:
    """``distill``, with the run's lock entered into ``held``."""
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir of the run to continue")
    parallel = SINGLE_PROCESS if parallel is None else parallel
    # Rank 0 reads the run directory and checks the request; every rank gets its answer (or
    # its exception), so the ranks go on or stop together.
    run, config, checkpoint = parallel.from_writer(
        lambda: checked_request(data, config, run_dir, resume, parallel))
    device = torch.device(config.device)
    num_classes = data.num_classes
    flip = resolved_flip(config, data.name, num_classes)
    step_fn = OuterStep(config.loss_settings(num_classes, flip), compile=config.compile,
                        mode=config.compile_mode, loss_fn=loss_fn,
                        target_transform=target_transform,
                        parallel=parallel.step_hooks(config.shard_semantics))
    preprocessor = Preprocessor.fit(data.train.images, zca=resolved_zca(config, data.name))
    train = preprocessed(data.train, preprocessor, device, config.channels_last)
    train_targets = centred_one_hot(train.labels, num_classes)
    val = preprocessed(data.val, preprocessor, device)
    batch_size = min(config.batch_size, len(train))
    if not resume and run_dir is not None:  # after every check, so no empty run is left
        run = parallel.from_writer(lambda: runs.Run.create(run_dir))
    run = run if parallel.writes else None  # the other ranks never touch the run directory
    if run_dir is not None:  # refuses a second process writing the run, on every rank
        parallel.from_writer(lambda: held.enter_context(run.writing()))
    if run is not None and checkpoint is None:
        run.write_meta(data, config, preprocessor, flip=flip, steps_done=0,
                       world_size=parallel.world_size)
    elif run is not None:
        run.record_resume(config, data_root=data.root, world_size=parallel.world_size)

    generators = make_generators(config.seed)
    formation = config.formation
    training_rows = config.ipc * num_classes * formation**2  # decoded images
    if checkpoint is None:
        init = class_balanced_subset(data.train, config.ipc * formation**2, generators["data"])
        support_images = encode_mosaic(preprocessor.transform(init.images), formation).to(device)
        support_labels = initial_support_labels(init.labels[::formation**2], num_classes)
        support_labels = support_labels.to(device)
        start, elapsed_before = 0, 0.0
    else:
        support_images = checkpoint["support_images"].to(device)
        support_labels = checkpoint["support_labels"].to(device)
        for name, generator in generators.items():
            generator.set_state(checkpoint["rng"][name])
        start, elapsed_before = int(checkpoint["step"]), float(checkpoint["elapsed"])
    # A fresh pool draws its models from the pool generator; a restored one draws nothing.
    source = make_source(config, data, generators["pool"], training_rows, checkpoint)
    support_images.requires_grad_(True)
    support_labels.requires_grad_(config.learn_labels)
    learned = [support_images] + ([support_labels] if config.learn_labels else [])
    log_temperature = None
    if config.krr_loss == "platt":  # RFAD's k, tau = exp(k), learned with the set from 0
        stored = None if checkpoint is None else checkpoint.get("log_temperature")
        log_temperature = (torch.zeros((), device=device) if stored is None
                           else stored.to(device)).requires_grad_(True)
    optimizer = make_optimizer(learned, config, log_temperature)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    history = parallel.from_writer(
        lambda: run.read_log(upto_step=start) if run is not None else [])

    def save(step: int, elapsed: float) -> None:
        if run is None:
            return
        state = checkpoint_state(step, support_images, support_labels, optimizer, source,
                                 generators, elapsed, log_temperature)
        run.save_checkpoint(state)
        run.write_distilled(support_images, support_labels, preprocessor)
        run.update_meta(steps_done=step, elapsed=elapsed)

    started = time.perf_counter()
    elapsed = elapsed_before
    bar = tqdm(
        total=config.steps, initial=start, disable=not (progress and parallel.writes),
        desc="distill", unit="step", dynamic_ncols=True,
    )
    window = LossWindow(device, start, stack=parallel.stack)
    for step in range(start, config.steps):
        set_lr(optimizer, cosine_lr(step, config))
        rows = draw_rows(len(train), batch_size, generators["data"], device)
        network = source.network(generators["pool"])
        result = step_fn(
            network.model, network.optimizer, support_images, support_labels, optimizer,
            train.images[rows], train_targets[rows], network.online_rows, generators["loss"],
            log_temperature,
        )  # fmt: skip
        source.after_step(generators["pool"])
        window.add(result)

        done = step + 1
        measure = done == config.steps or (config.val_every and done % config.val_every == 0)
        if done % config.log_every == 0 or measure:
            kernel, margin = window.read(done)  # waits for the GPU; raises what checks found
            elapsed = elapsed_before + time.perf_counter() - started
            val_acc = None
            if measure:
                val_acc = validation_accuracy(
                    *as_training_set(support_images, support_labels, formation), val, config,
                    allows_flip(data.name),
                )
            row = {
                "step": done, "loss": kernel + margin, "kernel_loss": kernel,
                "margin_loss": margin, "lr": optimizer.param_groups[0]["lr"], "val_acc": val_acc,
                "elapsed": elapsed,
            }  # fmt: skip
            history.append(row)
            if run is not None:
                run.append_log(row)
            if on_log is not None and parallel.writes:
                on_log(row)
            postfix = {"kernel": f"{kernel:.4g}", "margin": f"{margin:.3g}"}
            if val_acc is not None:
                postfix["val"] = f"{val_acc:.3f}"
            bar.set_postfix(postfix)
        if done % config.checkpoint_every == 0 or done == config.steps:
            window.check(done)
            elapsed = elapsed_before + time.perf_counter() - started
            save(done, elapsed)
        bar.update(1)
    bar.close()
    return DistillResult(
        images=support_images.detach().cpu(),
        labels=support_labels.detach().cpu(),
        preprocessor=preprocessor,
        config=config,
        steps_done=config.steps,
        elapsed=elapsed,
        history=history,
        run_dir=None if run is None else run.path,
    )
