"""Shared fixtures: random well-conditioned problems, the backend list, the ``gpu`` marker."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass

import pytest
import torch

# torch.compile's on-disk caches key compiled graphs on the traced forward, not on the custom
# ops' backward rules: a cache left by an earlier version of this package replays stale code.
# Each test session compiles into a fresh directory.
INDUCTOR_CACHE = tempfile.mkdtemp(prefix="isa-distill-inductor-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = INDUCTOR_CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(INDUCTOR_CACHE, ignore_errors=True)

HAS_NATIVE = importlib.util.find_spec("isa_distill._core") is not None
HAS_CUDA = torch.cuda.is_available()

BACKENDS = [
    "torch",
    pytest.param(
        "rust",
        marks=pytest.mark.skipif(not HAS_NATIVE, reason="isa_distill._core is not built"),
    ),
]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@dataclass
class Problem:
    support_features: torch.Tensor
    support_labels: torch.Tensor
    target_features: torch.Tensor
    target_labels: torch.Tensor

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (
            self.support_features,
            self.support_labels,
            self.target_features,
            self.target_labels,
        )

    def to(self, **kwargs) -> Problem:
        return Problem(*(t.to(**kwargs) for t in self.tensors))

    def requiring_grad(self) -> Problem:
        return Problem(*(t.detach().clone().requires_grad_(True) for t in self.tensors))


def centred_one_hot(classes: torch.Tensor, c: int, dtype: torch.dtype) -> torch.Tensor:
    """1 - 1/C on, -1/C off."""
    return torch.nn.functional.one_hot(classes, c).to(dtype) - 1.0 / c


def random_problem(
    m: int, d: int, n: int, c: int, *, seed: int = 0, dtype: torch.dtype = torch.float64
) -> Problem:
    """Gaussian features (scaled so K has a unit-size diagonal), soft support labels and centred
    one-hot target labels; K is well conditioned whenever M is well below d."""
    gen = torch.Generator().manual_seed(seed)
    support_features = torch.randn(m, d, generator=gen, dtype=torch.float64) / d**0.5
    support_labels = 0.5 * torch.randn(m, c, generator=gen, dtype=torch.float64)
    target_features = torch.randn(n, d, generator=gen, dtype=torch.float64) / d**0.5
    classes = torch.randint(0, c, (n,), generator=gen)
    target_labels = centred_one_hot(classes, c, torch.float64)
    return Problem(support_features, support_labels, target_features, target_labels).to(dtype=dtype)


@pytest.fixture
def make_problem():
    return random_problem


@pytest.fixture(scope="module")
def single_thread():
    """Tiny networks run faster on one torch thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_digits():
    """sklearn digits cut down to 200 train / 50 val / 50 test images (fast, no files needed)."""
    from isa_distill.data import load_dataset

    data = load_dataset("digits", val_size=50)
    return dataclasses.replace(
        data, train=data.train.subset(torch.arange(200)), test=data.test.subset(torch.arange(50))
    )


def tiny_config(**overrides):
    """A DistillConfig that runs a step in milliseconds on tiny_digits."""
    from isa_distill.distill import DistillConfig

    values = dict(
        ipc=2, steps=6, batch_size=64, width=8, depth=2, pool_size=3, max_online_updates=2,
        online_batch=12, log_every=1, checkpoint_every=2, val_every=0, val_steps=5,
    )  # fmt: skip
    return DistillConfig(**{**values, **overrides})



def kill_in_step(monkeypatch, step: int) -> None:
    """Make the ``step``-th outer step (1-based) from now raise RuntimeError("simulated kill"),
    like a process killed mid-run; the real step is back for whatever runs after it."""
    from isa_distill import distill as distill_module

    real_step = distill_module.OuterStep.__call__
    calls = {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            monkeypatch.setattr(distill_module.OuterStep, "__call__", real_step)
            raise RuntimeError("simulated kill")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(distill_module.OuterStep, "__call__", dying_step)
