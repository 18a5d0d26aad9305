"""Checks that need the tensors' values, run now ("eager") or recorded on the device ("deferred").

Reading a value of a CUDA tensor on the host (``bool(t)``, ``t.item()``) waits for the GPU
to finish everything queued before it. A distillation step that does this a few dozen times
leaves the GPU idle for half of every step and cannot be captured as a CUDA graph or compiled
into one graph. So every value check of :func:`isa_krr_loss` and :func:`krr_predict` exists in
two forms:

- ``checks="eager"`` raises (or warns) before the call returns, exactly as the contract says.
  This is the default outside ``torch.compile``; on CUDA it costs a few host synchronisations
  per call.
- ``checks="deferred"`` never synchronises: each check sets a bit of a 0-d int32 ``status``
  tensor on the tensors' device. With ``return_info=True`` the status comes back in
  ``ISAInfo.status``; OR the statuses of many calls together and hand the result to
  :func:`raise_for_status` whenever a synchronisation is cheap (the distillation loop does it
  once per ``log_every`` steps). Without ``return_info`` an error bit fails a device-side
  assertion instead (``torch._assert_async``), so a deferred error is never silent. Inputs that
  fail a deferred check still produce outputs (out-of-range partners are clamped so that no
  index leaves the batch); they are garbage and the status says so.

``checks="auto"`` is "deferred" while ``torch.compile`` traces the call and "eager" otherwise.
The ridge escalation (lam x 10, 100, 1000) behaves the same in both modes; deferred mode reports
it as a status bit and :func:`raise_for_status` turns that into the usual ``RuntimeWarning``.
"""

from __future__ import annotations

import enum
import functools
import operator
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor

from .errors import NotPositiveDefiniteError

MODES = ("auto", "eager", "deferred")


class Status(enum.IntFlag):
    """Bits of a status tensor. Bits 0-3 are the four tensor arguments, in argument order."""

    OK = 0
    NONFINITE_ARG0 = 1 << 0
    NONFINITE_ARG1 = 1 << 1
    NONFINITE_ARG2 = 1 << 2
    NONFINITE_ARG3 = 1 << 3
    PARTNER_OUT_OF_RANGE = 1 << 4
    RIDGE_ESCALATED_ONCE = 1 << 5  # cumulative: k escalations set the first k of these bits
    RIDGE_ESCALATED_TWICE = 1 << 6
    RIDGE_ESCALATED_THRICE = 1 << 7
    NOT_POSITIVE_DEFINITE = 1 << 8
    NONFINITE_RESULT = 1 << 9
    NONFINITE_GRADIENT = 1 << 10
    KERNEL_OVERFLOW = 1 << 11  # K = F_S F_S^T exceeded the input type's range


ESCALATIONS = (Status.RIDGE_ESCALATED_ONCE, Status.RIDGE_ESCALATED_TWICE,
               Status.RIDGE_ESCALATED_THRICE)
NONFINITE_ARGS = (Status.NONFINITE_ARG0, Status.NONFINITE_ARG1, Status.NONFINITE_ARG2,
                  Status.NONFINITE_ARG3)
ALL_BITS = functools.reduce(operator.or_, Status)
ERRORS = (Status.NONFINITE_ARG0 | Status.NONFINITE_ARG1 | Status.NONFINITE_ARG2
          | Status.NONFINITE_ARG3 | Status.PARTNER_OUT_OF_RANGE | Status.NOT_POSITIVE_DEFINITE
          | Status.NONFINITE_RESULT | Status.NONFINITE_GRADIENT | Status.KERNEL_OVERFLOW)


def resolve_mode(checks: str, device: torch.device) -> str:
    """"auto" -> "deferred" while torch.compile traces and for meta tensors (which have no
    values to read: shape inference), else "eager"."""
    compiling = torch.compiler.is_compiling()
    valueless = device.type == "meta"
    if checks == "auto":
        return "deferred" if compiling or valueless else "eager"
    if checks == "eager" and compiling:
        raise ValueError(
            "checks='eager' reads tensor values on the host, which torch.compile cannot trace; "
            "use checks='auto' (deferred while compiling) or checks='deferred'"
        )
    if checks == "eager" and valueless:
        raise ValueError("checks='eager' reads tensor values, which meta tensors do not have; "
                         "use checks='auto' or checks='deferred'")
    return checks


def flag(condition: Tensor, bit: Status) -> Tensor:
    """A 0-d int32 status with ``bit`` set where ``condition`` (a 0-d bool tensor) holds."""
    return torch.where(condition, int(bit), 0).to(torch.int32)


def escalation_status(escalations: Tensor) -> Tensor:
    """Status bits for a ridge escalated ``escalations`` (0-d int tensor, 0..3) times."""
    status = flag(escalations >= 1, Status.RIDGE_ESCALATED_ONCE)
    status = status | flag(escalations >= 2, Status.RIDGE_ESCALATED_TWICE)
    return status | flag(escalations >= 3, Status.RIDGE_ESCALATED_THRICE)


