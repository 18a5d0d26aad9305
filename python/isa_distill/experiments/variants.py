"""The ablation's variants of the outer loss, all distilled by the one pipeline.

Most variants are ``DistillConfig`` settings of the ISA loss (epsilon, discard; those that pin
``class_reduction`` mean the same under every preset, the others take the preset's). The others
replace the loss itself through the hooks of ``isa_distill.distill.distill`` (``settings`` is
the step's ``isa_distill.step.LossSettings``):

    loss_fn(support_features, support_labels, target_features, target_labels, *, settings,
            generator) -> scalar tensor         used in place of the isa_krr_loss call
    target_transform(images, labels, generator) -> (images, labels)
                                                applied to the target batch (labels centred
                                                one-hot, float) before feature extraction

Both hooks draw from the run's loss generator, so every variant sees the baseline's target
batches and pool models (paired comparisons).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..baselines import monte_carlo_isa_loss
from ..functional import isa_krr_loss
from .names import resolve_names


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)  # DistillConfig fields
    loss_fn: Callable[..., torch.Tensor] | None = None
    target_transform: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def hooks(self) -> dict[str, Callable]:
        hooks = {"loss_fn": self.loss_fn, "target_transform": self.target_transform}
        return {name: fn for name, fn in hooks.items() if fn is not None}


# ----------------------------------------------------------------------------- hooked losses


def plain_losses(fs, ys, ft, yt, settings) -> torch.Tensor:
    """Per-target FRePo loss l_i = 1/2 ||P_i - Y_i||^2 (epsilon 0, discard 0), differentiable."""
    return isa_krr_loss(fs, ys, ft, yt, epsilon=0.0, discard=0.0, reg=settings.reg,
                        reduction="none")


def keep_easiest_loss(fraction: float) -> Callable[..., torch.Tensor]:
    """Drop the HARDEST ``fraction``: mean of l_i over the floor((1 - fraction) N) smallest."""

    def loss(fs, ys, ft, yt, *, settings, generator):
        per_target = plain_losses(fs, ys, ft, yt, settings)
        n_keep = len(per_target) - int(fraction * len(per_target))
        return per_target.topk(n_keep, largest=False).values.mean()

    return loss


def feature_mixup_loss(fs, ys, ft, yt, *, settings, generator):
    """One alpha ~ U(0, 1) per step: every target moves to z_i + alpha (z_j - z_i) (labels
    alike), j its cosine-nearest peer; the FRePo loss of the mixed batch. A single-sample
    estimate of the ISA integral with epsilon 1 and no discard."""
    _, info = isa_krr_loss(fs.detach(), ys.detach(), ft, yt, epsilon=1.0, discard=0.0,
                           reg=settings.reg, return_info=True)
    alpha = float(torch.rand((), generator=generator))
    mixed_ft = ft + alpha * (ft[info.partner] - ft)
    mixed_yt = yt + alpha * (yt[info.partner] - yt)
    return plain_losses(fs, ys, mixed_ft, mixed_yt, settings).mean()


def monte_carlo_loss(samples: int) -> Callable[..., torch.Tensor]:
    """The ISA integral (epsilon 1, discard 0.2) estimated with ``samples`` mixing weights."""

    def loss(fs, ys, ft, yt, *, settings, generator):
        return monte_carlo_isa_loss(fs, ys, ft, yt, samples=samples, epsilon=1.0, discard=0.2,
                                    reg=settings.reg, generator=generator)

    return loss


def input_mixup(images, labels, generator):
    """Input-space MixUp of the target batch: one lambda ~ U(0, 1), a random pairing."""
    order = torch.randperm(len(images), generator=generator).to(images.device)
    lam = float(torch.rand((), generator=generator))
    return (lam * images + (1 - lam) * images[order], lam * labels + (1 - lam) * labels[order])


# ----------------------------------------------------------------------------- registry


def _config_variant(name: str, description: str, epsilon: float, discard: float,
                    **pinned: Any) -> Variant:
    return Variant(name, description, {"epsilon": epsilon, "discard": discard, **pinned})


def _semantics_variant(name: str, description: str, epsilon: float, discard: float,
                       class_reduction: str) -> Variant:
    """A variant that pins the loss's semantics (``class_reduction``) instead of taking the
    preset's, so that its name means the same under every preset."""
    return _config_variant(name, description, epsilon, discard, class_reduction=class_reduction)


def _hooked(name: str, description: str, **hooks) -> Variant:
    return Variant(name, description, {"epsilon": 0.0, "discard": 0.0}, **hooks)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        _semantics_variant("baseline", "FRePo kernel loss (epsilon 0, discard 0)", 0.0, 0.0,
                           "half_sum"),
        *[_config_variant(f"easy{p}", f"discard the easiest {p}%", 0.0, p / 100)
          for p in (10, 20, 30)],
        *[_hooked(f"hard{p}", f"discard the hardest {p}%", loss_fn=keep_easiest_loss(p / 100))
          for p in (10, 20, 30)],
        *[_config_variant(f"isa{eps:g}", f"ISA alone, epsilon {eps:g}", eps, 0.0)
          for eps in (0.25, 0.5, 1.0, -1.0)],
        _config_variant("isa+easy20", "ISA epsilon 1 + discard the easiest 20% (paper)", 1.0,
                        0.2),
        # The paper's text vs its public code (docs/experiments/fidelity.md).
        _semantics_variant("discard-only", "discard the easiest 20%, no ISA (half sum)", 0.0,
                           0.2, "half_sum"),
        _semantics_variant("isa-towards", "ISA epsilon +1 (towards the partner, the paper's "
                           "text), discard 20%, half sum", 1.0, 0.2, "half_sum"),
        _semantics_variant("isa-away", "ISA epsilon -1 (away from the partner), discard 20%, "
                           "half sum", -1.0, 0.2, "half_sum"),
        _semantics_variant("isa-official", "ISA as the paper's public code: epsilon -1, "
                           "discard 20%, mean over classes", -1.0, 0.2, "mean"),
        _hooked("input-mixup", "MixUp of target images, FRePo loss",
                target_transform=input_mixup),
        _hooked("feature-mixup", "one random alpha per step toward the nearest peer",
                loss_fn=feature_mixup_loss),
        *[_hooked(f"mc{s}", f"Monte-Carlo ISA integral, {s} samples (discard 20%)",
                  loss_fn=monte_carlo_loss(s)) for s in (1, 8)],
    ]
}
HOOKED_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.hooks)
BASELINE = "baseline"
# The fidelity study's variants (docs/experiments/fidelity.md), the baseline first.
FIDELITY_VARIANTS = ("baseline", "discard-only", "isa-towards", "isa-away", "isa-official")


def resolve_variants(names: list[str] | tuple[str, ...] | None) -> list[Variant]:
    """Variant objects for ``names`` (None: every variant), checked before any work."""
    return resolve_names(names, VARIANTS, "variant")
