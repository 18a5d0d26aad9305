"""Presets: the paper's settings, small CPU settings, clear errors for unknown names."""

from __future__ import annotations

import pytest

from isa_distill.data import KNOWN_DATASETS
from isa_distill.presets import PRESETS, describe_presets, preset_config


def test_paper_preset_matches_the_protocol():
    config = preset_config("cifar10", "paper", ipc=10)
    assert (config.width, config.depth, config.batch_size, config.steps) == (128, 3, 1024, 500_000)
    assert (config.optimizer, config.peak_lr, config.lr_final_fraction) == ("lamb", 3e-4, 0.1)
    assert (config.pool_size, config.max_online_updates, config.online_lr) == (10, 100, 3e-4)
    assert config.norm == "batch" and config.device == "auto"  # CUDA when available


def test_paper_preset_computes_the_loss_of_the_public_code():
    # Away from the partner (epsilon < 0) with the mean over classes: what produced Table 1.
    config = preset_config("cifar10", "paper", ipc=10)
    assert (config.epsilon, config.discard, config.partner) == (-1.0, 0.2, "nearest")
    assert config.class_reduction == "mean"


@pytest.mark.parametrize("dataset", KNOWN_DATASETS)
def test_cpu_presets_are_small(dataset):
    config = preset_config(dataset, "cpu", ipc=1)
    assert config.device == "auto" and not config.autocast  # CUDA when available
    assert config.steps <= 5_000 and config.width <= 32 and config.batch_size <= 512


def test_cpu_preset_takes_the_fidelity_studys_choice():
    # Adam 1e-3, ISA away from the partner at FRePo's scale (docs/experiments/fidelity.md).
    config = preset_config("fashion-mnist", "cpu", ipc=1)
    assert (config.optimizer, config.peak_lr) == ("adam", 1e-3)
    assert (config.epsilon, config.discard, config.class_reduction) == (-1.0, 0.2, "half_sum")
    rfad = preset_config("fashion-mnist", "rfad-cpu", ipc=1)
    assert (rfad.epsilon, rfad.discard) == (0.0, 0.0)  # RFAD's own settings win


def test_overrides_apply_and_none_keeps_the_preset():
    config = preset_config("digits", "cpu", ipc=5, epsilon=0.0, discard=None, steps=7)
    assert (config.ipc, config.epsilon, config.steps) == (5, 0.0, 7)
    assert config.discard == preset_config("digits", "cpu").discard


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("svhn", "cpu"), "unknown dataset 'svhn'; known datasets: digits, mnist"),
        (("digits", "fast"), "unknown preset 'fast'; known presets: cpu, paper"),
    ],
)
def test_unknown_names_list_the_known_ones(args, message):
    with pytest.raises(ValueError, match=message):
        preset_config(*args)


def test_bad_overrides_are_rejected():
    with pytest.raises(ValueError, match="unknown config fields"):
        preset_config("digits", "cpu", learning_rate=1.0)
    with pytest.raises(ValueError, match="discard"):
        preset_config("digits", "cpu", discard=1.5)


def test_describe_lists_every_preset_and_dataset():
    text = describe_presets()
    assert len(text.splitlines()) == len(PRESETS) * len(KNOWN_DATASETS)


def test_rfad_preset_takes_the_settings_of_rfads_public_code():
    config = preset_config("cifar10", "rfad", ipc=10)
    assert (config.source, config.random_models, config.random_width, config.random_depth) == (
        "random", 8, 256, 3)
    assert (config.krr_loss, config.reg, config.batch_size) == ("platt", 5e-3, 5_120)
    assert (config.optimizer, config.peak_lr, config.lr_final_fraction) == ("adam", 1e-3, 1.0)
    assert not config.label_margin and config.flip is False and config.learn_labels
    assert (config.epsilon, config.discard) == (0.0, 0.0)  # the module is added by flags
    assert config.device == "auto" and config.formation == 1  # CUDA when available


def test_rfad_cpu_preset_is_rfad_at_the_cpu_budget():
    config = preset_config("fashion-mnist", "rfad-cpu", ipc=1)
    cpu = preset_config("fashion-mnist", "cpu", ipc=1)
    assert (config.source, config.krr_loss, config.device) == ("random", "platt", "auto")
    assert (config.steps, config.batch_size, config.width) == (cpu.steps, cpu.batch_size,
                                                               cpu.width)
    assert config.random_models * config.random_width <= 128
