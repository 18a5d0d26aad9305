"""distill_tensors: images and labels held in memory, distilled like a dataset on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import isa_distill
from isa_distill import distill_tensors, load_distilled
from isa_distill.cli import main
from isa_distill.distill import DistillConfig
from isa_distill.in_memory import tensor_splits

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(ipc=1, steps=2, batch_size=32, width=8, depth=2, log_every=1, checkpoint_every=2,
            val_steps=2, zca=False, flip=False)  # fmt: skip


@pytest.fixture(scope="module")
def digits_arrays():
    """sklearn's digits as a user would hold them: uint8 pixels and integer labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images / 16 * 255).astype(np.uint8)[:, None]  # (n, 1, 8, 8)
    return pixels, bunch.target


def test_it_is_part_of_the_top_level_api():
    assert "distill_tensors" in isa_distill.__all__ and "load_distilled" in isa_distill.__all__


def test_the_splits_hold_out_validation_stratified_and_have_no_test(digits_arrays):
    pixels, labels = digits_arrays
    data = tensor_splits(pixels, labels, class_names=[f"digit {k}" for k in range(10)])
    assert (len(data.train), len(data.val), len(data.test)) == (1617, 180, 0)
    assert data.name == "tensors" and data.class_names[3] == "digit 3"
    assert torch.bincount(data.val.labels).tolist() == [18] * 10
    assert data.train.images.dtype == torch.float32 and float(data.train.images.max()) <= 1.0


def test_tensors_are_distilled_into_a_run(digits_arrays, tmp_path, capsys):
    pixels, labels = digits_arrays
    run_dir = tmp_path / "run"
    result = distill_tensors(pixels, labels, run_dir=run_dir, progress=False, **TINY)
    assert result.images.shape == (10, 1, 8, 8) and result.labels.shape == (10, 10)
    assert result.steps_done == 2 and result.history[-1]["val_acc"] is not None
    real = torch.from_numpy(pixels[:5]).float() / 255
    assert result.preprocessor.transform(real).shape == (5, 1, 8, 8)
    stored = load_distilled(run_dir)
    assert torch.equal(stored.images, result.images)
    assert json.loads((run_dir / "meta.json").read_text())["dataset"] == "tensors"
    # The CLI cannot reload tensors, and says what to do instead.
    assert main(["evaluate", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "handed over as tensors" in err and "evaluate_set" in err


def test_a_full_config_may_be_given_instead_of_settings(digits_arrays):
    pixels, labels = digits_arrays
    config = DistillConfig(ipc=1, steps=1, batch_size=16, width=8, depth=2, pool_size=2,
                           online_batch=10, log_every=1, checkpoint_every=1, val_steps=1,
                           zca=False, flip=False)  # fmt: skip
    result = distill_tensors(torch.from_numpy(pixels).float() / 255, torch.from_numpy(labels),
                             config=config, val_size=0, progress=False)  # fmt: skip
    assert result.config.steps == 1 and result.history[-1]["val_acc"] is None
    with pytest.raises(ValueError, match="pass either config or settings"):
        distill_tensors(pixels, labels, config=config, ipc=2)


@pytest.mark.parametrize("change, message", [
    (lambda x, y: (x.transpose(0, 2, 3, 1), y), r"\(n, c, s, s\).*permute"),
    (lambda x, y: (x.astype(np.float32), y), r"float images must lie in \[0, 1\]"),
    (lambda x, y: (x, y.astype(np.float32)), "labels must be 1797 integer class indices"),
    (lambda x, y: (x, y[:-1]), r"shape \(1797,\)"),
    (lambda x, y: (x[y != 4][:-1], np.append(y[y != 4][:-2], 4)), "class 4 .* has 1"),
    (lambda x, y: ("pictures", y), "must be a torch tensor or numpy array"),
    # One huge label: refused before anything is sized by it (it used to exhaust memory).
    (lambda x, y: (x, np.where(np.arange(len(y)) == 0, 2**40, y)), "labels go up to 1099511627776"),
    (lambda x, y: (x[:50], np.repeat(np.arange(10), 5)), "val_size=0.1 holds out 5 of 50 images, "
     "fewer than their 10 classes"),
])  # fmt: skip
def test_bad_input_is_named(digits_arrays, change, message):
    images, labels = change(*digits_arrays)
    with pytest.raises((ValueError, TypeError), match=message):
        distill_tensors(images, labels, progress=False, **TINY)


def test_reversed_numpy_views_are_read_and_a_dict_config_is_refused(digits_arrays):
    images, labels = digits_arrays
    data = tensor_splits(images[::-1], labels[::-1])  # negative strides, which torch refuses
    assert len(data.train) + len(data.val) == len(labels)
    with pytest.raises(TypeError, match="config must be a DistillConfig, got dict"):
        distill_tensors(images, labels, config={"ipc": 1}, progress=False)


def test_class_names_must_be_distinct_names_not_one_string(digits_arrays):
    images, labels = digits_arrays
    with pytest.raises(TypeError, match="class_names must be a sequence of names, not one str"):
        tensor_splits(images, labels, class_names="0123456789")
    with pytest.raises(ValueError, match="class_names must be distinct"):
        tensor_splits(images, labels, class_names=["a"] * 10)
