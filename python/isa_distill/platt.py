"""RFAD's Platt loss on the KRR predictions, with discard and ISA applied as for the MSE loss.

RFAD (Loo et al. 2022) replaces the KRR meta-loss 1/2 ||P - Y_T||^2 by the cross-entropy of
the scaled predictions, CE(softmax(tau P_i), y_i), with the temperature tau = exp(k) learned
with the set (k starts at 0). Here:

- Discard and partners are exactly those of ``isa_krr_loss``: the targets with the largest
  plain KRR loss are kept, each with its cosine-nearest kept partner (docs/loss.md).
- ISA: the KRR predictions are linear in the target features, so the virtual sample at
  a in [0, eps] on the segment from target i towards its partner j has predictions
  P_i + a (P_j - P_i) and label (1 - a) e_i + a e_j (a mixture of the two one-hot classes).
  Its loss is the mean over the segment, (1/eps) int_0^eps CE(a) da, which has no closed form
  for the cross-entropy; it is computed with 8-point Gauss-Legendre quadrature (exact for
  polynomials of degree 15; CE is smooth in a). eps = 0 is RFAD's loss.
- The label must stay a distribution, so the Platt loss needs 0 <= epsilon <= 1.

The loss is the mean over kept targets; ``class_reduction`` does not apply.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .functional import isa_krr_loss, krr_predict

QUADRATURE_NODES = 8
PLATT_LR = 1e-2  # RFAD's learning rate for k (10x its 1e-3 for the images)


def quadrature(nodes: int = QUADRATURE_NODES) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre nodes and weights on [0, 1] (weights sum to 1)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    return torch.tensor((x + 1) / 2), torch.tensor(w / 2)


def platt_isa_loss(
    support_features: Tensor,
    support_labels: Tensor,
    target_features: Tensor,
    target_labels: Tensor,
    log_temperature: Tensor,
    *,
    settings,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(loss, status): the ISA integral of RFAD's Platt cross-entropy over the kept targets.

    ``target_labels`` are centred one-hot (their argmax is the class); ``settings`` is the
    step's ``LossSettings`` (epsilon, discard, partner, reg, backend).
    """
    with torch.no_grad():
        _, info = isa_krr_loss(
            support_features.detach(), support_labels.detach(), target_features,
            target_labels, epsilon=settings.epsilon, discard=settings.discard,
            partner=settings.partner, reg=settings.reg, backend=settings.backend,
            generator=generator, return_info=True, checks="deferred",
        )  # fmt: skip
    predictions = krr_predict(support_features, support_labels, target_features,
                              reg=settings.reg, backend=settings.backend, checks="deferred")
    kept, partner = info.kept, info.partner
    own, other = predictions[kept], predictions[partner]
    classes = target_labels.argmax(1)
    own_class, other_class = classes[kept], classes[partner]
    temperature = log_temperature.exp()
    nodes, weights = quadrature() if settings.epsilon else (torch.zeros(1), torch.ones(1))
    total = predictions.new_zeros(())
    for a, weight in zip((settings.epsilon * nodes).tolist(), weights.tolist()):
        log_p = torch.log_softmax(temperature * (own + a * (other - own)), dim=1)
        ce = -((1 - a) * log_p.gather(1, own_class[:, None])
               + a * log_p.gather(1, other_class[:, None]))
        total = total + weight * ce.mean()
    return total, info.status
