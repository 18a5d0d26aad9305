"""krr_predict: primal == dual == oracle, backends agree, gradients exact."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS, random_problem

from isa_distill import krr_predict
from isa_distill.reference import reference_predict


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(5, 12, 7, 3), (12, 5, 7, 3)])
@pytest.mark.parametrize("reg_mode", ["trace", "absolute"])
def test_primal_equals_dual_equals_oracle(backend, shape, reg_mode):
    problem = random_problem(*shape, seed=2)
    f_s, y_s, f_q = problem.tensors[:3]
    options = dict(reg=1e-3, reg_mode=reg_mode)
    dual = krr_predict(f_s, y_s, f_q, solver="dual", backend=backend, **options)
    primal = krr_predict(f_s, y_s, f_q, solver="primal", backend=backend, **options)
    auto = krr_predict(f_s, y_s, f_q, backend=backend, **options)
    expected = reference_predict(f_s, y_s, f_q, **options)
    assert dual.shape == (7, 3) and dual.dtype == torch.float64
    torch.testing.assert_close(primal, dual, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(dual, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(auto, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("solver", ["dual", "primal"])
@pytest.mark.parametrize("reg_mode", ["trace", "absolute"])
def test_gradcheck(backend, solver, reg_mode):
    problem = random_problem(4, 5, 3, 2, seed=3).requiring_grad()

    def predict(f_s, y_s, f_q):
        return krr_predict(
            f_s, y_s, f_q, reg=1e-2, reg_mode=reg_mode, solver=solver, backend=backend
        )

    assert torch.autograd.gradcheck(predict, problem.tensors[:3])


def test_backends_agree():
    pytest.importorskip("isa_distill._core")
    problem = random_problem(9, 6, 5, 2, seed=4)
    rust = krr_predict(*problem.tensors[:3], backend="rust")
    torch_ = krr_predict(*problem.tensors[:3], backend="torch")
    torch.testing.assert_close(rust, torch_, rtol=1e-10, atol=1e-12)


def test_float32_and_half_keep_their_dtype():
    problem = random_problem(5, 12, 7, 3, seed=5)
    for dtype in (torch.float32, torch.bfloat16):
        pred = krr_predict(*problem.to(dtype=dtype).tensors[:3], reg=1e-3)
        assert pred.dtype == dtype
        expected = reference_predict(*problem.tensors[:3], reg=1e-3)
        tolerance = 1e-4 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(pred.double(), expected, rtol=tolerance, atol=tolerance)
