"""One outer step of the distillation: pure tensor work, no I/O, no host synchronisation.

The step (protocol, steps 1-5):

1. the stored synthetic images are decoded into training images (multi-formation,
   ``isa_distill.formation``; F = 1 leaves them as they are);
2. target features F_T = f(X_T) of the step's network (``isa_distill.sources``), without
   gradient, batch norm in inference mode; support features F_S = f(X_S) likewise in inference
   mode but with gradient (with the flip trick, X_S is [X_S; hflip(X_S)] and Y_S is [Y_S; Y_S]);
3. kernel loss = isa_krr_loss(F_S, Y_S, F_T, Y_T) with deferred checks (or RFAD's Platt loss,
   ``isa_distill.platt``), and the label-margin term mean_i -min(top1(Y_S[i]) - top2(Y_S[i]),
   1/C) of the stored labels (when labels are learned);
4. backward (on several ranks, the gradients reduced over them: ``isa_distill.parallel``), and
   one step of the synthetic set's optimiser (LAMB or Adam);
5. when the source trains its network online (the pool), ONE Adam step of it on the given
   decoded support rows (MSE to their current labels, batch norm in training mode, no
   augmentation).

It returns the two loss terms (detached) and a status tensor (``isa_distill.checks``) that
collects everything the value checks found, including a NaN or Inf gradient of the synthetic
set; nothing in here reads a tensor value on the host, so on CUDA the host can queue the next
step while the GPU works. Every random draw (target rows, online rows, partners) is made by the
caller and passed in, which keeps the step deterministic and lets the loop checkpoint the
generators.

With ``compile=True`` the two forward computations (steps 1-2 and the pool model's MSE) are
``torch.compile``d with ``fullgraph=True``; AOTAutograd compiles their backward graphs too.
The optimiser steps stay outside the graphs because Dynamo cannot trace ``backward()`` (in
torch 2.11 and earlier), so the update has to follow the engine's backward; both optimisers
run as a handful of fused/foreach kernels. Random partners and the ablations' hooks draw from a
``torch.Generator`` inside the loss, which Dynamo cannot trace: they run uncompiled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checks
from .formation import decode, decode_labels
from .functional import isa_krr_loss
from .parallel import SINGLE_STEP, StepHooks
from .platt import platt_isa_loss

LossHook = Callable[..., Tensor]
TargetHook = Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
KRR_LOSSES = ("mse", "platt")


@dataclass(frozen=True)
class LossSettings:
    """What the loss of one step depends on besides its tensors (fixed for a run)."""

    num_classes: int
    epsilon: float = 1.0
    discard: float = 0.2
    partner: str = "nearest"
    reg: float = 1e-6
    class_reduction: str = "half_sum"
    backend: str = "auto"
    flip: bool = False  # the flip trick: support set [X_S; hflip(X_S)]
    label_margin: bool = True  # applied only when labels are learned
    autocast: bool = False  # bfloat16 feature extraction (CUDA only)
    formation: int = 1  # multi-formation factor F: each stored image decodes to F^2 images
    krr_loss: str = "mse"  # "mse": isa_krr_loss; "platt": RFAD's cross-entropy (platt.py)


@dataclass(frozen=True)
class StepResult:
    """The two loss terms (0-d, detached, on the device) and the checks' status."""

    kernel_loss: Tensor
    margin_loss: Tensor
    status: Tensor


