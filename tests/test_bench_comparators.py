"""The comparators the benchmarks time against must compute what they claim to."""

from __future__ import annotations

import math

import torch

from isa_distill import isa_krr_loss
from isa_distill.baselines import monte_carlo_isa_loss, naive_isa_krr_loss
from isa_distill.bench_report import gradient_spread, problem


def small_problem():
    return problem(64, 12, 32, 4, torch.float64, "cpu", seed=7)


def test_naive_autograd_equals_the_op_in_value_and_gradient():
    tensors = small_problem()
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    naive = naive_isa_krr_loss(*leaves, epsilon=1.0, discard=0.2)
    naive.backward()
    ours = [t.clone().requires_grad_(True) for t in tensors]
    exact = isa_krr_loss(*ours, epsilon=1.0, discard=0.2, backend="torch")
    exact.backward()
    torch.testing.assert_close(naive, exact, rtol=1e-9, atol=0)
    for a, b in zip(leaves, ours):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-7, atol=1e-10)


def test_monte_carlo_converges_to_the_closed_form():
    tensors = small_problem()
    exact = float(isa_krr_loss(*tensors, epsilon=1.0, discard=0.2, backend="torch"))
    errors = []
    for samples in (1, 4096):
        gen = torch.Generator().manual_seed(3)
        estimate = float(monte_carlo_isa_loss(*tensors, samples=samples, generator=gen))
        errors.append(abs(estimate - exact) / exact)
    assert errors[1] < 2e-3
    assert errors[1] < errors[0]


def test_gradient_spread_is_the_single_sample_error_and_shrinks_with_samples():
    tensors = small_problem()

    def mc(samples: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        return lambda *t: monte_carlo_isa_loss(*t, samples=samples, generator=gen)

    single = gradient_spread(tensors, mc)
    assert math.isfinite(single) and single > 0
    many = gradient_spread(tensors, lambda samples, seed=0: mc(256, seed))
    # Unbiased estimator: the error falls like 1 / sqrt(S) (= 1/16 here); allow sampling noise.
    assert many < single / 8
