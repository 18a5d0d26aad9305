"""The torch.library ops: opcheck, torch.compile, the nn.Module wrapper, the public surface."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import BACKENDS, random_problem

import isa_distill
from isa_distill import ISAKRRLoss, isa_krr_loss, krr_predict
from isa_distill.autograd import isa_krr_forward, krr_predict_forward


def forward_args(problem, *, partner_mode="nearest", solver="auto", backend="torch"):
    n = problem.target_features.shape[0]
    partner_index = {
        "nearest": torch.empty(0, dtype=torch.int64),
        "offsets": torch.ones(n - 1, dtype=torch.int64),  # discard 0.2 of 6 keeps 5
        "explicit": torch.arange(n).flip(0),
    }[partner_mode]
    return (
        *problem.tensors,
        partner_index,
        partner_mode,
        1e-2,
        "trace",
        solver,
        0.2,
        0.5,
        True,
        backend,
        False,  # check_gradients: eager-only (reads values), so off for opcheck's tracing
    )


# opcheck's aot_dispatch test itself reads .grad of non-leaf tensors, which warns.
OPCHECK_WARNING = "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"


@pytest.mark.filterwarnings(OPCHECK_WARNING)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("partner_mode", ["nearest", "offsets", "explicit"])
@pytest.mark.parametrize("solver", ["dual", "primal"])
def test_opcheck_isa_krr(backend, partner_mode, solver):
    problem = random_problem(4, 5, 6, 2, seed=0).requiring_grad()
    args = forward_args(problem, partner_mode=partner_mode, solver=solver, backend=backend)
    torch.library.opcheck(isa_krr_forward, args)


@pytest.mark.filterwarnings(OPCHECK_WARNING)
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_krr_predict(backend):
    problem = random_problem(6, 4, 5, 2, seed=1).requiring_grad()
    args = (*problem.tensors[:3], 1e-2, "trace", "auto", True, backend, False)
    torch.library.opcheck(krr_predict_forward, args)


def test_fake_shapes_match_real_outputs():
    problem = random_problem(7, 4, 9, 3, seed=2)
    for solver in ("dual", "primal"):
        args = forward_args(problem, solver=solver)
        real = isa_krr_forward(*args)
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            fake = isa_krr_forward(*fake_args)
        assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]


def test_meta_tensors_give_shapes_without_reading_values():
    # Shape inference (e.g. planning memory before allocating): "auto" defers the checks.
    problem = random_problem(6, 5, 12, 3, seed=0, dtype=torch.float32).to(device="meta")
    leaves = problem.requiring_grad()
    loss = isa_krr_loss(*leaves.tensors, backend="auto", reduction="none")
    loss.sum().backward()
    assert loss.device.type == "meta" and loss.shape == (12,)
    assert leaves.support_features.grad.shape == (6, 5)
    assert krr_predict(*problem.tensors[:3]).shape == (12, 3)
    with pytest.raises(ValueError, match="meta tensors do not have"):
        isa_krr_loss(*problem.tensors, checks="eager")


def test_compiled_call_matches_eager():
    problem = random_problem(5, 8, 10, 3, seed=3)
    options = dict(epsilon=0.5, discard=0.2, reg=1e-3, backend="torch")
    compiled = torch.compile(lambda *t: isa_krr_loss(*t, **options), backend="aot_eager")
    leaves = problem.requiring_grad()
    loss = compiled(*leaves.tensors)
    loss.backward()
    eager_leaves = problem.requiring_grad()
    expected = isa_krr_loss(*eager_leaves.tensors, **options)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for got, want in zip(leaves.tensors, eager_leaves.tensors):
        torch.testing.assert_close(got.grad, want.grad)


def test_module_wrapper_matches_functional():
    problem = random_problem(5, 8, 10, 3, seed=4)
    module = ISAKRRLoss(epsilon=-0.5, discard=0.3, reg=1e-4, reduction="sum")
    expected = isa_krr_loss(*problem.tensors, epsilon=-0.5, discard=0.3, reg=1e-4, reduction="sum")
    torch.testing.assert_close(module(*problem.tensors), expected)
    assert "epsilon=-0.5" in repr(module)
    explicit = torch.arange(10).roll(1)
    torch.testing.assert_close(
        module(*problem.tensors, partner=explicit),
        isa_krr_loss(
            *problem.tensors, epsilon=-0.5, discard=0.3, reg=1e-4, reduction="sum", partner=explicit
        ),
    )


@pytest.mark.parametrize("options, message", [
    (dict(discard=2.0), r"discard must lie in \[0, 1\)"),
    (dict(partner="bogus"), "partner must be one of"),
    (dict(reg=-1), "reg must be > 0"),
    (dict(backend="cuda"), "backend must be one of"),
    (dict(solve_dtype=torch.float16), "solve_dtype must be"),
])  # fmt: skip
def test_the_module_checks_its_options_when_built(options, message):
    with pytest.raises(ValueError, match=message):
        ISAKRRLoss(**options)


def test_reductions_are_consistent():
    problem = random_problem(5, 8, 10, 3, seed=5)
    per_target = isa_krr_loss(*problem.tensors, reduction="none", discard=0.3)
    total = isa_krr_loss(*problem.tensors, reduction="sum", discard=0.3)
    mean = isa_krr_loss(*problem.tensors, reduction="mean", discard=0.3)
    assert per_target.shape == (10,) and int((per_target == 0).sum()) >= 3
    torch.testing.assert_close(total, per_target.sum())
    torch.testing.assert_close(mean, total / 7)


def test_random_partners_follow_the_generator():
    problem = random_problem(5, 8, 12, 3, seed=6)

    def partners(seed):
        generator = torch.Generator().manual_seed(seed)
        _, info = isa_krr_loss(
            *problem.tensors, partner="random", generator=generator, return_info=True
        )
        return info.partner

    assert torch.equal(partners(1), partners(1))
    assert not torch.equal(partners(1), partners(2))
    _, info = isa_krr_loss(*problem.tensors, partner="random", return_info=True)
    assert not bool((info.partner == info.kept).any())


def test_public_surface():
    assert set(isa_distill.__all__) == {
        "Distilled",
        "ISAInfo",
        "ISAKRRLoss",
        "NotPositiveDefiniteError",
        "Status",
        "__version__",
        "distill_tensors",
        "isa_krr_loss",
        "krr_predict",
        "load_distilled",
        "raise_for_status",
    }
    assert isinstance(isa_distill.__version__, str) and isa_distill.__version__


def test_the_rust_kernel_follows_torch_threads(monkeypatch):
    pytest.importorskip("isa_distill._core")
    from isa_distill import _core, _rust_backend

    assert [_core.parallelism(n) for n in (1, 3)] == [1, 3]
    seen = []
    real = _core.isa_krr_forward

    def spy(*args, **kwargs):
        seen.append(kwargs["threads"])
        return real(*args, **kwargs)

    monkeypatch.setattr(_rust_backend._core, "isa_krr_forward", spy)
    problem = random_problem(4, 5, 6, 2, seed=0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        isa_krr_loss(*problem.tensors, backend="rust")
    finally:
        torch.set_num_threads(threads)
    assert seen == [1]


# The thread names a call leaves behind: the kernel's own rayon pools are named isa-core-*.
THREAD_NAMES_SCRIPT = """
import pathlib, torch
from isa_distill import isa_krr_loss
torch.set_num_threads(2)
x = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in ((6, 4), (6, 3), (20, 4))]
isa_krr_loss(x[0], x[1], x[2], torch.randn(20, 3, dtype=torch.float64), backend="rust").backward()
print(" ".join(p.read_text().strip() for p in pathlib.Path("/proc/self/task").glob("*/comm")))
"""


@pytest.mark.parametrize("team", [True, False])
def test_the_rust_kernel_computes_on_torchs_openmp_threads_unless_told_not_to(team):
    pytest.importorskip("isa_distill._core")
    from isa_distill import _rust_backend

    if _rust_backend.OPENMP_TEAM_RUNTIME is None:
        pytest.skip("torch here does not run on a loaded GNU OpenMP runtime")
    import subprocess
    import sys

    env = {**os.environ, "ISA_DISTILL_OPENMP_TEAM": "1" if team else "0"}
    names = subprocess.run([sys.executable, "-c", THREAD_NAMES_SCRIPT], env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    assert any(name.startswith("isa-core") for name in names) != team, names


def test_the_openmp_team_and_own_threads_give_the_same_results():
    pytest.importorskip("isa_distill._core")
    from isa_distill import _core, _rust_backend

    runtime = _rust_backend.OPENMP_TEAM_RUNTIME
    if runtime is None:
        pytest.skip("torch here does not run on a loaded GNU OpenMP runtime")
    problem = random_problem(6, 24, 40, 3, seed=3, dtype=torch.float32)

    def run():
        leaves = [t.detach().clone().requires_grad_(True) for t in problem.tensors]
        loss = isa_krr_loss(*leaves, epsilon=0.5, backend="rust")
        loss.backward()
        return [loss.detach(), *(leaf.grad for leaf in leaves)]

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        on_team = run()
        assert not _core.use_openmp_runtime(None)
        own = run()
    finally:
        assert _core.use_openmp_runtime(runtime)
        torch.set_num_threads(threads)
    for a, b in zip(on_team, own):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_runtime_that_is_not_loaded_is_not_used():
    pytest.importorskip("isa_distill._core")
    from isa_distill import _core, _rust_backend

    try:
        assert not _core.use_openmp_runtime("/nonexistent/libgomp.so.1")
        assert _core.parallelism(2) == 2  # computes on the kernel's own pool instead
    finally:
        _core.use_openmp_runtime(_rust_backend.OPENMP_TEAM_RUNTIME)


def test_calls_from_several_python_threads_at_once_agree_with_one_at_a_time():
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("isa_distill._core")
    problems = [random_problem(5, 16, 30, 3, seed=seed) for seed in range(8)]

    def run(problem):
        leaves = [t.detach().clone().requires_grad_(True) for t in problem.tensors]
        loss = isa_krr_loss(*leaves, backend="rust")
        loss.backward()
        return [loss.detach(), *(leaf.grad for leaf in leaves)]

    alone = [run(problem) for problem in problems]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, problems))
    for a, b in zip(alone, together):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_target_gradient_is_computed_only_when_wanted(backend, monkeypatch):
    from isa_distill import autograd

    module = autograd.backend_module(backend)
    flags = []
    real = module.backward

    def spy(*args, **kwargs):
        flags.append(kwargs["query_grad"])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "backward", spy)
    problem = random_problem(4, 5, 6, 2, seed=0)
    fs, ys, ft, yt = problem.tensors
    leaves = [t.clone().requires_grad_(True) for t in (fs, ys)]
    isa_krr_loss(*leaves, ft, yt, backend=backend).backward()  # distillation: targets are data
    all_leaves = problem.requiring_grad()
    isa_krr_loss(*all_leaves.tensors, backend=backend).backward()
    assert flags == [False, True]
    assert all_leaves.target_features.grad.shape == ft.shape


def test_the_bindings_read_any_memory_layout_alike():
    """The native kernel reads C-ordered arrays in place and copies others (Fortran order,
    strided views) into row-major order: the results must not depend on which."""
    pytest.importorskip("isa_distill._core")
    import numpy as np

    from isa_distill import _core

    problem = random_problem(12, 7, 9, 3, seed=4)
    arrays = [t.numpy() for t in problem.tensors]
    fortran = [np.asfortranarray(a) for a in arrays]
    strided = [np.repeat(a, 2, axis=1)[:, ::2] for a in arrays]
    assert not fortran[0].flags.c_contiguous and not strided[2].flags.c_contiguous
    options = dict(reg=1e-2, discard=0.2, epsilon=0.5, threads=1)
    no_partners = np.empty(0, dtype=np.int64)
    want = _core.isa_krr_forward(*arrays, no_partners, **options)
    for layout in (fortran, strided):
        got = _core.isa_krr_forward(*layout, no_partners, **options)
        for w, g in zip(want[:-1], got[:-1]):
            np.testing.assert_array_equal(w, g)
        assert want[-1] == got[-1]
    ones = np.ones(arrays[2].shape[0], dtype=arrays[0].dtype)
    grads = _core.isa_krr_backward(*arrays, ones, *want[2:7],
                                   lam=want[-1], reg_mode="trace", epsilon=0.5, threads=1)
    again = _core.isa_krr_backward(*fortran, ones, *want[2:7],
                                   lam=want[-1], reg_mode="trace", epsilon=0.5, threads=1)
    for w, g in zip(grads, again):
        np.testing.assert_array_equal(w, g)
