"""The outer step: optax's LAMB, no host reads, compiled == eager, deferred checks in the loop."""

from __future__ import annotations

import contextlib
import copy as copy_module

import pytest
import torch
from conftest import tiny_config

from isa_distill import distill as distill_module
from isa_distill.data import class_balanced_subset
from isa_distill.data.preprocess import Preprocessor
from isa_distill.devices import resolve_device
from isa_distill.distill import (
    DistillConfig,
    distill,
    draw_rows,
    initial_support_labels,
    make_generators,
    make_optimizer,
    new_pool_member,
    preprocessed,
)
from isa_distill.evaluate import centred_one_hot
from isa_distill.optim import Lamb
from isa_distill.runs import CHECKPOINT, read_log
from isa_distill.step import OuterStep

pytestmark = pytest.mark.usefixtures("single_thread")
CPU = torch.device("cpu")




# ----------------------------------------------------------------------------- LAMB


def optax_lamb_reference(params, grad_fn, lr, steps, b1=0.9, b2=0.999, eps=1e-6):
    """optax.lamb (no weight decay) written out in float64, one tensor at a time."""
    params = [p.double().clone() for p in params]
    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        for i, grad in enumerate(grad_fn(params)):
            first[i] = b1 * first[i] + (1 - b1) * grad
            second[i] = b2 * second[i] + (1 - b2) * grad * grad
            update = (first[i] / (1 - b1**t)) / ((second[i] / (1 - b2**t)).sqrt() + eps)
            p_norm, u_norm = params[i].norm(), update.norm()
            ratio = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
            params[i] = params[i] - lr * ratio * update
    return params


def test_lamb_is_optax_lamb():
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(30, 7, generator=g), torch.zeros(5)]  # a zero tensor: trust ratio 1

    def grads(params):
        return [3 * params[0] ** 2, torch.arange(5.0, dtype=params[1].dtype)]

    params = [p.clone().requires_grad_(True) for p in start]
    optimizer = Lamb(params, lr=1e-2)
    for _ in range(6):
        optimizer.zero_grad()
        for param, grad in zip(params, grads(params)):
            param.grad = grad.detach()
        optimizer.step()
    expected = optax_lamb_reference(start, grads, 1e-2, 6)
    for got, want in zip(params, expected):
        torch.testing.assert_close(got.detach().double(), want, rtol=1e-5, atol=1e-6)


def test_lamb_accepts_a_tensor_learning_rate_and_resumes_from_its_state_dict():
    param = torch.ones(4, requires_grad=True)
    optimizer = Lamb([param], lr=torch.tensor(0.1))
    param.grad = torch.arange(4.0)
    optimizer.step()
    copy = param.detach().clone().requires_grad_(True)
    resumed = Lamb([copy], lr=0.1)
    resumed.load_state_dict(copy_module.deepcopy(optimizer.state_dict()))  # as from a file
    for p, o in ((param, optimizer), (copy, resumed)):
        p.grad = torch.arange(4.0).flip(0)
        o.step()
    torch.testing.assert_close(copy, param)


# ----------------------------------------------------------------------------- one step


@contextlib.contextmanager
def forbid_host_reads():
    """Any Python-level read of a tensor's value raises: on CUDA each would wait for the GPU."""
    names = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy")
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"the step read a tensor value on the host (Tensor.{name})")

        return read

    for name in names:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


class StepFixture:
    """Everything one outer step needs, built like the loop builds it, on ``config.device``."""

    def __init__(self, data, config, *, compile=False):
        self.device = torch.device(resolve_device(config.device))
        generators = make_generators(config.seed)
        preprocessor = Preprocessor.fit(data.train.images, zca=False)
        self.train = preprocessed(data.train, preprocessor, self.device)
        self.targets = centred_one_hot(self.train.labels, data.num_classes)
        init = class_balanced_subset(data.train, config.ipc, generators["data"])
        self.images = preprocessor.transform(init.images).to(self.device).requires_grad_(True)
        self.labels = initial_support_labels(init.labels, data.num_classes).to(self.device)
        self.labels.requires_grad_(True)
        self.optimizer = make_optimizer([self.images, self.labels], config)
        self.member = new_pool_member(config, data, generators["pool"])
        self.step = OuterStep(config.loss_settings(data.num_classes, False), compile=compile)
        self.generators = generators
        self.config = config

    def __call__(self):
        rows = draw_rows(len(self.train), self.config.batch_size, self.generators["data"],
                         self.device)
        own = draw_rows(len(self.images), self.config.online_batch, self.generators["pool"],
                        self.device)
        return self.step(self.member.model, self.member.optimizer, self.images, self.labels,
                         self.optimizer, self.train.images[rows], self.targets[rows], own)


