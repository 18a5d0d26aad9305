"""One test per error of the contract's table: raised before any work, naming the argument."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS, random_problem

import isa_distill._torch_backend as torch_backend
from isa_distill import NotPositiveDefiniteError, isa_krr_loss, krr_predict
from isa_distill.checks import ESCALATIONS, Status
from isa_distill.reference import reference_isa_krr_loss


@pytest.fixture
def problem():
    return random_problem(4, 6, 8, 3, seed=0)


def call(problem, **overrides):
    tensors = dict(
        zip(
            ["support_features", "support_labels", "target_features", "target_labels"],
            problem.tensors,
        )
    )
    options = {key: value for key, value in overrides.items() if key not in tensors}
    tensors.update({key: value for key, value in overrides.items() if key in tensors})
    return isa_krr_loss(*tensors.values(), **options)


@pytest.mark.parametrize(
    ("argument", "shape"),
    [
        ("support_labels", (5, 3)),  # M disagrees
        ("target_features", (8, 7)),  # d disagrees
        ("target_labels", (8, 2)),  # C disagrees
        ("target_labels", (7, 3)),  # N disagrees
        ("support_features", (4, 6, 1)),  # not 2-D
    ],
)
def test_shape_mismatch(problem, argument, shape):
    with pytest.raises(ValueError, match=argument):
        call(problem, **{argument: torch.randn(shape, dtype=torch.float64)})


def test_empty_support(problem):
    with pytest.raises(ValueError, match=r"support_features.*M = 0"):
        call(
            problem,
            support_features=torch.zeros(0, 6, dtype=torch.float64),
            support_labels=torch.zeros(0, 3, dtype=torch.float64),
        )


def test_empty_targets(problem):
    with pytest.raises(ValueError, match=r"target_features.*N = 0"):
        call(
            problem,
            target_features=torch.zeros(0, 6, dtype=torch.float64),
            target_labels=torch.zeros(0, 3, dtype=torch.float64),
        )


@pytest.mark.parametrize("discard", [-0.1, 1.0, 1.5])
def test_discard_out_of_range(problem, discard):
    with pytest.raises(ValueError, match=r"discard must lie in \[0, 1\)"):
        call(problem, discard=discard)


@pytest.mark.parametrize("partner", ["nearest", "random"])
def test_too_few_kept_for_a_partner(problem, partner):
    with pytest.raises(ValueError, match="n_keep = 1"):
        call(problem, discard=0.9, partner=partner, epsilon=0.5)


def test_single_kept_target_is_fine_without_augmentation(problem):
    loss = call(problem, discard=0.9, partner="random", epsilon=0.0)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("partner", "match"),
    [
        (torch.zeros(7, dtype=torch.int64), r"shape \(N,\) = \(8,\)"),
        (torch.zeros(8, dtype=torch.int32), "torch.int64"),
        (torch.full((8,), 8, dtype=torch.int64), r"\[0, 8\)"),
        (torch.full((8,), -1, dtype=torch.int64), r"\[0, 8\)"),
    ],
)
def test_bad_explicit_partner(problem, partner, match):
    with pytest.raises(ValueError, match=match):
        call(problem, partner=partner)


@pytest.mark.parametrize("reg", [0.0, -1e-3, float("inf"), float("nan")])
def test_bad_reg(problem, reg):
    with pytest.raises(ValueError, match="reg must be"):
        call(problem, reg=reg)


@pytest.mark.parametrize("option", ["reg_mode", "solver", "reduction", "backend", "partner"])
def test_unknown_mode_string(problem, option):
    with pytest.raises(ValueError, match=option):
        call(problem, **{option: "bogus"})


def test_bad_solve_dtype(problem):
    with pytest.raises(ValueError, match="solve_dtype"):
        call(problem, solve_dtype=torch.float16)


@pytest.mark.parametrize(
    "argument", ["support_features", "support_labels", "target_features", "target_labels"]
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input(problem, argument, bad):
    tensor = dict(
        zip(
            ["support_features", "support_labels", "target_features", "target_labels"],
            problem.tensors,
        )
    )[argument].clone()
    tensor[0, 0] = bad
    with pytest.raises(ValueError, match=f"{argument} contains NaN or Inf"):
        call(problem, **{argument: tensor})


def test_finite_values_whose_sum_overflows_are_not_reported_as_non_finite():
    from isa_distill._validate import check_finite

    huge = torch.full((4, 3), torch.finfo(torch.float32).max)
    assert not torch.isfinite(huge.sum())  # the fast path is inconclusive here...
    check_finite({"target_features": huge})  # ...and the exact scan accepts it
    huge[1, 2] = float("nan")
    with pytest.raises(ValueError, match="target_features contains NaN or Inf"):
        check_finite({"target_features": huge})


def test_non_finite_epsilon(problem):
    with pytest.raises(ValueError, match="epsilon must be finite"):
        call(problem, epsilon=float("nan"))


def test_non_floating_dtype(problem):
    with pytest.raises(TypeError, match="target_labels must have a floating dtype"):
        call(problem, target_labels=torch.zeros(8, 3, dtype=torch.int64))


def test_mixed_dtypes(problem):
    with pytest.raises(TypeError, match="support_labels has dtype torch.float32"):
        call(problem, support_labels=problem.support_labels.float())


def test_not_a_tensor(problem):
    with pytest.raises(TypeError, match="support_features must be a torch.Tensor"):
        call(problem, support_features=problem.support_features.numpy())


def test_different_devices(problem):
    with pytest.raises(ValueError, match="target_features is on meta"):
        call(problem, target_features=problem.target_features.to("meta"))


def test_rust_backend_needs_cpu(problem):
    with pytest.raises(ValueError, match="backend='rust' needs CPU"):
        isa_krr_loss(*problem.to(device="meta").tensors, backend="rust")


def test_predict_validates_too(problem):
    with pytest.raises(ValueError, match="query_features must have d = 6"):
        krr_predict(problem.support_features, problem.support_labels, torch.randn(3, 5).double())
    with pytest.raises(ValueError, match="solver"):
        krr_predict(*problem.tensors[:3], solver="cg")


def indefinite_in_float32():
    """A rank-2 6 x 6 dual system with an absolute ridge far below float32 rounding: every
    escalation (1e-29, 1e-28, 1e-27) still fails to factor."""
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(shape, generator=g) for shape in ((6, 2), (6, 3), (8, 2), (8, 3))]
    options = dict(solver="dual", reg_mode="absolute", reg=1e-30, solve_dtype=torch.float32)
    return tensors, options


@pytest.mark.parametrize("backend", BACKENDS)
def test_indefinite_system_warns_then_raises_not_positive_definite(backend):
    tensors, options = indefinite_in_float32()
    with pytest.warns(RuntimeWarning, match="retrying with lam=1.000e-2") as record:
        with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
            isa_krr_loss(*tensors, backend=backend, **options)
    assert len(record) == 3
    assert issubclass(NotPositiveDefiniteError, torch.linalg.LinAlgError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_zero_support_features_fall_back_to_an_absolute_ridge(problem, backend):
    # trace(K) = 0 would make lam 0 however often it is escalated; lam = reg instead, and with
    # K = 0 the predictions are exactly zero, the oracle's answer.
    zeros = torch.zeros_like(problem.support_features)
    tensors = (zeros, *problem.tensors[1:])
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    loss = isa_krr_loss(*leaves, backend=backend, reduction="none")
    expected, _ = reference_isa_krr_loss(*tensors, reduction="none")
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_kernel_names_the_cause(backend):
    g = torch.Generator().manual_seed(1)
    fs, ys = torch.randn(4, 6, generator=g) * 1e20, torch.randn(4, 3, generator=g)
    ft, yt = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
    with pytest.raises(FloatingPointError, match="kernel F_S F_S\\^T overflowed"):
        isa_krr_loss(fs, ys, ft, yt, backend=backend)
    with pytest.raises(FloatingPointError, match="kernel F_S F_S\\^T overflowed"):
        krr_predict(fs, ys, ft, backend=backend)


@pytest.mark.parametrize(("smallest", "escalations"), [(0.5, 0), (-0.5, 1), (-5.0, 2),
                                                      (-50.0, 3), (-500.0, None)])
def test_escalation_picks_the_first_positive_definite_ridge_on_the_device(smallest, escalations):
    # lam = 0.1; the system becomes positive definite once lam * 10^k exceeds -smallest.
    system = torch.diag(torch.tensor([1.0, smallest], dtype=torch.float64))
    chol, lam, status = torch_backend.factor_with_escalation(
        system, torch.tensor(0.1, dtype=torch.float64)
    )
    value = Status(int(status))
    if escalations is None:
        assert value & Status.NOT_POSITIVE_DEFINITE
        return
    assert not value & Status.NOT_POSITIVE_DEFINITE
    assert sum(bool(value & bit) for bit in ESCALATIONS) == escalations
    assert float(lam) == pytest.approx(0.1 * 10**escalations)
    torch.testing.assert_close(chol @ chol.T, system + lam * torch.eye(2, dtype=torch.float64))


def test_ridge_escalation_warns_with_the_new_lam():
    # An indefinite system that the first escalation (lam 0.1 -> 1.0) makes positive definite.
    problem = random_problem(2, 3, 4, 2, seed=0)
    system = torch.diag(torch.tensor([1.0, -0.5], dtype=torch.float64))
    real_fit = torch_backend.krr_fit

    def fit_with_indefinite_system(f_s, y_s, **options):
        chol, lam, status = torch_backend.factor_with_escalation(
            system, torch.tensor(0.1, dtype=torch.float64)
        )
        coef = real_fit(f_s, y_s, **options)[0]
        return coef, chol, lam, status

    torch_backend.krr_fit = fit_with_indefinite_system
    try:
        with pytest.warns(RuntimeWarning, match=r"retrying with lam=1\.000e\+00") as record:
            isa_krr_loss(*problem.tensors, backend="torch", epsilon=0.0, discard=0.0)
    finally:
        torch_backend.krr_fit = real_fit
    assert len(record) == 1
