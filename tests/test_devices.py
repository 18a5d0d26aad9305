"""device "auto": CUDA when torch sees a GPU, else the CPU; the run records the device used."""

from __future__ import annotations

import json

import pytest
import torch

from isa_distill import distill as distill_module
from isa_distill.cli import main
from isa_distill.devices import AUTO, describe_choice, resolve_device
from isa_distill.distill import DistillConfig
from isa_distill.presets import PRESETS, preset_config
from isa_distill.runs import META

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch reports one CUDA device (nothing is ever run on it in these tests)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 80GB")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_cuda_when_available_and_cpu_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(AUTO) == "cuda"
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(AUTO) == "cpu"


def test_the_note_is_given_only_when_auto_picked_a_gpu(fake_gpu):
    assert "Fake GPU 80GB" in describe_choice(AUTO, "cuda")
    assert "--device cpu" in describe_choice(AUTO, "cuda")
    assert describe_choice(AUTO, "cpu") is None
    assert describe_choice("cuda", "cuda") is None  # asked for explicitly: nothing to explain


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_and_the_config_default_leave_the_choice_to_the_machine(preset):
    assert preset_config("digits", preset).device == AUTO
    assert DistillConfig().device == AUTO


class Captured(Exception):
    """Raised by the fake ``distill`` to stop the command once it has its config."""


@pytest.fixture
def captured_config(monkeypatch):
    seen = {}

    def fake_distill(data, config, **options):
        seen["config"] = config
        raise Captured

    monkeypatch.setattr(distill_module, "distill", fake_distill)
    return seen


def test_distill_runs_on_the_gpu_when_there_is_one_and_says_so(fake_gpu, captured_config,
                                                                 capsys, tmp_path):
    with pytest.raises(Captured):
        main(["distill", "--run-dir", str(tmp_path / "r"), "--quiet"])
    assert captured_config["config"].device == "cuda"
    out = capsys.readouterr().out
    assert "CUDA available, running on cuda (Fake GPU 80GB); --device cpu" in out
    assert "device cuda" in out  # the settings line


def test_device_cpu_forces_the_cpu(fake_gpu, captured_config, capsys, tmp_path):
    with pytest.raises(Captured):
        main(["distill", "--device", "cpu", "--run-dir", str(tmp_path / "r"), "--quiet"])
    assert captured_config["config"].device == "cpu"
    assert "CUDA available" not in capsys.readouterr().out


def test_without_a_gpu_auto_runs_on_the_cpu_quietly(no_gpu, captured_config, capsys, tmp_path):
    with pytest.raises(Captured):
        main(["distill", "--run-dir", str(tmp_path / "r"), "--quiet"])
    assert captured_config["config"].device == "cpu"
    assert "CUDA available" not in capsys.readouterr().out


def test_a_bad_device_is_a_one_line_error_naming_the_flag(capsys, tmp_path):
    assert main(["distill", "--device", "gpu0", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "isa-distill: error: --device must be auto, cpu, cuda or cuda:N, got 'gpu0'"



def test_the_run_records_the_device_it_used_not_auto(no_gpu, tmp_path):
    from isa_distill.data import load_dataset

    data = load_dataset("digits")
    config = DistillConfig(ipc=1, steps=1, batch_size=32, width=8, depth=2, pool_size=2,
                           max_online_updates=2, online_batch=10, log_every=1,
                           checkpoint_every=1, val_steps=1)  # fmt: skip
    assert config.device == AUTO
    result = distill_module.distill(data, config, run_dir=tmp_path / "run", progress=False)
    assert result.config.device == "cpu"
    assert json.loads((tmp_path / "run" / META).read_text())["config"]["device"] == "cpu"


def test_a_gpu_run_resumes_on_a_machine_without_one(no_gpu, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["distill", "--ipc", "1", "--steps", "2", "--width", "8", "--depth", "2",
                 "--batch-size", "32", "--checkpoint-every", "1", "--run-dir", str(run_dir),
                 "--no-eval", "--quiet"]) == 0  # fmt: skip
    meta = json.loads((run_dir / META).read_text())
    meta["config"]["device"] = "cuda"  # as if distilled on a GPU machine
    (run_dir / META).write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["distill", "--resume", "--run-dir", str(run_dir), "--steps", "3", "--no-eval",
                 "--quiet"]) == 0  # fmt: skip
    assert "ran on cuda, which this machine does not have; resuming with --device auto" in (
        capsys.readouterr().out)
    assert json.loads((run_dir / META).read_text())["config"]["device"] == "cpu"
    # Asked for explicitly, the missing GPU is an error.
    assert main(["distill", "--resume", "--run-dir", str(run_dir), "--device", "cuda",
                 "--no-eval", "--quiet"]) == 2  # fmt: skip
    assert "--device cuda requested but CUDA is not available" in capsys.readouterr().err
