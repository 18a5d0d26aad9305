"""Distil a dataset into a few learned images: FRePo's outer loop with the ISA loss.

One outer step, exactly as in the protocol (docs: shared/reference/protocol.md):

1. Draw a target batch (X_T, Y_T) from the preprocessed train split; F_T = f(X_T) from the
   current pool model without gradient, batch norm in inference mode.
2. Flip trick (when on): the support set is [X_S; hflip(X_S)] with labels [Y_S; Y_S].
3. loss = isa_krr_loss(F_S, Y_S, F_T, Y_T, epsilon, discard, partner)
          + mean_i -min(top1(Y_S[i]) - top2(Y_S[i]), 1/C)           (label margin)
4. One LAMB step on (X_S, Y_S) (trust ratio per whole tensor), lr cosine from ``lr`` to
   ``lr * lr_final_fraction`` over the run (Adam as an option).
5. The pool model just used takes ONE Adam step (MSE to the current support labels, batch norm
   in train mode) on min(M, online_batch) random support rows; a model past
   ``max_online_updates`` updates is re-initialised; the next model is drawn uniformly.

``epsilon=0, discard=0`` is the FRePo baseline. Every random draw comes from one of three
explicit ``torch.Generator``s (target batches, pool models, loss partners) that are checkpointed
with everything else, so an interrupted and resumed CPU run is bit-identical to an uninterrupted
one. Support features use batch norm in inference mode too, so they never depend on which other
support rows share the forward pass.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from pytorch_optimizer import Lamb
from tqdm.auto import tqdm

from . import runs
from .data import DatasetSplits, Split, allows_flip, class_balanced_subset, uses_zca_by_default
from .data.preprocess import Preprocessor
from .evaluate import centred_one_hot
from .functional import isa_krr_loss
from .models import build_model

LossHook = Callable[..., torch.Tensor]
TargetHook = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]

OPTIMIZERS = ("lamb", "adam")
PARTNERS = ("nearest", "random")
NORMS = ("none", "batch", "instance")
BACKENDS = ("auto", "rust", "torch")
DEFAULT_LR = {"lamb": 3e-4, "adam": 1e-3}


@dataclass
class DistillConfig:
    """Every default of a distillation run in one place (the paper's GPU settings)."""

    # What to distil.
    ipc: int = 10  # images per class in the synthetic set
    steps: int = 500_000  # outer steps
    batch_size: int = 1024  # target batch (capped at the train split's size)
    # The loss. epsilon=0, discard=0 is FRePo's kernel loss.
    epsilon: float = 1.0
    discard: float = 0.2
    partner: str = "nearest"  # "nearest" | "random"
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
    # Model pool.
    pool_size: int = 10
    max_online_updates: int = 100
    online_lr: float = 3e-4
    online_batch: int = 1000
    # Bookkeeping.
    seed: int = 0
    device: str = "cpu"
    autocast: bool = False  # bfloat16 feature extraction on CUDA
    log_every: int = 100  # CSV rows and progress-bar updates
    checkpoint_every: int = 1000
    val_every: int = 0  # validation accuracy every N steps (0: only at the end)
    val_steps: int = 300  # training steps of the one-network validation probe
    eval_steps: int | None = None  # steps of each final evaluation network (None: protocol table)

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        positive = ("ipc", "steps", "batch_size", "width", "depth", "pool_size",
                    "max_online_updates", "online_batch", "log_every", "checkpoint_every",
                    "val_steps")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.val_every, bool) or not isinstance(self.val_every, int):
            raise ValueError(f"val_every must be an int >= 0, got {self.val_every!r}")
        if self.val_every < 0:
            raise ValueError(f"val_every must be an int >= 0, got {self.val_every!r}")
        if self.eval_steps is not None and (
            isinstance(self.eval_steps, bool) or not isinstance(self.eval_steps, int)
            or self.eval_steps < 1
        ):
            raise ValueError(f"eval_steps must be a positive int or None, got {self.eval_steps!r}")
        if not 0.0 <= self.discard < 1.0:
            raise ValueError(f"discard must lie in [0, 1), got {self.discard}")
        if not math.isfinite(self.epsilon):
            raise ValueError(f"epsilon must be finite, got {self.epsilon}")
        if not (math.isfinite(self.reg) and self.reg > 0):
            raise ValueError(f"reg must be a finite positive number, got {self.reg}")
        choices = {"partner": PARTNERS, "optimizer": OPTIMIZERS, "norm": NORMS,
                   "backend": BACKENDS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("lr", "online_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite positive number, got {value}")
        if not 0.0 < self.lr_final_fraction <= 1.0:
            raise ValueError(f"lr_final_fraction must lie in (0, 1], got {self.lr_final_fraction}")
        try:
            torch.device(self.device)
        except RuntimeError as error:
            raise ValueError(f"device must be a torch device string, got {self.device!r}") from error

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DistillConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown DistillConfig fields {sorted(unknown)}")
        return cls(**values)


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


def check_ipc(train: Split, ipc: int, num_classes: int) -> None:
    """The class-balanced init needs ``ipc`` real images of every class."""
    smallest = int(torch.bincount(train.labels, minlength=num_classes).min())
    if smallest < ipc:
        raise ValueError(
            f"ipc={ipc} is too large: the smallest class of the train split has {smallest} images"
        )


def resolved_flip(config: DistillConfig, dataset: str) -> bool:
    return default_flip(dataset, config.ipc) if config.flip is None else config.flip


def resolved_zca(config: DistillConfig, dataset: str) -> bool:
    return uses_zca_by_default(dataset) if config.zca is None else config.zca


def initial_support_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Centred one-hot scaled by 1 / sqrt(C / 10), as FRePo initialises its learned labels."""
    return centred_one_hot(labels, num_classes) / math.sqrt(num_classes / 10)


def label_margin_penalty(support_labels: torch.Tensor) -> torch.Tensor:
    """mean_i -min(top1_i - top2_i, 1/C): rewards each row's margin up to 1/C, then stops."""
    num_classes = support_labels.shape[1]
    top2 = support_labels.topk(2, dim=1).values
    return -(top2[:, 0] - top2[:, 1]).clamp(max=1.0 / num_classes).mean()


def cosine_lr(step: int, config: DistillConfig) -> float:
    """lr of outer step ``step`` (0-based): cosine from peak to peak * lr_final_fraction."""
    peak = config.peak_lr
    final = peak * config.lr_final_fraction
    progress = step / max(config.steps - 1, 1)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


class ProtocolLamb(Lamb):
    """pytorch_optimizer's LAMB configured to take the protocol's (optax's) step.

    The update is the Adam direction m / (sqrt(v) + eps) rescaled per whole tensor by the trust
    ratio ||p|| / ||update||, so every step moves a tensor by lr * ||p||. Two defaults of the
    library would break that: it clamps ||p|| at 10 (a synthetic set's norm is in the hundreds),
    and it divides the step by the first-moment bias correction 1 - beta1^t AFTER the trust
    ratio (10x larger first steps). ``clamp = inf`` and ``adam_debias=True`` turn both off.
    """

    clamp = math.inf

    def __init__(self, params, lr: float, eps: float = 1e-6) -> None:
        super().__init__(params, lr=lr, eps=eps, weight_decay=0.0, adam_debias=True)


def make_optimizer(params: list[torch.Tensor], config: DistillConfig) -> torch.optim.Optimizer:
    if config.optimizer == "lamb":
        return ProtocolLamb(params, lr=config.peak_lr)
    return torch.optim.Adam(params, lr=config.peak_lr)


def make_generators(seed: int) -> dict[str, torch.Generator]:
    """Independent CPU streams: target batches, pool models, loss partners."""
    return {
        name: torch.Generator().manual_seed(seed * 1000 + offset)
        for offset, name in enumerate(("data", "pool", "loss"))
    }


def new_pool_model(config: DistillConfig, data: DatasetSplits, seed: int) -> torch.nn.Module:
    """A freshly initialised model whose weights depend on ``seed`` only (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
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
    return model.to(config.device)


def draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator))


@dataclass
class PoolMember:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    updates: int


def new_pool_member(config, data, generator, updates: int = 0) -> PoolMember:
    model = new_pool_model(config, data, draw_seed(generator))
    return PoolMember(model, torch.optim.Adam(model.parameters(), lr=config.online_lr), updates)


def initial_pool(config, data, generator) -> list[PoolMember]:
    """Counters staggered 0, K/P, 2K/P, ... so the models re-initialise at different steps."""
    stride = config.max_online_updates // config.pool_size
    return [new_pool_member(config, data, generator, i * stride) for i in range(config.pool_size)]


def autocast_context(config: DistillConfig):
    enabled = config.autocast and torch.device(config.device).type == "cuda"
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)


def outer_loss(
    model: torch.nn.Module,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    target: Split,
    num_classes: int,
    config: DistillConfig,
    flip: bool,
    loss_generator: torch.Generator,
    loss_fn: LossHook | None = None,
    target_transform: TargetHook | None = None,
) -> torch.Tensor:
    """Steps 1-3 of the outer step: ISA KRR loss of the support set on one target batch.

    The ablations' hooks: ``target_transform`` rewrites the target batch (images, centred one-hot
    labels) before feature extraction, ``loss_fn`` replaces the isa_krr_loss call. Both draw from
    the loss generator, so the target-batch and pool streams stay paired with the baseline's.
    """
    model.eval()
    model.requires_grad_(False)  # only the synthetic set receives gradients here
    target_images = target.images
    target_labels = centred_one_hot(target.labels, num_classes)
    if target_transform is not None:
        target_images, target_labels = target_transform(target_images, target_labels,
                                                        loss_generator)
    with torch.no_grad(), autocast_context(config):
        target_features = model.features(target_images)
    images, labels = support_images, support_labels
    if flip:
        images = torch.cat([images, images.flip(-1)])
        labels = torch.cat([labels, labels])
    with autocast_context(config):
        support_features = model.features(images)
    if loss_fn is not None:
        loss = loss_fn(support_features.float(), labels, target_features.float(), target_labels,
                       config=config, generator=loss_generator)
    else:
        loss = isa_krr_loss(
            support_features.float(),
            labels,
            target_features.float(),
            target_labels,
            epsilon=config.epsilon,
            discard=config.discard,
            partner=config.partner,
            reg=config.reg,
            backend=config.backend,
            generator=loss_generator,
        )
    if config.label_margin and config.learn_labels:
        loss = loss + label_margin_penalty(support_labels)
    return loss


def online_step(
    member: PoolMember,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    config: DistillConfig,
    generator: torch.Generator,
) -> None:
    """One Adam step of a pool model on min(M, online_batch) support rows, batch norm training."""
    rows = torch.randperm(len(support_images), generator=generator)[: config.online_batch]
    rows = rows.to(support_images.device)
    member.model.train()
    member.model.requires_grad_(True)
    with autocast_context(config):
        outputs = member.model(support_images[rows].detach())
    loss = F.mse_loss(outputs.float(), support_labels[rows].detach())
    member.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    member.optimizer.step()
    member.updates += 1


def draw_target_batch(train: Split, batch_size: int, generator: torch.Generator) -> Split:
    rows = torch.randperm(len(train), generator=generator)[:batch_size].to(train.images.device)
    return Split(train.images[rows], train.labels[rows])


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


def preprocessed(split: Split, preprocessor: Preprocessor, device: str) -> Split:
    return Split(preprocessor.transform(split.images).to(device), split.labels.to(device))


# ----------------------------------------------------------------------------- checkpoint dict


def checkpoint_state(step, support_images, support_labels, optimizer, pool, current, generators,
                     elapsed) -> dict[str, Any]:
    """Everything the loop needs to continue bit-identically, as a plain dict of CPU tensors."""
    return {
        "step": step,
        "support_images": support_images.detach().cpu(),
        "support_labels": support_labels.detach().cpu(),
        "optimizer": optimizer.state_dict(),
        "pool": [
            {"model": m.model.state_dict(), "optimizer": m.optimizer.state_dict(),
             "updates": m.updates}
            for m in pool
        ],
        "current": current,
        "rng": {name: g.get_state() for name, g in generators.items()},
        "elapsed": elapsed,
    }


def restore_pool(states: list[dict[str, Any]], config, data) -> list[PoolMember]:
    pool = []
    for state in states:
        model = new_pool_model(config, data, seed=0)
        model.load_state_dict(state["model"])
        optimizer = torch.optim.Adam(model.parameters(), lr=config.online_lr)
        optimizer.load_state_dict(state["optimizer"])
        pool.append(PoolMember(model, optimizer, int(state["updates"])))
    return pool


# ----------------------------------------------------------------------------- the loop


def resumed_config(meta: dict[str, Any], config: DistillConfig | None) -> DistillConfig:
    """The stored config of a run being resumed; a given ``config`` may only change ``device``."""
    stored = DistillConfig.from_dict(meta["config"])
    if config is None:
        return stored
    differing = [
        name for name, value in config.to_dict().items()
        if name != "device" and value != getattr(stored, name)
    ]
    if differing:
        raise ValueError(
            f"cannot resume with a different config: {', '.join(sorted(differing))} differ from "
            "the run's stored config (only device may change)"
        )
    return dataclasses.replace(stored, device=config.device)


def distill(
    data: DatasetSplits,
    config: DistillConfig | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    loss_fn: LossHook | None = None,
    target_transform: TargetHook | None = None,
) -> DistillResult:
    """Distil ``data`` with ``config``; with ``run_dir``, checkpoint and write the run there.

    ``loss_fn(F_S, Y_S, F_T, Y_T, *, config, generator) -> loss`` replaces the ISA loss and
    ``target_transform(images, labels, generator) -> (images, labels)`` rewrites each target
    batch; both exist for the ablations (see ``outer_loss``) and are not stored with the run.

    ``resume=True`` continues the run in ``run_dir`` from its last checkpoint with the config
    stored there (``config`` may then be None; if given, it must match apart from ``device``).
    Without ``resume``, an existing non-empty ``run_dir`` is refused (``runs.RunExistsError``)
    and left untouched.
    """
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir of the run to continue")
    checkpoint = None
    if resume:
        run = runs.Run.open_for_resume(run_dir, dataset=data.name)
        config = resumed_config(run.meta, config)
        checkpoint = run.load_checkpoint()
    else:
        config = DistillConfig() if config is None else config
    config.validate()
    if data.num_classes < 2:
        raise ValueError(f"need at least 2 classes to distil, {data.name} has {data.num_classes}")
    check_ipc(data.train, config.ipc, data.num_classes)
    device = config.device
    num_classes = data.num_classes
    flip = resolved_flip(config, data.name)
    preprocessor = Preprocessor.fit(data.train.images, zca=resolved_zca(config, data.name))
    train = preprocessed(data.train, preprocessor, device)
    val = preprocessed(data.val, preprocessor, device)
    batch_size = min(config.batch_size, len(train))
    if not resume:  # only after every check that can fail, so no empty run is left behind
        run = None if run_dir is None else runs.Run.create(run_dir)
    if run is not None and checkpoint is None:
        run.write_meta(data, config, preprocessor, flip=flip, steps_done=0)

    generators = make_generators(config.seed)
    if checkpoint is None:
        init = class_balanced_subset(data.train, config.ipc, generators["data"])
        support_images = preprocessor.transform(init.images).to(device)
        support_labels = initial_support_labels(init.labels, num_classes).to(device)
        pool = initial_pool(config, data, generators["pool"])
        current = int(torch.randint(config.pool_size, (1,), generator=generators["pool"]))
        start, elapsed_before = 0, 0.0
    else:
        support_images = checkpoint["support_images"].to(device)
        support_labels = checkpoint["support_labels"].to(device)
        pool = restore_pool(checkpoint["pool"], config, data)
        current = int(checkpoint["current"])
        for name, generator in generators.items():
            generator.set_state(checkpoint["rng"][name])
        start, elapsed_before = int(checkpoint["step"]), float(checkpoint["elapsed"])
    support_images.requires_grad_(True)
    support_labels.requires_grad_(config.learn_labels)
    learned = [support_images] + ([support_labels] if config.learn_labels else [])
    optimizer = make_optimizer(learned, config)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    history = run.read_log(upto_step=start) if run is not None else []

    def save(step: int, elapsed: float) -> None:
        if run is None:
            return
        state = checkpoint_state(
            step, support_images, support_labels, optimizer, pool, current, generators, elapsed
        )
        run.save_checkpoint(state)
        run.write_distilled(support_images, support_labels, preprocessor)
        run.update_meta(steps_done=step, elapsed=elapsed)

    started = time.perf_counter()
    elapsed = elapsed_before
    bar = tqdm(
        total=config.steps, initial=start, disable=not progress, desc="distill", unit="step",
        dynamic_ncols=True,
    )
    loss_sum, loss_count = 0.0, 0
    for step in range(start, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, config)
        member = pool[current]
        target = draw_target_batch(train, batch_size, generators["data"])
        loss = outer_loss(
            member.model, support_images, support_labels, target, num_classes, config, flip,
            generators["loss"], loss_fn, target_transform,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        online_step(member, support_images, support_labels, config, generators["pool"])
        if member.updates > config.max_online_updates:
            pool[current] = new_pool_member(config, data, generators["pool"])
        current = int(torch.randint(config.pool_size, (1,), generator=generators["pool"]))

        loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
        done = step + 1
        elapsed = elapsed_before + time.perf_counter() - started
        measure = done == config.steps or (config.val_every and done % config.val_every == 0)
        if done % config.log_every == 0 or measure:
            val_acc = None
            if measure:
                val_acc = validation_accuracy(
                    support_images, support_labels, val, config, allows_flip(data.name)
                )
            row = {
                "step": done, "loss": loss_sum / loss_count,
                "lr": optimizer.param_groups[0]["lr"], "val_acc": val_acc, "elapsed": elapsed,
            }
            history.append(row)
            if run is not None:
                run.append_log(row)
            postfix = {"loss": f"{row['loss']:.4f}"}
            if val_acc is not None:
                postfix["val"] = f"{val_acc:.3f}"
            bar.set_postfix(postfix)
            loss_sum, loss_count = 0.0, 0
        if done % config.checkpoint_every == 0 or done == config.steps:
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