def autocast_context(enabled: bool, device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def label_margin_penalty(support_labels: Tensor) -> Tensor:
    """mean_i -min(top1_i - top2_i, 1/C): rewards each row's margin up to 1/C, then stops."""
    num_classes = support_labels.shape[1]
    top2 = support_labels.topk(2, dim=1).values
    return -(top2[:, 0] - top2[:, 1]).clamp(max=1.0 / num_classes).mean()


def loss_terms(
    model: nn.Module,
    support_images: Tensor,
    support_labels: Tensor,
    target_images: Tensor,
    target_labels: Tensor,
    settings: LossSettings,
    generator: torch.Generator | None = None,
    loss_fn: LossHook | None = None,
    target_transform: TargetHook | None = None,
    parallel: StepHooks = SINGLE_STEP,
    log_temperature: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(kernel loss, label-margin term, status) of the support set on one target batch.

    ``support_images`` and ``support_labels`` are the stored set; the loss sees them decoded
    (``settings.formation``). ``log_temperature`` is the learned k of the Platt loss
    (``settings.krr_loss == "platt"``).

    The model must be prepared with ``for_features`` (Dynamo cannot trace the switch).
    ``target_labels`` are centred one-hot. The ablations' hooks: ``target_transform`` rewrites
    the target batch before feature extraction, ``loss_fn(F_S, Y_S, F_T, Y_T, *, settings,
    generator)`` replaces the isa_krr_loss call; both draw from ``generator`` (the loss
    stream), so the target-batch and pool streams stay paired with the baseline's.
    ``parallel`` computes the features; on several ranks (``isa_distill.distributed``) each
    computes its shard's and the loss sees the global batch (or, with local shard semantics,
    the rank's shard).
    """
    device = support_images.device
    if target_transform is not None:
        target_images, target_labels = target_transform(target_images, target_labels, generator)
    with torch.no_grad(), autocast_context(settings.autocast, device):
        target_features, target_labels = parallel.target_features(model, target_images,
                                                                  target_labels)
    images = decode(support_images, settings.formation)
    labels = decode_labels(support_labels, settings.formation)
    if settings.flip:
        images = torch.cat([images, images.flip(-1)])
        labels = torch.cat([labels, labels])
    with autocast_context(settings.autocast, device):
        support_features = parallel.support_features(model, images)
    if loss_fn is not None:
        kernel = loss_fn(support_features.float(), labels, target_features.float(),
                         target_labels, settings=settings, generator=generator)
        status = torch.zeros((), dtype=torch.int32, device=device)
    elif settings.krr_loss == "platt":
        kernel, status = platt_isa_loss(support_features.float(), labels,
                                        target_features.float(), target_labels,
                                        log_temperature, settings=settings, generator=generator)
    else:
        kernel, info = isa_krr_loss(
            support_features.float(),
            labels,
            target_features.float(),
            target_labels,
            epsilon=settings.epsilon,
            discard=settings.discard,
            partner=settings.partner,
            reg=settings.reg,
            class_reduction=settings.class_reduction,
            backend=settings.backend,
            generator=generator,
            return_info=True,
            checks="deferred",
        )
        status = info.status
    if settings.label_margin and support_labels.requires_grad:
        margin = label_margin_penalty(support_labels)
    else:
        margin = torch.zeros((), device=device)
    return kernel, margin, status


def for_features(model: nn.Module) -> nn.Module:
    """Inference mode, no parameter gradients: only the synthetic set is learned by the loss."""
    return model.eval().requires_grad_(False)


def for_training(model: nn.Module) -> nn.Module:
    """Batch norm in training mode and parameter gradients on, for the online step."""
    return model.train().requires_grad_(True)


def online_loss(model: nn.Module, images: Tensor, labels: Tensor, autocast: bool) -> Tensor:
    """MSE of the pool model on support rows; prepare the model with ``for_training``."""
    with autocast_context(autocast, images.device):
        outputs = model(images)
    return F.mse_loss(outputs.float(), labels)


def gradient_status(tensors: list[Tensor]) -> Tensor:
    """NONFINITE_GRADIENT when any of the tensors' gradients holds a NaN or Inf."""
    finite = torch.stack([torch.isfinite(t.grad).all() for t in tensors if t.grad is not None])
    return checks.flag(~finite.all(), checks.Status.NONFINITE_GRADIENT)


class OuterStep:
    """Runs one outer step in place on the synthetic set, its optimiser and the step's network
    (its online step only when the source gives it an optimiser: the pool's models).

    ``compile``: torch.compile the two forward computations (``fullgraph=True``, ``mode``);
    refused with random partners or hooks, which draw from a generator inside the loss.
    ``parallel``: the step's hooks into the other ranks of a data-parallel run (features of
    the local shards, gradient reduction; ``isa_distill.distributed``); the default is one
    process.
    """

    def __init__(
        self,
        settings: LossSettings,
        *,
        compile: bool = False,
        mode: str = "default",
        loss_fn: LossHook | None = None,
        target_transform: TargetHook | None = None,
        parallel: StepHooks = SINGLE_STEP,
    ) -> None:
        if compile and (settings.partner != "nearest" or loss_fn or target_transform
                        or settings.krr_loss != "mse"):
            raise ValueError(
                "compile=True needs partner='nearest', krr_loss 'mse' and no loss hooks: random "
                "partners and the ablations' hooks draw from a torch.Generator, which "
                "torch.compile cannot trace, and the Platt loss is not compiled; run them with "
                "compile off"
            )
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
        self.settings = settings
        self.hooks = dict(loss_fn=loss_fn, target_transform=target_transform)
        self.parallel = parallel
        self._loss_terms = loss_terms
        self._online_loss = online_loss
        if compile:
            self._loss_terms = torch.compile(loss_terms, fullgraph=True, mode=mode)
            self._online_loss = torch.compile(online_loss, fullgraph=True, mode=mode)

    def __call__(
        self,
        model: nn.Module,
        model_optimizer: torch.optim.Optimizer | None,
        support_images: Tensor,
        support_labels: Tensor,
        optimizer: torch.optim.Optimizer,
        target_images: Tensor,
        target_labels: Tensor,
        online_rows: Tensor | None,
        generator: torch.Generator | None = None,
        log_temperature: Tensor | None = None,
    ) -> StepResult:
        """``model_optimizer`` None: no online step (a random source); ``online_rows`` index
        the decoded support images."""
        settings = self.settings
        if settings.partner == "nearest" and not any(self.hooks.values()):
            generator = None  # unused; keeps the compiled call free of generator arguments
        platt = {} if log_temperature is None else {"log_temperature": log_temperature}
        kernel, margin, status = self._loss_terms(
            for_features(model), support_images, support_labels, target_images, target_labels,
            settings, generator, **self.hooks, parallel=self.parallel, **platt,
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        (kernel + margin).backward()
        self.parallel.reduce_gradients(support_images, support_labels)
        learned = [group_param for group in optimizer.param_groups
                   for group_param in group["params"]]
        status = status | gradient_status(learned)
        optimizer.step()
        if model_optimizer is None:
            return StepResult(kernel.detach(), margin.detach(), status)

        formation = settings.formation
        rows_images = decode(support_images.detach(), formation)[online_rows]
        rows_labels = decode_labels(support_labels.detach(), formation)[online_rows]
        model_optimizer.zero_grad(set_to_none=True)
        loss = self._online_loss(for_training(model), rows_images, rows_labels, settings.autocast)
        loss.backward()
        model_optimizer.step()
        return StepResult(kernel.detach(), margin.detach(), status)
