"""LAMB exactly as optax defines it, the optimiser of the synthetic set in the protocol.

optax.lamb = scale_by_adam(b1, b2, eps) -> scale_by_trust_ratio -> scale by -lr:

    m <- b1 m + (1 - b1) g,      v <- b2 v + (1 - b2) g^2
    u  = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    p <- p - lr * r u,           r = ||p|| / ||u|| per whole tensor (1 if either norm is 0)

so every step moves a tensor by lr * ||p||, whatever the scale of its gradient.

Written here rather than taken from a library because the distillation step needs three things
at once: optax's semantics exactly (general-purpose LAMBs clamp ||p||, e.g. at 10, while a
synthetic set's norm is in the hundreds, and differ in where they bias-correct), no host
synchronisation on CUDA (the trust ratio is chosen with ``torch.where``, the step count lives
on the device), and a plain ``state_dict`` for checkpoints. ``lr`` may be a float or a 0-d
tensor.

A param group may set ``trust_ratio=False``: its tensors then take plain Adam steps (optax's
``scale_by_adam`` alone). A scalar such as the Platt temperature needs that: its trust ratio
||p|| / ||u|| would make every step proportional to the value itself, so from 0 it barely moves.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Lamb(torch.optim.Optimizer):
    """optax's LAMB (no weight decay): Adam direction, per-tensor trust ratio ||p|| / ||u||."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
    ) -> None:
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                grad, step = param.grad, state["step"]
                step.add_(1)
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                first = state["exp_avg"] / (1 - beta1**step)
                second = state["exp_avg_sq"] / (1 - beta2**step)
                update = first / (second.sqrt() + group["eps"])
                if not group.get("trust_ratio", True):
                    param.sub_(update * group["lr"])
                    continue
                param_norm, update_norm = param.norm(), update.norm()
                usable = (param_norm > 0) & (update_norm > 0)
                trust = torch.where(usable, param_norm / update_norm.clamp_min(1e-30), 1.0)
                param.sub_(update * (trust * group["lr"]))
        return loss


def fused_adam(params, lr: float) -> torch.optim.Adam:
    """Adam as one fused kernel; its step counts stay on the device, so no step reads them on
    the host (the default implementation does, which on CUDA is a synchronisation)."""
    return torch.optim.Adam(params, lr=lr, fused=True)
