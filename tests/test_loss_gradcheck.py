"""float64 gradcheck of the analytic backward over the option grid, and against the oracle."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import BACKENDS, random_problem

from isa_distill import isa_krr_loss
from isa_distill.reference import reference_isa_krr_loss

# M < d (dual under "auto") and M > d (primal under "auto"); tiny so the grid stays fast.
SHAPES = {"wide": (3, 5, 6, 2), "tall": (6, 4, 6, 2)}
SIDE_OPTIONS = list(itertools.product(["trace", "absolute"], ["mean", "sum", "none"]))
GRID = list(
    itertools.product(
        [1.0, -0.5, 0.0],  # epsilon
        [0.0, 0.25],  # discard
        ["nearest", "random", "explicit"],  # partner
        ["dual", "primal", "auto"],  # solver
    )
)


def loss_function(problem_shape, *, partner, **options):
    n = problem_shape[2]
    partner_arg = (
        torch.tensor([(i + 2) % n for i in range(n)]) if partner == "explicit" else partner
    )

    def loss(*tensors):
        # A fresh generator per call keeps the random partners fixed across gradcheck's probes.
        generator = torch.Generator().manual_seed(11)
        return isa_krr_loss(*tensors, partner=partner_arg, generator=generator, **options)

    return loss


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("epsilon", "discard", "partner", "solver"), GRID, ids=lambda v: str(v))
def test_gradcheck_option_grid(backend, epsilon, discard, partner, solver):
    # Cycle the reg mode, reduction and shape through the grid instead of multiplying it.
    index = GRID.index((epsilon, discard, partner, solver))
    reg_mode, reduction = SIDE_OPTIONS[index % len(SIDE_OPTIONS)]
    shape = SHAPES["tall" if index % 2 else "wide"]
    problem = random_problem(*shape, seed=index).requiring_grad()
    loss = loss_function(
        shape,
        partner=partner,
        epsilon=epsilon,
        discard=discard,
        reg=1e-2,
        reg_mode=reg_mode,
        solver=solver,
        reduction=reduction,
        backend=backend,
    )
    assert torch.autograd.gradcheck(loss, problem.tensors)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("reg_mode", "reduction"), SIDE_OPTIONS)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_gradients_match_oracle_autograd(backend, reg_mode, reduction, shape):
    problem = random_problem(*shape, seed=3).requiring_grad()
    options = dict(epsilon=0.7, discard=0.25, reg=1e-2, reg_mode=reg_mode, reduction=reduction)
    weights = torch.linspace(0.5, 1.5, shape[2], dtype=torch.float64)

    def scalar(loss):
        return (loss * weights).sum() if reduction == "none" else loss

    ours = torch.autograd.grad(
        scalar(isa_krr_loss(*problem.tensors, backend=backend, **options)), problem.tensors
    )
    expected = torch.autograd.grad(
        scalar(reference_isa_krr_loss(*problem.tensors, **options)[0]), problem.tensors
    )
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_needs_input_grad_is_honoured(backend):
    problem = random_problem(4, 6, 5, 2, seed=1)
    support_features = problem.support_features.clone().requires_grad_(True)
    loss = isa_krr_loss(support_features, *problem.tensors[1:], discard=0.0, backend=backend)
    (grad,) = torch.autograd.grad(loss, support_features)
    assert grad.shape == support_features.shape and bool(grad.abs().sum() > 0)
