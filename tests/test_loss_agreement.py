"""Forward agreement: rust vs torch vs the float64 oracle; float32 accuracy; decision rules."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS, random_problem

from isa_distill import isa_krr_loss
from isa_distill.reference import reference_isa_krr_loss

SHAPES = [(6, 16, 12, 3), (20, 8, 15, 4)]  # M < d (dual), M > d (primal)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.to(torch.float64)
    scale = expected.abs().max().clamp_min(1e-300)
    return float((actual.to(torch.float64) - expected).abs().max() / scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("solver", ["auto", "dual", "primal"])
@pytest.mark.parametrize("epsilon", [1.0, -0.5, 0.0])
@pytest.mark.parametrize("partner", ["nearest", "random", "explicit"])
def test_float64_matches_oracle(backend, shape, solver, epsilon, partner):
    problem = random_problem(*shape, seed=1)
    n = shape[2]
    partner_arg = torch.randint(0, n, (n,), generator=torch.Generator().manual_seed(5))
    if partner != "explicit":
        partner_arg = partner
    # Rank-deficient dual systems (M > d) amplify rounding by 1/lam; a larger ridge keeps the
    # comparison about the formula, not about conditioning.
    reg = 1e-3 if shape[0] > shape[1] else 1e-6
    options = dict(epsilon=epsilon, discard=0.25, partner=partner_arg, reg=reg, reduction="none")
    loss, info = isa_krr_loss(
        *problem.tensors,
        solver=solver,
        backend=backend,
        generator=torch.Generator().manual_seed(3),
        return_info=True,
        **options,
    )
    expected, expected_info = reference_isa_krr_loss(
        *problem.tensors, generator=torch.Generator().manual_seed(3), **options
    )
    assert loss.dtype == torch.float64 and loss.shape == (n,)
    assert relative_error(loss, expected) < 1e-9
    assert info.kept.tolist() == expected_info["kept"]
    assert info.partner.tolist() == expected_info["partner"]
    assert (
        relative_error(info.plain, torch.tensor(expected_info["plain"], dtype=torch.float64)) < 1e-9
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reg_mode", ["trace", "absolute"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_backends_agree_in_float64(shape, reg_mode, reduction):
    pytest.importorskip("isa_distill._core")
    problem = random_problem(*shape, seed=2)
    options = dict(reg=1e-3, reg_mode=reg_mode, reduction=reduction)
    rust = isa_krr_loss(*problem.tensors, backend="rust", **options)
    torch_ = isa_krr_loss(*problem.tensors, backend="torch", **options)
    assert relative_error(rust, torch_) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_error_is_that_of_plain_float32(backend, shape):
    """Within 2x the error of the same formula run naively in float32 (plus a few ulps)."""
    problem = random_problem(*shape, seed=4)
    options = dict(epsilon=1.0, discard=0.0, partner="nearest", reg=1e-3, reduction="none")
    exact, _ = reference_isa_krr_loss(*problem.tensors, **options)
    naive, _ = reference_isa_krr_loss(*problem.tensors, dtype=torch.float32, **options)
    ours = isa_krr_loss(*problem.to(dtype=torch.float32).tensors, backend=backend, **options)
    assert ours.dtype == torch.float32
    allowed = 2 * relative_error(naive, exact) + 8 * torch.finfo(torch.float32).eps
    assert relative_error(ours, exact) <= allowed


@pytest.mark.parametrize("backend", BACKENDS)
def test_discard_ties_keep_lower_index(backend):
    # Targets 0..3 are identical, so their plain losses tie exactly; 4 and 5 are far harder.
    problem = random_problem(4, 10, 6, 2, seed=0)
    f_t, y_t = problem.target_features.clone(), problem.target_labels.clone()
    f_t[1:4] = f_t[0]
    y_t[1:4] = y_t[0]
    y_t[4:] = 50.0
    _, info = isa_krr_loss(
        problem.support_features,
        problem.support_labels,
        f_t,
        y_t,
        discard=0.5,
        backend=backend,
        return_info=True,
    )
    assert info.kept.tolist() == [0, 4, 5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_partner_ties_and_zero_features(backend):
    problem = random_problem(4, 10, 5, 2, seed=0)
    f_t = problem.target_features.clone()
    f_t[3] = 2.0 * f_t[1]  # 1 and 3 both have cosine 1 with each other ...
    f_t[4] = f_t[1]  # ... and with 4: target 4's nearest is the lowest index, 1.
    f_t[0] = 0.0  # cosine 0 with everything, no NaN.
    loss, info = isa_krr_loss(
        problem.support_features,
        problem.support_labels,
        f_t,
        problem.target_labels,
        discard=0.0,
        backend=backend,
        return_info=True,
    )
    _, expected = reference_isa_krr_loss(
        problem.support_features,
        problem.support_labels,
        f_t,
        problem.target_labels,
        discard=0.0,
    )
    partner_of = dict(zip(info.kept.tolist(), info.partner.tolist()))
    assert partner_of[4] == 1 and partner_of[1] == 3 and partner_of[3] == 1
    assert info.partner.tolist() == expected["partner"]
    assert torch.isfinite(loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_deficient_dual_is_finite(backend):
    problem = random_problem(30, 5, 8, 3, seed=6)
    loss = isa_krr_loss(*problem.tensors, solver="dual", backend=backend)
    primal = isa_krr_loss(*problem.tensors, solver="primal", backend=backend)
    assert torch.isfinite(loss)
    assert relative_error(loss, primal) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_computed_in_float32(dtype):
    problem = random_problem(6, 16, 12, 3, seed=7).to(dtype=dtype)
    loss = isa_krr_loss(*problem.tensors, reg=1e-3)
    in_float32 = isa_krr_loss(*problem.to(dtype=torch.float32).tensors, reg=1e-3)
    assert loss.dtype == dtype
    assert loss.to(torch.float32) == in_float32.to(dtype).to(torch.float32)


def test_return_info_contents(make_problem):
    problem = make_problem(5, 12, 10, 3, seed=8)
    loss, info = isa_krr_loss(*problem.tensors, discard=0.3, return_info=True, reduction="none")
    assert info.kept.dtype == torch.int64 and info.partner.dtype == torch.int64
    assert info.kept.shape == (7,) and info.partner.shape == (7,)
    assert torch.equal(info.kept, info.kept.sort().values)
    assert not bool((info.partner == info.kept).any())
    assert info.plain.shape == (10,) and not info.plain.requires_grad
    # The kept targets are the 7 hardest; discarded entries of the "none" loss are zero.
    dropped = sorted(set(range(10)) - set(info.kept.tolist()))
    assert float(info.plain[dropped].max()) <= float(info.plain[info.kept].min())
    assert bool((loss[dropped] == 0).all())
    with pytest.raises(AttributeError):
        info.kept = info.partner
