"""Property tests (hypothesis) of the loss against the contract's identities."""

from __future__ import annotations

import torch
from conftest import random_problem
from hypothesis import given, settings
from hypothesis import strategies as st

from isa_distill import isa_krr_loss

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

shapes = st.tuples(
    st.integers(1, 12),  # M (may exceed d: rank-deficient K)
    st.integers(1, 10),  # d
    st.integers(3, 12),  # N
    st.integers(1, 4),  # C
)


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**16), solver=st.sampled_from(["auto", "dual", "primal"]))
def test_finite_for_any_shape_and_solvers_agree(shape, seed, solver):
    problem = random_problem(*shape, seed=seed)
    loss = isa_krr_loss(*problem.tensors, solver=solver, reg=1e-3, reduction="none")
    primal = isa_krr_loss(*problem.tensors, solver="primal", reg=1e-3, reduction="none")
    assert loss.shape == (shape[2],) and bool(torch.isfinite(loss).all())
    torch.testing.assert_close(loss, primal, rtol=1e-6, atol=1e-9)


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_support_permutation_invariance(shape, seed):
    problem = random_problem(*shape, seed=seed)
    order = torch.randperm(shape[0], generator=torch.Generator().manual_seed(seed))
    f_s, y_s, f_t, y_t = problem.tensors
    options = dict(reg=1e-3, reduction="none", epsilon=0.5)
    loss = isa_krr_loss(f_s, y_s, f_t, y_t, **options)
    permuted = isa_krr_loss(f_s[order], y_s[order], f_t, y_t, **options)
    torch.testing.assert_close(permuted, loss, rtol=1e-7, atol=1e-10)


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**16), reg_mode=st.sampled_from(["trace", "absolute"]))
def test_no_augmentation_no_discard_is_the_plain_krr_loss(shape, seed, reg_mode):
    """FRePo's kernel loss: mean over the batch of 1/2 sum_c (P - Y_T)^2."""
    problem = random_problem(*shape, seed=seed)
    f_s, y_s, f_t, y_t = problem.tensors
    reg = 1e-3
    gram = f_s @ f_s.T
    lam = reg * torch.trace(gram) / shape[0] if reg_mode == "trace" else reg
    pred = f_t @ f_s.T @ torch.linalg.solve(gram + lam * torch.eye(shape[0], dtype=gram.dtype), y_s)
    expected = 0.5 * (pred - y_t).square().sum(1).mean()
    loss = isa_krr_loss(*problem.tensors, epsilon=0.0, discard=0.0, reg=reg, reg_mode=reg_mode)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-10)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**16),
    epsilon=st.floats(-1.0, 1.0).filter(lambda e: abs(e) > 0.05),
    partner=st.sampled_from(["nearest", "random"]),
)
def test_closed_form_is_the_mean_over_uniform_interpolations(seed, epsilon, partner):
    """L_i = E_{a ~ U[0, eps]} 1/2 ||P(z_i + a (z_j - z_i)) - (y_i + a (y_j - y_i))||^2."""
    problem = random_problem(5, 8, 10, 3, seed=seed)
    f_s, y_s, f_t, y_t = problem.tensors
    options = dict(reg=1e-3, discard=0.2, partner=partner)
    loss, info = isa_krr_loss(
        *problem.tensors,
        epsilon=epsilon,
        reduction="none",
        return_info=True,
        generator=torch.Generator().manual_seed(seed),
        **options,
    )
    draws = 4000
    alphas = epsilon * torch.rand(
        draws, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    i, j = info.kept, info.partner
    virtual_f = (f_t[i] + alphas * (f_t[j] - f_t[i])).reshape(-1, f_t.shape[1])
    virtual_y = (y_t[i] + alphas * (y_t[j] - y_t[i])).reshape(-1, y_t.shape[1])
    samples = isa_krr_loss(
        f_s, y_s, virtual_f, virtual_y, epsilon=0.0, discard=0.0, reg=1e-3, reduction="none"
    ).reshape(draws, -1)
    estimate, stderr = samples.mean(0), samples.std(0) / draws**0.5
    assert bool(((estimate - loss[i]).abs() <= 5 * stderr + 1e-12).all())