def nonfinite_status(tensors: Mapping[str, Tensor]) -> Tensor:
    """One exact isfinite-reduction per tensor; bit k for the k-th tensor of ``tensors``."""
    status = None
    for bit, tensor in zip(NONFINITE_ARGS, tensors.values()):
        bad = flag(~torch.isfinite(tensor).all(), bit)
        status = bad if status is None else status | bad
    return status


def result_status(result: Tensor) -> Tensor:
    return flag(~torch.isfinite(result).all(), Status.NONFINITE_RESULT)


def _status_value(status: Tensor | int) -> Status:
    """``status`` as a Status; anything but an int (or 0-d integer tensor) holding known bits
    is a ValueError, so no problem is read as another or as none."""
    if isinstance(status, Tensor):
        if status.numel() != 1 or status.is_floating_point():
            raise ValueError(f"status must be a 0-d integer tensor, got {status.dtype} of "
                             f"shape {tuple(status.shape)}")
        status = int(status)
    if isinstance(status, bool) or not isinstance(status, int) or status < 0 or (
        status & ~int(ALL_BITS)
    ):
        raise ValueError(f"status must be an int of Status bits (0 to {int(ALL_BITS)}), got "
                         f"{status!r}")
    return Status(status)


def raise_for_status(
    status: Tensor | int,
    *,
    names: tuple[str, ...] = ("support_features", "support_labels", "target_features",
                              "target_labels"),
    lam: Tensor | float | None = None,
    where: str = "isa_krr_loss",
) -> Status:
    """Read ``status`` (one host synchronisation) and raise or warn as eager checks would.

    Errors, in this order: NaN/Inf in an argument (``ValueError``), an out-of-range explicit
    partner (``ValueError``), an overflowing kernel F_S F_S^T (``FloatingPointError``), a ridge
    system still indefinite after escalation
    (``NotPositiveDefiniteError``, after the escalation warnings), a non-finite loss, prediction
    or gradient from finite inputs (``FloatingPointError``: the computation overflowed). Ridge
    escalations give one ``RuntimeWarning`` per escalation step; ``lam`` (the ridge finally
    used, if known) names the values. ``names`` are the four tensor arguments in order (for ``krr_predict``: support
    features, support labels, query features). Returns the status as a :class:`Status`.
    """
    value = _status_value(status)
    for index, bit in enumerate(NONFINITE_ARGS):
        if value & bit:
            name = names[index] if index < len(names) else f"argument {index + 1}"
            raise ValueError(f"{name} contains NaN or Inf; all inputs must be finite")
    if value & Status.PARTNER_OUT_OF_RANGE:
        raise ValueError("partner indices must lie in [0, N)")
    if value & Status.KERNEL_OVERFLOW:  # before the ridge: its failure would only follow from it
        raise FloatingPointError(
            f"{where}: the kernel F_S F_S^T overflowed although every input is finite; rescale "
            "the support features (e.g. normalise them)"
        )
    warn_escalations(sum(bool(value & bit) for bit in ESCALATIONS), lam)
    if value & Status.NOT_POSITIVE_DEFINITE:
        final = "" if lam is None else f" even with lam={float(lam):.3e}"  # lam * 1000
        raise NotPositiveDefiniteError(
            f"{where}: the ridge system is not positive definite{final} (escalated 3 times by "
            "10); increase reg"
        )
    if value & Status.NONFINITE_RESULT:
        raise FloatingPointError(
            f"{where}: the result is NaN or Inf although every input is finite: the computation "
            "overflowed; rescale the features or labels (e.g. normalise them)"
        )
    if value & Status.NONFINITE_GRADIENT:
        raise FloatingPointError(
            f"{where}: a gradient is NaN or Inf although the loss is finite: the backward "
            "overflowed; rescale the features or labels"
        )
    return value


def warn_escalations(escalations: int, lam: Tensor | float | None) -> None:
    """The contract's warning for each escalation step, naming the new lam when it is known."""
    if escalations == 0:
        return
    final = None if lam is None else float(lam)
    for step in range(1, escalations + 1):
        if final is None:
            message = f"Cholesky factorization failed; retrying with lam x {10**step}"
        else:
            message = (f"Cholesky factorization failed; retrying with "
                       f"lam={final / 10 ** (escalations - step):.3e}")
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def assert_no_error(status: Tensor, where: str) -> None:
    """Deferred checks without a caller to read the status: fail a device-side assertion."""
    ok = (status & int(ERRORS)) == 0
    torch._assert_async(
        ok,
        f"{where}: a deferred check failed (NaN/Inf input, bad partner index, indefinite ridge "
        "system or overflow); call with return_info=True and pass info.status to "
        "isa_distill.checks.raise_for_status for the details",
    )
