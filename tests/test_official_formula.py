"""class_reduction="mean" with a negative epsilon is the loss of the paper's public code.

The public code writes the ISA term with B = A_i - A_j (it integrates AWAY from the partner)
and averages over classes without the 1/2 of Eq. 5. ``official_isa_loss`` below is a direct
port of that formula (FRePo's ridge solve, the hardest int((1 - p) N) targets kept, the cosine
top-2 partner among the kept targets, plain autograd); it shares no code with the package.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BACKENDS, centred_one_hot

from isa_distill import isa_krr_loss
from isa_distill.reference import reference_isa_krr_loss


def official_isa_loss(fs, ys, ft, yt, *, epsilon: float, discard: float) -> torch.Tensor:
    m, n = fs.shape[0], ft.shape[0]
    keep = int((1 - discard) * n)  # the public code's rule
    kss = fs @ fs.T
    w = torch.linalg.solve(kss + 1e-6 * torch.trace(kss) * torch.eye(m, dtype=fs.dtype) / m, ys)
    plain = ((ft @ fs.T @ w - yt) ** 2).mean(-1)
    order = torch.topk(plain.detach(), n).indices[:keep]
    ftk, ytk = ft[order], yt[order]
    unit = ftk / ftk.norm(dim=1, keepdim=True)
    partner = torch.topk(unit @ unit.T, 2).indices[:, 1]  # the best other than itself
    a = (ftk @ fs.T) @ w - ytk
    b = ((ftk - ftk[partner]) @ fs.T) @ w - (ytk - ytk[partner])
    return (a**2 + epsilon * a * b + epsilon**2 / 3 * b**2).mean(-1).mean()


def problem(n: int, c: int, *, m: int = 12, d: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(m, d, generator=g, dtype=torch.float64) / d**0.5
    ys = 0.5 * torch.randn(m, c, generator=g, dtype=torch.float64)
    ft = torch.randn(n, d, generator=g, dtype=torch.float64) / d**0.5
    yt = centred_one_hot(torch.randint(0, c, (n,), generator=g), c, torch.float64)
    return fs, ys, ft, yt


def test_the_two_keep_rules_differ_by_one_when_p_n_is_not_exact():
    # int((1 - p) N) (public code) vs N - floor(p N) (this package): 819 vs 820 at the paper's
    # N = 1024, p = 0.2; equal whenever p N is an integer that (1 - p) N does not round below.
    assert int((1 - 0.2) * 1024) == 819 and 1024 - math.floor(0.2 * 1024) == 820
    assert int((1 - 0.2) * 40) == 40 - math.floor(0.2 * 40) == 32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", [10, 100])
@pytest.mark.parametrize("epsilon", [1.0, 0.5])
def test_mean_reduction_away_from_the_partner_is_the_public_code(backend, c, epsilon):
    fs, ys, ft, yt = problem(40, c)
    leaves = [t.clone().requires_grad_(True) for t in (fs, ys)]
    ours = isa_krr_loss(*leaves, ft, yt, epsilon=-epsilon, discard=0.2,
                        class_reduction="mean", backend=backend)
    ours.backward()
    theirs_leaves = [t.clone().requires_grad_(True) for t in (fs, ys)]
    theirs = official_isa_loss(*theirs_leaves, ft, yt, epsilon=epsilon, discard=0.2)
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    for got, want in zip(leaves, theirs_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_is_two_over_c_times_half_sum_and_matches_the_oracle(backend):
    fs, ys, ft, yt = problem(20, 7, seed=1)
    options = dict(epsilon=-0.8, discard=0.25, reduction="none")
    half_sum = isa_krr_loss(fs, ys, ft, yt, backend=backend, **options)
    mean = isa_krr_loss(fs, ys, ft, yt, backend=backend, class_reduction="mean", **options)
    torch.testing.assert_close(mean, half_sum * 2 / 7)
    expected, _ = reference_isa_krr_loss(fs, ys, ft, yt, class_reduction="mean", **options)
    torch.testing.assert_close(mean, expected, rtol=1e-9, atol=1e-12)


def test_unknown_class_reduction_names_the_argument():
    with pytest.raises(ValueError, match="class_reduction must be one of 'half_sum', 'mean'"):
        isa_krr_loss(*problem(10, 3), class_reduction="sum")
