"""The pipeline on CUDA end to end, and the no-synchronisation promise; skipped without CUDA.

Each test is small (a few steps of a width-8 network on digits): they check that every path
keeps its tensors on the right device and that the op and the step never wait for the GPU,
not accuracy.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_problem
from conftest import tiny_config as shared_tiny_config
from test_step import StepFixture

from isa_distill import distill as distill_module
from isa_distill import isa_krr_loss, krr_predict
from isa_distill.cli import main
from isa_distill.distill import DistillConfig, distill
from isa_distill.evaluate import centred_one_hot, evaluate_set
from isa_distill.runs import CHECKPOINT

pytestmark = pytest.mark.gpu


def tiny_config(**overrides) -> DistillConfig:
    """The CPU tests' tiny config on CUDA, logging every 2 steps and validating every 3."""
    values = dict(log_every=2, val_every=3, device="cuda")
    return shared_tiny_config(**{**values, **overrides})


@pytest.fixture
def no_sync():
    """Any operation that makes the host wait for the GPU raises inside this fixture."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    yield
    torch.cuda.set_sync_debug_mode("default")


def test_op_forward_and_backward_never_wait_for_the_gpu(no_sync):
    problem = random_problem(20, 64, 256, 10, seed=0, dtype=torch.float32).to(device="cuda")
    leaves = problem.requiring_grad()
    loss, info = isa_krr_loss(*leaves.tensors, checks="deferred", return_info=True)
    loss.backward()
    pred = krr_predict(*problem.tensors[:3], checks="deferred")
    assert loss.device.type == "cuda" and pred.device.type == "cuda"
    torch.cuda.set_sync_debug_mode("default")
    assert int(info.status) == 0 and torch.isfinite(leaves.support_features.grad).all()


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("optimizer", ["lamb", "adam"])
def test_one_outer_step_never_waits_for_the_gpu(tiny_digits, optimizer, compile):
    fixture = StepFixture(tiny_digits, tiny_config(optimizer=optimizer), compile=compile)
    fixture()  # warm-up: allocator pools, cuDNN plans, compilation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            result = fixture()  # includes drawing the rows and sending them to the GPU
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(result.status) == 0 and torch.isfinite(fixture.images).all()


def killed_run(data, run_dir, monkeypatch, kill_at: int) -> None:
    """A CUDA run that dies inside step ``kill_at`` (its checkpoint every 2 steps survives)."""
    real_step = distill_module.OuterStep.__call__
    calls = {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise RuntimeError("simulated kill")
        return real_step(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(distill_module.OuterStep, "__call__", dying_step)
        with pytest.raises(RuntimeError, match="simulated kill"):
            distill(data, tiny_config(), run_dir=run_dir, progress=False)


def test_distill_validates_checkpoints_and_resumes_on_cuda_and_on_cpu(
    tiny_digits, tmp_path, monkeypatch
):
    whole = distill(tiny_digits, tiny_config(), run_dir=tmp_path / "whole", progress=False)
    assert whole.images.device.type == "cpu" and whole.history[-1]["val_acc"] is not None
    for device in ("cuda", "cpu"):  # a CUDA run continues on either device
        run_dir = tmp_path / f"killed-{device}"
        killed_run(tiny_digits, run_dir, monkeypatch, kill_at=4)
        assert torch.load(run_dir / CHECKPOINT, weights_only=True)["step"] == 2
        resumed = distill(tiny_digits, tiny_config(device=device), run_dir=run_dir,
                          resume=True, progress=False)
        assert resumed.steps_done == 6 and torch.isfinite(resumed.images).all()
        if device == "cuda":  # same device, same draws: equal up to non-deterministic kernels
            torch.testing.assert_close(resumed.images, whole.images, rtol=1e-3, atol=1e-4)


def test_compiled_distillation_runs_on_cuda(tiny_digits):
    result = distill(tiny_digits, tiny_config(compile=True, steps=4), progress=False)
    assert torch.isfinite(result.images).all()


def test_evaluate_on_cuda(tiny_digits):
    images = tiny_digits.train.images[:20]
    labels = centred_one_hot(tiny_digits.train.labels[:20], 10)
    result = evaluate_set(images.cuda(), labels.cuda(), test=tiny_digits.test, steps=5,
                          num_models=2, width=8, depth=2, device="cuda", progress=False,
                          krr=True)
    assert 0.0 <= result.mean <= 1.0 and len(result.krr_accuracies) == 2


def test_cli_distill_evaluate_and_an_experiment_on_cuda(tmp_path, capsys):
    tiny = ["--width", "8", "--depth", "2", "--batch-size", "32", "--eval-models", "1",
            "--eval-steps", "3", "--no-full-data", "--quiet"]  # fmt: skip
    run_dir = tmp_path / "run"
    assert main(["distill", "--steps", "3", "--device", "cuda", "--run-dir", str(run_dir),
                 *tiny]) == 0  # fmt: skip
    assert main(["evaluate", str(run_dir), "--device", "cuda", "--eval-models", "1",
                 "--eval-steps", "3", "--no-full-data", "--quiet"]) == 0  # fmt: skip
    out = tmp_path / "ablate"
    assert main(["ablate", "--variants", "easy20", "--steps", "2", "--ipc", "1", "--seeds", "0",
                 "--eval-models", "1", "--eval-steps", "3", "--device", "cuda", "--out",
                 str(out), "--quiet"]) == 0  # fmt: skip
    assert (out / "table.md").is_file()
