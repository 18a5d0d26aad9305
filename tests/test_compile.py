"""torch.compile(fullgraph=True): the op compiles without graph breaks and agrees with eager.

``fullgraph=True`` fails on any Python branch on a tensor value (``bool(t)``, ``t.item()``,
``int(t)``), which is exactly what would make a CUDA call wait for the GPU. Compiling the torch
backend's own forward and backward with ``fullgraph=True`` is therefore the CPU-checkable form
of "the CUDA path never synchronises with the host".
"""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS, random_problem

import isa_distill._torch_backend as torch_backend
from isa_distill import isa_krr_loss, krr_predict
from isa_distill.checks import Status, raise_for_status

OPTIONS = [
    dict(epsilon=1.0, discard=0.2),
    dict(epsilon=-1.0, discard=0.25, class_reduction="mean"),
    dict(epsilon=0.0, discard=0.0, reduction="sum"),
    dict(epsilon=0.5, discard=0.1, solver="primal", reg_mode="absolute", reg=1e-2),
]


def compiled(fn):
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_fullgraph_loss_and_gradients_match_eager(backend, options):
    problem = random_problem(6, 10, 12, 3, seed=0, dtype=torch.float32)

    def loss_fn(*tensors):
        return isa_krr_loss(*tensors, backend=backend, **options)

    leaves = problem.requiring_grad()
    loss = compiled(loss_fn)(*leaves.tensors)
    loss.backward()
    eager_leaves = problem.requiring_grad()
    expected = loss_fn(*eager_leaves.tensors)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for got, want in zip(leaves.tensors, eager_leaves.tensors):
        torch.testing.assert_close(got.grad, want.grad)


def test_fullgraph_explicit_partner_and_predict():
    problem = random_problem(5, 8, 10, 2, seed=1)
    partner = torch.arange(10).roll(3)
    got = compiled(lambda *t: isa_krr_loss(*t, partner=partner))(*problem.tensors)
    torch.testing.assert_close(got, isa_krr_loss(*problem.tensors, partner=partner))
    pred = compiled(lambda *t: krr_predict(*t))(*problem.tensors[:3])
    torch.testing.assert_close(pred, krr_predict(*problem.tensors[:3]))


def test_compiled_call_reports_problems_through_the_status():
    problem = random_problem(5, 8, 10, 2, seed=2)
    bad = problem.target_labels.clone()
    bad[3, 1] = float("inf")

    def loss_and_status(*tensors):
        loss, info = isa_krr_loss(*tensors, backend="torch", return_info=True)
        return loss, info.status

    _, status = compiled(loss_and_status)(*problem.tensors[:3], bad)
    assert Status(int(status)) & Status.NONFINITE_ARG3  # (and the result is not finite either)
    with pytest.raises(ValueError, match="target_labels contains NaN or Inf"):
        raise_for_status(status)
    _, status = compiled(loss_and_status)(*problem.tensors)
    assert int(status) == 0


@pytest.mark.parametrize("solver", ["dual", "primal"])
@pytest.mark.parametrize("partner_mode", ["nearest", "offsets", "explicit"])
def test_torch_backend_reads_no_tensor_value_on_the_host(solver, partner_mode):
    # Compiling the backend's own functions (not the opaque custom op) with fullgraph=True
    # proves that no decision in them waits for the device.
    problem = random_problem(6, 5, 10, 3, seed=3)
    index = {"nearest": torch.empty(0, dtype=torch.int64),
             "offsets": torch.ones(8, dtype=torch.int64),
             "explicit": torch.arange(10).flip(0)}[partner_mode]
    options = dict(partner_mode=partner_mode, reg=1e-3, reg_mode="trace", solver=solver,
                   discard=0.2, epsilon=0.7, solve_f64=True)
    forward = torch.compile(torch_backend.forward, fullgraph=True, backend="eager")
    outputs = forward(*problem.tensors, index, **options)
    expected = torch_backend.forward(*problem.tensors, index, **options)
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(got, want)
    losses, _, kept, partner, residual, coef, factor, lam, _ = outputs
    backward = torch.compile(torch_backend.backward, fullgraph=True, backend="eager")
    grads = backward(*problem.tensors, torch.ones_like(losses), kept, partner, residual, coef,
                     factor, lam=lam, reg_mode="trace", solver=solver, epsilon=0.7)
    assert all(torch.isfinite(g).all() for g in grads)


def test_inductor_compiles_the_loss_and_its_backward():
    # One real inductor compilation (C++ kernels on the CPU); the other tests use aot_eager.
    problem = random_problem(6, 10, 12, 3, seed=4, dtype=torch.float32)

    def step(f_s, y_s, f_t, y_t):
        return isa_krr_loss(f_s.tanh(), y_s, f_t.tanh(), y_t, epsilon=1.0, discard=0.2)

    leaves = problem.requiring_grad()
    loss = torch.compile(step, fullgraph=True)(*leaves.tensors)
    loss.backward()
    eager_leaves = problem.requiring_grad()
    expected = step(*eager_leaves.tensors)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(leaves.tensors, eager_leaves.tensors):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6)


def test_changing_float_options_recompile_instead_of_breaking_the_graph():
    # After a float option changes, Dynamo traces it symbolically: validation must cope.
    problem = random_problem(5, 8, 10, 2, seed=5)
    for epsilon, discard in ((0.5, 0.2), (0.7, 0.2), (-1.0, 0.3)):
        options = dict(epsilon=epsilon, discard=discard)
        got = compiled(lambda *t, o=options: isa_krr_loss(*t, **o))(*problem.tensors)
        torch.testing.assert_close(got, isa_krr_loss(*problem.tensors, **options))
