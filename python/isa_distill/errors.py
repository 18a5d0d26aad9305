"""Exceptions raised by isa_distill (the Rust bindings raise these too)."""

import torch


class NotPositiveDefiniteError(torch.linalg.LinAlgError):
    """The ridge system stayed indefinite after escalating lam by 10, 100 and 1000."""