def test_the_read_detector_catches_a_read():
    with pytest.raises(AssertionError, match="Tensor.__bool__"), forbid_host_reads():
        bool(torch.ones(()) > 0)


@pytest.mark.parametrize("optimizer", ["lamb", "adam"])
def test_a_step_reads_no_tensor_value_on_the_host(tiny_digits, optimizer):
    # With the torch backend (the one CUDA uses) and both optimisers of the synthetic set.
    fixture = StepFixture(tiny_digits, tiny_config(backend="torch", optimizer=optimizer))
    before = fixture.images.detach().clone()
    for _ in range(2):
        with forbid_host_reads():
            result = fixture()
    assert not torch.equal(before, fixture.images.detach())
    assert int(result.status) == 0 and result.kernel_loss.requires_grad is False


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach() - want.detach()).norm() / want.detach().norm())


def test_compiled_step_matches_the_eager_step(tiny_digits):
    config = tiny_config(backend="torch")
    eager, compiled = StepFixture(tiny_digits, config), StepFixture(tiny_digits, config,
                                                                      compile=True)
    for _ in range(3):
        want, got = eager(), compiled()
        torch.testing.assert_close(got.kernel_loss, want.kernel_loss, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got.margin_loss, want.margin_loss, rtol=1e-4, atol=1e-6)
    # Early LAMB/Adam steps move each element by about lr * sign(gradient), so an element whose
    # gradient is ~0 may move either way under reordered float sums: compare whole tensors.
    pairs = [(compiled.images, eager.images), (compiled.labels, eager.labels),
             *zip(compiled.member.model.parameters(), eager.member.model.parameters())]
    for got, want in pairs:
        assert relative_difference(got, want) < 1e-4


def test_compile_refuses_random_partners_and_hooks():
    with pytest.raises(ValueError, match="compile needs partner='nearest'"):
        DistillConfig(compile=True, partner="random").validate()
    settings = DistillConfig().loss_settings(10, False)
    with pytest.raises(ValueError, match="no loss hooks"):
        OuterStep(settings, compile=True, loss_fn=lambda *a, **k: None)


# ----------------------------------------------------------------------------- the loop


def test_log_holds_the_kernel_and_margin_terms_apart(tiny_digits, tmp_path):
    distill(tiny_digits, tiny_config(steps=3), run_dir=tmp_path / "run", progress=False)
    rows = read_log(tmp_path / "run" / "log.csv")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["kernel_loss"] > 0 and row["margin_loss"] <= 0
        assert row["loss"] == pytest.approx(row["kernel_loss"] + row["margin_loss"])


def test_a_non_finite_gradient_stops_the_run_before_the_next_checkpoint(tiny_digits, tmp_path):
    calls = {"n": 0}

    def poisoned(fs, ys, ft, yt, *, settings, generator):
        calls["n"] += 1
        loss = (fs.square().mean() + ys.square().mean()) * 1e-3
        return loss * float("nan") if calls["n"] == 3 else loss

    config = tiny_config(steps=6, log_every=5, checkpoint_every=2)
    with pytest.raises(FloatingPointError, match=r"distillation steps 3-4.*last checkpoint"):
        distill(tiny_digits, config, run_dir=tmp_path / "run", progress=False, loss_fn=poisoned)
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert checkpoint["step"] == 2 and torch.isfinite(checkpoint["support_images"]).all()


def test_distill_with_compile_runs_and_agrees_with_eager(tiny_digits):
    eager = distill(tiny_digits, tiny_config(steps=3, backend="torch"), progress=False)
    compiled = distill(tiny_digits, tiny_config(steps=3, backend="torch", compile=True),
                       progress=False)
    assert relative_difference(compiled.images, eager.images) < 1e-4
    for got, want in zip(compiled.history, eager.history):
        assert got["kernel_loss"] == pytest.approx(want["kernel_loss"], rel=1e-4)


def test_a_pool_model_is_built_on_the_run_device_without_touching_the_global_rng(tiny_digits):
    state = torch.random.get_rng_state()
    model = distill_module.new_pool_model(tiny_config(), tiny_digits, seed=7)
    again = distill_module.new_pool_model(tiny_config(), tiny_digits, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b) and a.device.type == "cpu"


def test_channels_last_changes_the_layout_not_the_result(tiny_digits):
    plain = distill(tiny_digits, tiny_config(steps=3), progress=False)
    nhwc = distill(tiny_digits, tiny_config(steps=3, channels_last=True), progress=False)
    model = distill_module.new_pool_model(tiny_config(channels_last=True), tiny_digits, seed=1)
    weight = next(p for p in model.parameters() if p.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert relative_difference(nhwc.images, plain.images) < 1e-4
