"""``nn.Module`` wrapper around :func:`isa_distill.functional.isa_krr_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import _validate
from .functional import ISAInfo, isa_krr_loss


class ISAKRRLoss(nn.Module):
    """Holds the options of :func:`isa_krr_loss`; ``forward(F_S, Y_S, F_T, Y_T)`` computes it.

    A ``partner`` tensor is per-batch data, so pass it (and a ``generator``) to ``forward``.
    """

    def __init__(
        self,
        *,
        epsilon: float = 1.0,
        discard: float = 0.2,
        partner: str = "nearest",
        reg: float = 1e-6,
        reg_mode: str = "trace",
        solver: str = "auto",
        reduction: str = "mean",
        class_reduction: str = "half_sum",
        backend: str = "auto",
        solve_dtype: torch.dtype = torch.float64,
        checks: str = "auto",
    ) -> None:
        super().__init__()
        # The options are checked now, not at the first forward.
        _validate.check_loss_options(
            epsilon=epsilon, discard=discard, reg=reg, reg_mode=reg_mode, solver=solver,
            reduction=reduction, class_reduction=class_reduction, checks=checks,
        )  # fmt: skip
        if isinstance(partner, str):
            _validate.check_choice("partner", partner, _validate.PARTNER_MODES)
        _validate.check_backend(backend, solve_dtype, torch.device("cpu"))  # device: at forward
        self.epsilon = epsilon
        self.discard = discard
        self.partner = partner
        self.reg = reg
        self.reg_mode = reg_mode
        self.solver = solver
        self.reduction = reduction
        self.class_reduction = class_reduction
        self.backend = backend
        self.solve_dtype = solve_dtype
        self.checks = checks

    def forward(
        self,
        support_features: Tensor,
        support_labels: Tensor,
        target_features: Tensor,
        target_labels: Tensor,
        *,
        partner: str | Tensor | None = None,
        generator: torch.Generator | None = None,
        return_info: bool = False,
    ) -> Tensor | tuple[Tensor, ISAInfo]:
        return isa_krr_loss(
            support_features,
            support_labels,
            target_features,
            target_labels,
            epsilon=self.epsilon,
            discard=self.discard,
            partner=self.partner if partner is None else partner,
            reg=self.reg,
            reg_mode=self.reg_mode,
            solver=self.solver,
            reduction=self.reduction,
            class_reduction=self.class_reduction,
            backend=self.backend,
            solve_dtype=self.solve_dtype,
            generator=generator,
            return_info=return_info,
            checks=self.checks,
        )

    def extra_repr(self) -> str:
        return (
            f"epsilon={self.epsilon}, discard={self.discard}, partner={self.partner!r}, "
            f"reg={self.reg}, reg_mode={self.reg_mode!r}, solver={self.solver!r}, "
            f"reduction={self.reduction!r}, class_reduction={self.class_reduction!r}, "
            f"backend={self.backend!r}, checks={self.checks!r}"
        )
