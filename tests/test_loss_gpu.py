"""The torch backend on CUDA agrees with CPU (float32, float64, bfloat16); skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from conftest import random_problem

from isa_distill import isa_krr_loss, krr_predict

pytestmark = pytest.mark.gpu

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("partner", ["nearest", "random"])
def test_cuda_matches_cpu(dtype, partner):
    problem = random_problem(8, 32, 24, 4, seed=0).to(dtype=dtype)
    options = dict(epsilon=0.5, discard=0.25, partner=partner, reg=1e-3, reduction="none")
    cpu_leaves = problem.requiring_grad()
    cpu = isa_krr_loss(
        *cpu_leaves.tensors, backend="torch", generator=torch.Generator().manual_seed(0), **options
    )
    cpu.sum().backward()
    gpu_leaves = problem.to(device="cuda").requiring_grad()
    gpu = isa_krr_loss(
        *gpu_leaves.tensors, generator=torch.Generator().manual_seed(0), **options
    )  # "auto" resolves to the torch backend on CUDA
    gpu.sum().backward()
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(gpu.cpu().double(), cpu.double(), rtol=tol, atol=tol)
    for got, want in zip(gpu_leaves.tensors, cpu_leaves.tensors):
        torch.testing.assert_close(got.grad.cpu().double(), want.grad.double(), rtol=tol, atol=tol)


def test_cuda_gradcheck_float64():
    problem = random_problem(3, 5, 6, 2, seed=1).to(device="cuda").requiring_grad()

    def loss(*tensors):
        return isa_krr_loss(*tensors, reg=1e-2, discard=0.25, epsilon=0.7)

    assert torch.autograd.gradcheck(loss, problem.tensors)


def test_cuda_predict_matches_cpu():
    problem = random_problem(20, 8, 6, 3, seed=2)
    cpu = krr_predict(*problem.tensors[:3], backend="torch")
    gpu = krr_predict(*problem.to(device="cuda").tensors[:3])
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-12)
