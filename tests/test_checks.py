"""Value checks: eager errors, the same errors deferred through a device-side status, overflow
of finite inputs, unsupported dtypes and transforms."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import BACKENDS, random_problem
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import isa_distill._torch_backend as torch_backend
from isa_distill import NotPositiveDefiniteError, isa_krr_loss, krr_predict
from isa_distill.autograd import isa_krr_forward
from isa_distill.checks import ESCALATIONS, Status, raise_for_status

NAMES = ("support_features", "support_labels", "target_features", "target_labels")


@pytest.fixture
def problem():
    return random_problem(4, 6, 8, 3, seed=0)


def with_nan(problem, index):
    tensors = [t.clone() for t in problem.tensors]
    tensors[index][0, 0] = float("nan")
    return tensors


@pytest.mark.parametrize("index", range(4))
def test_deferred_non_finite_input_sets_its_bit_and_raises_the_eager_error(problem, index):
    tensors = with_nan(problem, index)
    _, info = isa_krr_loss(*tensors, backend="torch", checks="deferred", return_info=True)
    status = Status(int(info.status))
    assert status & (1 << index) and not status & ~(1 << index) & 0b1111
    with pytest.raises(ValueError, match=f"{NAMES[index]} contains NaN or Inf") as deferred:
        raise_for_status(info.status)
    with pytest.raises(ValueError) as eager:
        isa_krr_loss(*tensors, backend="torch")
    assert str(deferred.value) == str(eager.value)


@pytest.mark.parametrize("index", range(4))
def test_the_rust_kernel_raises_at_once_even_when_checks_are_deferred(problem, index):
    # On the CPU a check costs no GPU synchronisation, and the kernel validates its own input.
    pytest.importorskip("isa_distill._core")
    with pytest.raises(ValueError, match=NAMES[index]):
        isa_krr_loss(*with_nan(problem, index), backend="rust", checks="deferred")


def test_deferred_checks_of_a_clean_call_report_nothing(problem):
    _, info = isa_krr_loss(*problem.tensors, backend="torch", checks="deferred", return_info=True)
    assert info.status.dtype == torch.int32 and info.status.shape == ()
    assert raise_for_status(info.status) == Status.OK
    _, info = isa_krr_loss(*problem.tensors, return_info=True)  # eager: already reported
    assert int(info.status) == 0


def test_deferred_out_of_range_partner_is_clamped_and_reported(problem):
    partner = torch.full((8,), 8, dtype=torch.int64)
    loss, info = isa_krr_loss(*problem.tensors, partner=partner, checks="deferred",
                              return_info=True)
    assert torch.isfinite(loss)  # clamped: no index leaves the batch
    assert Status(int(info.status)) & Status.PARTNER_OUT_OF_RANGE
    with pytest.raises(ValueError, match=r"partner indices must lie in \[0, N\)"):
        raise_for_status(info.status)


def test_deferred_escalation_warns_then_raises_like_eager():
    from test_errors import indefinite_in_float32

    tensors, options = indefinite_in_float32()
    _, info = isa_krr_loss(*tensors, backend="torch", checks="deferred", return_info=True,
                           **options)
    status = Status(int(info.status))
    assert status & Status.NOT_POSITIVE_DEFINITE
    assert all(status & bit for bit in ESCALATIONS)
    with pytest.warns(RuntimeWarning, match="retrying with lam x") as record:
        with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
            raise_for_status(info.status)
    assert len(record) == 3


def test_deferred_kernel_overflow_is_reported_before_the_ridge():
    g = torch.Generator().manual_seed(1)
    fs, ys = torch.randn(4, 6, generator=g) * 1e20, torch.randn(4, 3, generator=g)
    ft, yt = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
    _, info = isa_krr_loss(fs, ys, ft, yt, backend="torch", checks="deferred", return_info=True)
    assert Status(int(info.status)) & Status.KERNEL_OVERFLOW
    with pytest.raises(FloatingPointError, match="kernel F_S F_S\\^T overflowed"):
        raise_for_status(info.status)


def test_deferred_error_without_info_fails_a_device_assertion(problem):
    tensors = with_nan(problem, 2)
    with pytest.raises(RuntimeError, match="a deferred check failed"):
        isa_krr_loss(*tensors, backend="torch", checks="deferred")
    with pytest.raises(RuntimeError, match="a deferred check failed"):
        krr_predict(*tensors[:3], backend="torch", checks="deferred")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("index", "scale", "dtype"),
    [(3, 1e160, torch.float64), (3, 3e19, torch.float32), (2, 1e20, torch.float32)],
)
def test_overflow_of_finite_inputs_raises_floating_point_error(backend, index, scale, dtype):
    # Probe cases that used to give a silent NaN loss: huge target labels or features.
    tensors = list(random_problem(4, 6, 8, 3, seed=1, dtype=dtype).tensors)
    tensors[index] = tensors[index] * scale
    assert all(torch.isfinite(t).all() for t in tensors)
    with pytest.raises(FloatingPointError, match="overflowed"):
        isa_krr_loss(*tensors, backend=backend)
    _, info = isa_krr_loss(*tensors, backend=backend, checks="deferred", return_info=True)
    assert Status(int(info.status)) & Status.NONFINITE_RESULT


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_epsilon_is_an_overflow_error_not_a_crash(problem, backend):
    with pytest.raises(FloatingPointError, match="overflowed"):
        isa_krr_loss(*problem.tensors, epsilon=1e300, backend=backend)


def test_non_finite_gradient_of_a_finite_loss_names_the_argument(problem, monkeypatch):
    real_backward = torch_backend.backward

    def overflowing_backward(*args, **kwargs):
        grads = list(real_backward(*args, **kwargs))
        grads[1] = torch.full_like(grads[1], float("inf"))
        return tuple(grads)

    monkeypatch.setattr(torch_backend, "backward", overflowing_backward)
    leaves = problem.requiring_grad()
    loss = isa_krr_loss(*leaves.tensors, backend="torch")
    with pytest.raises(FloatingPointError, match="gradient of support_labels is NaN or Inf"):
        loss.backward()
    # deferred checks leave the gradient to the caller (the distillation step checks it)
    leaves = problem.requiring_grad()
    isa_krr_loss(*leaves.tensors, backend="torch", checks="deferred").backward()
    assert not torch.isfinite(leaves.support_labels.grad).all()


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_is_the_documented_type_error(problem, dtype):
    tensors = [t.to(dtype) for t in problem.tensors]
    with pytest.raises(TypeError, match="support_features has dtype torch.float8"):
        isa_krr_loss(*tensors)
    with pytest.raises(TypeError, match="supported are float64, float32, float16 and bfloat16"):
        krr_predict(*tensors[:3])


def test_vmap_is_refused_with_a_clear_error(problem):
    batched = [torch.stack([t, t]) for t in problem.tensors]
    with pytest.raises(NotImplementedError, match="do not support torch.vmap"):
        torch.vmap(lambda *t: isa_krr_loss(*t))(*batched)
    with pytest.raises(NotImplementedError, match="do not support torch.vmap"):
        torch.vmap(lambda *t: krr_predict(*t))(*batched[:3])
    options = (torch.empty(0, dtype=torch.int64), "nearest", 1e-6, "trace", "auto", 0.2, 1.0,
               True, "torch", False)
    with pytest.raises(NotImplementedError, match="do not support torch.vmap"):
        torch.vmap(lambda *t: isa_krr_forward(*t, *options))(*batched)  # the raw op too


def test_double_backward_is_refused_with_a_clear_error(problem):
    leaves = problem.requiring_grad()
    loss = isa_krr_loss(*leaves.tensors, backend="torch")
    (grad,) = torch.autograd.grad(loss, leaves.support_features, create_graph=True)
    with pytest.raises(RuntimeError, match="isa_krr_backward.*no autograd formula"):
        grad.sum().backward()


def test_unknown_checks_mode(problem):
    with pytest.raises(ValueError, match="checks must be one of 'auto', 'eager', 'deferred'"):
        isa_krr_loss(*problem.tensors, checks="lazy")


def test_explicit_eager_checks_under_compile_say_what_to_use(problem):
    compiled = torch.compile(lambda *t: isa_krr_loss(*t, checks="eager"), backend="eager",
                             fullgraph=True)
    with pytest.raises(Exception, match="checks='eager' reads tensor values"):
        compiled(*problem.tensors)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    shape=st.tuples(st.integers(1, 10), st.integers(1, 16), st.integers(3, 24), st.integers(1, 5)),
    exponents=st.tuples(*[st.floats(-30, 30)] * 4),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    epsilon=st.sampled_from([0.0, 1.0, -1.0, 1e3]),
    discard=st.sampled_from([0.0, 0.2, 0.5]),
    reg_mode=st.sampled_from(["trace", "absolute"]),
    seed=st.integers(0, 2**16),
)
def test_finite_inputs_give_finite_results_or_a_documented_error(
    backend, shape, exponents, dtype, epsilon, discard, reg_mode, seed
):
    # Any finite input at any scale: a finite loss and finite gradients, or an error that says
    # what went wrong; never a silent NaN or Inf, never another exception.
    m, d, n, c = shape
    g = torch.Generator().manual_seed(seed)
    tensors = [(torch.randn(s, generator=g, dtype=torch.float64) * 10.0**e).to(dtype)
               for s, e in zip(((m, d), (m, c), (n, d), (n, c)), exponents)]
    assume(all(torch.isfinite(t).all() for t in tensors))
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ridge escalations are allowed
        try:
            loss = isa_krr_loss(*leaves, epsilon=epsilon, discard=discard, reg_mode=reg_mode,
                                reg=1e-4, backend=backend)
            loss.backward()
        except (FloatingPointError, NotPositiveDefiniteError):
            return
    assert torch.isfinite(loss)
    assert all(torch.isfinite(leaf.grad).all() for leaf in leaves)


def test_the_eager_finiteness_scan_is_exact_when_finite_values_overflow_the_sum():
    # The sum-first shortcut must neither accept a NaN nor reject huge finite values.
    from isa_distill._validate import first_nonfinite

    huge = torch.full((4, 3), 3e38, dtype=torch.float32)  # finite; its sum overflows to inf
    assert not torch.isfinite(huge.sum())
    assert first_nonfinite({"a": torch.ones(2, 2), "huge": huge}) is None
    with_nan = huge.clone()
    with_nan[1, 2] = float("nan")
    assert first_nonfinite({"a": torch.ones(2, 2), "b": with_nan, "c": with_nan}) == "b"
    opposite = torch.tensor([float("inf"), float("-inf")])  # sums to NaN, still caught
    assert first_nonfinite({"x": opposite}) == "x"
    assert first_nonfinite({}) is None


@pytest.mark.parametrize("status", [-1, "1", 1.5, 1 << 20, torch.tensor(1.0), torch.ones(2)])
def test_a_status_that_is_not_status_bits_is_refused_not_read_as_another(status):
    with pytest.raises(ValueError, match="status must be"):
        raise_for_status(status)


def test_a_nonfinite_bit_beyond_the_names_given_still_raises():
    with pytest.raises(ValueError, match="argument 4 contains NaN or Inf"):
        raise_for_status(Status.NONFINITE_ARG3, names=("support_features",))
