"""The distillation loop: one step's effect, determinism, interrupted-and-resumed runs."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch
from conftest import kill_in_step, tiny_config

from isa_distill import runs
from isa_distill.data import DatasetSplits, Split, class_balanced_subset
from isa_distill.data.preprocess import Preprocessor
from isa_distill.distill import (
    DistillConfig,
    cosine_lr,
    distill,
    draw_rows,
    initial_pool,
    initial_support_labels,
    make_generators,
    make_optimizer,
    preprocessed,
)
from isa_distill.evaluate import centred_one_hot
from isa_distill.optim import Lamb
from isa_distill.runs import (
    CHECKPOINT,
    META,
    RunDamagedError,
    RunExistsError,
    RunNotFoundError,
    read_log,
)
from isa_distill.step import for_features, label_margin_penalty, loss_terms

pytestmark = pytest.mark.usefixtures("single_thread")




def test_one_step_changes_the_set_and_lowers_the_loss_on_a_fixed_batch(tiny_digits):
    config = tiny_config()
    generators = make_generators(0)
    preprocessor = Preprocessor.fit(tiny_digits.train.images, zca=False)
    train = preprocessed(tiny_digits.train, preprocessor, "cpu")
    init = class_balanced_subset(tiny_digits.train, config.ipc, generators["data"])
    images = preprocessor.transform(init.images).requires_grad_(True)
    labels = initial_support_labels(init.labels, 10).requires_grad_(True)
    model = for_features(initial_pool(config, tiny_digits, generators["pool"])[0].model)
    rows = draw_rows(len(train), config.batch_size, generators["data"], torch.device("cpu"))
    batch_images, batch_labels = train.images[rows], centred_one_hot(train.labels[rows], 10)
    optimizer = make_optimizer([images, labels], config)
    settings = config.loss_settings(10, flip=False)

    def loss_on_batch() -> torch.Tensor:
        kernel, margin, status = loss_terms(model, images, labels, batch_images, batch_labels,
                                            settings)
        assert int(status) == 0
        return kernel + margin

    before_images, before_labels = images.detach().clone(), labels.detach().clone()
    loss = loss_on_batch()
    loss.backward()
    optimizer.step()
    assert not torch.equal(images.detach(), before_images)
    assert not torch.equal(labels.detach(), before_labels)
    with torch.no_grad():
        assert loss_on_batch().item() < loss.item()


def test_lamb_scales_each_whole_tensor_by_its_own_norm():
    # LAMB's first step moves each tensor by lr * ||p|| (the trust ratio), whatever the gradient
    # scale, separately per tensor; the norm is NOT clamped (general-purpose LAMBs clamp at 10).
    big = torch.full((50, 50), 3.0, requires_grad=True)  # ||p|| = 150
    small = torch.full((4,), 0.5, requires_grad=True)  # ||p|| = 1
    optimizer = Lamb([big, small], lr=1e-2)
    start = [big.detach().clone(), small.detach().clone()]
    (1e3 * big.sum() + 1e-3 * (small * torch.arange(4.0)).sum()).backward()
    optimizer.step()
    for tensor, before in zip((big, small), start):
        moved = (tensor.detach() - before).norm().item()
        assert moved == pytest.approx(1e-2 * before.norm().item(), rel=1e-3)


def test_label_margin_penalty_rewards_margins_up_to_one_over_c():
    labels = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.30, 0.25, 0.0, 0.0]])
    # row 0: margin 0.8 capped at 1/4; row 1: margin 0.05
    assert label_margin_penalty(labels).item() == pytest.approx(-(0.25 + 0.05) / 2)


def test_cosine_lr_runs_from_peak_to_final_fraction():
    config = DistillConfig(steps=101, lr=2e-3, lr_final_fraction=0.1)
    assert cosine_lr(0, config) == pytest.approx(2e-3)
    assert cosine_lr(50, config) == pytest.approx(0.5 * (2e-3 + 2e-4))
    assert cosine_lr(100, config) == pytest.approx(2e-4)
    assert DistillConfig(optimizer="adam").peak_lr == 1e-3


def test_initial_pool_counters_are_staggered(tiny_digits):
    config = tiny_config(pool_size=4, max_online_updates=100)
    pool = initial_pool(config, tiny_digits, make_generators(0)["pool"])
    assert [member.updates for member in pool] == [0, 25, 50, 75]
    first = [p.detach() for p in pool[0].model.parameters()]
    second = [p.detach() for p in pool[1].model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(first, second))


def test_initial_labels_are_scaled_centred_one_hot():
    labels = initial_support_labels(torch.tensor([2, 0]), 40)
    scale = 1 / math.sqrt(4)
    assert labels[0, 2].item() == pytest.approx((1 - 1 / 40) * scale)
    assert labels[0, 0].item() == pytest.approx(-1 / 40 * scale)


def test_a_run_is_reproducible_and_moves_the_set(tiny_digits):
    first = distill(tiny_digits, tiny_config(steps=3), progress=False)
    second = distill(tiny_digits, tiny_config(steps=3), progress=False)
    other_seed = distill(tiny_digits, tiny_config(steps=3, seed=1), progress=False)
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    assert not torch.equal(first.images, other_seed.images)
    assert [row["step"] for row in first.history] == [1, 2, 3]


def test_hooks_replace_the_loss_and_the_target_batch(tiny_digits):
    from isa_distill.functional import isa_krr_loss

    calls = {"loss": 0, "targets": 0}

    def same_loss(fs, ys, ft, yt, *, settings, generator):
        calls["loss"] += 1
        return isa_krr_loss(fs, ys, ft, yt, epsilon=settings.epsilon, discard=settings.discard,
                            generator=generator)

    def same_targets(images, labels, generator):
        calls["targets"] += 1
        return images, labels

    plain = distill(tiny_digits, tiny_config(steps=3), progress=False)
    hooked = distill(tiny_digits, tiny_config(steps=3), progress=False,
                     loss_fn=same_loss, target_transform=same_targets)
    assert calls == {"loss": 3, "targets": 3}
    assert torch.equal(plain.images, hooked.images)  # identity hooks change nothing

    zeroed = distill(tiny_digits, tiny_config(steps=3), progress=False,
                     target_transform=lambda images, labels, g: (images * 0, labels))
    assert not torch.equal(plain.images, zeroed.images)


def test_frepo_baseline_and_random_partner_run(tiny_digits):
    for overrides in (dict(epsilon=0.0, discard=0.0), dict(partner="random", optimizer="adam")):
        result = distill(tiny_digits, tiny_config(steps=2, **overrides), progress=False)
        assert torch.isfinite(result.images).all()
        assert all(math.isfinite(row["loss"]) for row in result.history)


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tiny_digits, tmp_path, monkeypatch):
    config = tiny_config(steps=7, checkpoint_every=2, val_every=3)
    whole = distill(tiny_digits, config, run_dir=tmp_path / "whole", progress=False)

    # Kill the second run inside step 6 (after the checkpoint at step 4): steps 5-6 are lost.
    kill_in_step(monkeypatch, 6)
    with pytest.raises(RuntimeError, match="simulated kill"):
        distill(tiny_digits, config, run_dir=tmp_path / "killed", progress=False)
    checkpoint = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)
    assert checkpoint["step"] == 4

    resumed = distill(tiny_digits, None, run_dir=tmp_path / "killed", resume=True, progress=False)
    assert torch.equal(resumed.images, whole.images)
    assert torch.equal(resumed.labels, whole.labels)
    whole_log = read_log(tmp_path / "whole" / "log.csv")
    resumed_log = read_log(tmp_path / "killed" / "log.csv")
    assert [r["step"] for r in resumed_log] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["loss"] for r in resumed_log] == [r["loss"] for r in whole_log]
    assert [r["val_acc"] for r in resumed_log] == [r["val_acc"] for r in whole_log]
    assert resumed_log[2]["val_acc"] is not None and resumed_log[1]["val_acc"] is None


def test_resume_refuses_a_changed_config_naming_every_field(tiny_digits, tmp_path):
    distill(tiny_digits, tiny_config(steps=2), run_dir=tmp_path / "run", progress=False)
    meta = (tmp_path / "run" / META).read_bytes()
    changed = tiny_config(steps=2, epsilon=0.5, width=16, seed=3)
    with pytest.raises(ValueError, match=r"epsilon \(the run has 1\.0, given 0\.5\)") as error:
        distill(tiny_digits, changed, run_dir=tmp_path / "run", resume=True, progress=False)
    assert "seed (the run has 0, given 3)" in str(error.value)
    assert "width (the run has 8, given 16)" in str(error.value)
    assert (tmp_path / "run" / META).read_bytes() == meta


def test_resume_accepts_the_settings_that_do_not_change_the_set(tiny_digits, tmp_path,
                                                                monkeypatch):
    config = tiny_config(steps=4)
    whole = distill(tiny_digits, config, run_dir=tmp_path / "whole", progress=False)
    kill_in_step(monkeypatch, 3)  # the last checkpoint is at step 2
    with pytest.raises(RuntimeError, match="simulated kill"):
        distill(tiny_digits, config, run_dir=tmp_path / "run", progress=False)
    monkeypatch.undo()
    other = dataclasses.replace(config, checkpoint_every=3, log_every=2, val_every=1, val_steps=2,
                                eval_steps=7, device="cpu")  # fmt: skip
    resumed = distill(tiny_digits, other, run_dir=tmp_path / "run", resume=True, progress=False)
    assert torch.equal(resumed.images, whole.images)
    assert resumed.config == other
    assert json.loads((tmp_path / "run" / META).read_text())["config"]["eval_steps"] == 7


def test_extending_a_finished_run_continues_at_the_final_lr(tiny_digits, tmp_path):
    """``steps`` raised on resume: the cosine keeps its original length, the steps added run at
    lr * lr_final_fraction, and the result is a run started with that schedule."""
    short = tiny_config(steps=4, checkpoint_every=4)
    first = distill(tiny_digits, short, run_dir=tmp_path / "run", progress=False)
    extended = distill(tiny_digits, tiny_config(steps=7, checkpoint_every=4),
                       run_dir=tmp_path / "run", resume=True, progress=False)
    reference = distill(tiny_digits, tiny_config(steps=7, lr_schedule_steps=4), progress=False)
    assert torch.equal(extended.images, reference.images)
    assert torch.equal(extended.labels, reference.labels)
    log = read_log(tmp_path / "run" / "log.csv")
    assert [row["step"] for row in log] == list(range(1, 8))
    assert [row["loss"] for row in log[:4]] == [row["loss"] for row in first.history]
    final_lr = short.peak_lr * short.lr_final_fraction
    assert [row["lr"] for row in log[3:]] == pytest.approx([final_lr] * 4)
    stored = json.loads((tmp_path / "run" / META).read_text())
    assert (stored["config"]["steps"], stored["config"]["lr_schedule_steps"]) == (7, 4)
    assert stored["steps_done"] == 7
    # Resumed again without a config, the run is the extended one: nothing is left to do.
    again = distill(tiny_digits, None, run_dir=tmp_path / "run", resume=True, progress=False)
    assert again.steps_done == 7 and torch.equal(again.images, extended.images)


def test_extending_an_interrupted_run_keeps_its_cosine(tiny_digits, tmp_path, monkeypatch):
    config = tiny_config(steps=6, checkpoint_every=2)
    kill_in_step(monkeypatch, 4)  # the last checkpoint is at step 2
    with pytest.raises(RuntimeError, match="simulated kill"):
        distill(tiny_digits, config, run_dir=tmp_path / "run", progress=False)
    monkeypatch.undo()
    extended = distill(tiny_digits, dataclasses.replace(config, steps=9),
                       run_dir=tmp_path / "run", resume=True, progress=False)
    reference = distill(tiny_digits, tiny_config(steps=9, lr_schedule_steps=6), progress=False)
    assert torch.equal(extended.images, reference.images)


def test_resume_cannot_go_below_the_steps_done(tiny_digits, tmp_path):
    distill(tiny_digits, tiny_config(steps=4), run_dir=tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"steps=3 is fewer than the 4 steps"):
        distill(tiny_digits, tiny_config(steps=3), run_dir=tmp_path / "run", resume=True,
                progress=False)  # fmt: skip


def flip_byte_inside(path, tensor: torch.Tensor) -> None:
    """Flip one byte in the middle of ``tensor``'s stored bytes in ``path``."""
    data = bytearray(path.read_bytes())
    start = bytes(data).find(tensor.numpy().tobytes())
    assert start >= 0, "the tensor's bytes are not stored contiguously"
    data[start + tensor.numel() * tensor.element_size() // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_resume_without_a_checkpoint_says_so_instead_of_restarting(tiny_digits, tmp_path,
                                                                     monkeypatch):
    kill_in_step(monkeypatch, 1)  # before the first checkpoint
    with pytest.raises(RuntimeError, match="simulated kill"):
        distill(tiny_digits, tiny_config(steps=4), run_dir=tmp_path / "run", progress=False)
    monkeypatch.undo()
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(RunNotFoundError, match=r"no checkpoint\.pt.*nothing to resume"):
        distill(tiny_digits, None, run_dir=tmp_path / "run", resume=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_resume_refuses_a_checkpoint_with_a_flipped_byte(tiny_digits, tmp_path):
    distill(tiny_digits, tiny_config(steps=2), run_dir=tmp_path / "run", progress=False)
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    weight = next(iter(checkpoint["pool"][0]["model"].values()))  # a pool model's first tensor
    flip_byte_inside(tmp_path / "run" / CHECKPOINT, weight)
    with pytest.raises(RunDamagedError, match=r"checkpoint\.pt is damaged"):
        distill(tiny_digits, None, run_dir=tmp_path / "run", resume=True, progress=False)


def test_a_kill_between_the_checkpoint_and_meta_json_still_resumes_exactly(
    tiny_digits, tmp_path, monkeypatch
):
    config = tiny_config(steps=6, checkpoint_every=2)
    whole = distill(tiny_digits, config, run_dir=tmp_path / "whole", progress=False)
    real_record = runs.Run._record_written

    def dying_record(self, name, sha256):
        if name == CHECKPOINT and self.meta["steps_done"] == 2:  # the save at step 4
            raise KeyboardInterrupt  # checkpoint.pt moved into place, meta.json not yet updated
        return real_record(self, name, sha256)

    monkeypatch.setattr(runs.Run, "_record_written", dying_record)
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_digits, config, run_dir=tmp_path / "killed", progress=False)
    monkeypatch.undo()
    meta = json.loads((tmp_path / "killed" / META).read_text())
    assert meta["steps_done"] == 2 and CHECKPOINT in meta["sha256_pending"]
    resumed = distill(tiny_digits, None, run_dir=tmp_path / "killed", resume=True,
                      progress=False)  # fmt: skip
    assert torch.equal(resumed.images, whole.images)
    assert [row["step"] for row in read_log(tmp_path / "killed" / "log.csv")] == list(range(1, 7))


def test_resume_refuses_data_of_another_shape(tiny_digits, tmp_path):
    distill(tiny_digits, tiny_config(steps=2), run_dir=tmp_path / "run", progress=False)
    nine = [split.subset(torch.nonzero(split.labels != 9).flatten())
            for split in (tiny_digits.train, tiny_digits.val, tiny_digits.test)]
    fewer = DatasetSplits(tiny_digits.name, *nine, tiny_digits.class_names[:9])
    with pytest.raises(ValueError, match="10 classes .* the data given has 9 classes"):
        distill(fewer, None, run_dir=tmp_path / "run", resume=True, progress=False)


def test_existing_run_dir_is_refused_and_left_intact(tiny_digits, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("keep me")
    with pytest.raises(RunExistsError, match="already exists"):
        distill(tiny_digits, tiny_config(steps=1), run_dir=run_dir, progress=False)
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]
    assert (run_dir / "notes.txt").read_text() == "keep me"


def test_too_large_ipc_fails_before_creating_the_run(tiny_digits, tmp_path):
    with pytest.raises(ValueError, match=r"ipc=500 is too large: class '\w+' has only \d+ "
                       r"images in the train split \(after the validation hold-out\); use ipc <="):
        distill(tiny_digits, tiny_config(ipc=500), run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("discard", 1.0), ("partner", "farthest"), ("optimizer", "sgd"), ("steps", 0),
     ("reg", -1.0), ("norm", "layer"), ("seed", -1), ("seed", 2**32), ("seed", 1.5),
     ("flip", "no"), ("zca", 1), ("compile", "yes"), ("epsilon", "1"), ("epsilon", True),
     ("discard", None), ("lr", "3e-4"), ("device", None), ("arch", "transformer")],
)  # fmt: skip
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DistillConfig(**{field: value}).validate()


def test_flip_rule_follows_the_official_code():
    from isa_distill.distill import default_flip

    assert default_flip("cifar10", 1) and default_flip("cifar10", 50)
    assert default_flip("cifar100", 1) and not default_flip("cifar100", 10)
    # Tiny-ImageNet (200 classes, read as an image folder): flips at IPC 1 only.
    assert default_flip("image-folder", 1, num_classes=200)
    assert not default_flip("image-folder", 10, num_classes=200)
    assert default_flip("image-folder", 10, num_classes=10)
    assert not any(default_flip(name, 1) for name in ("digits", "mnist", "fashion-mnist"))


def test_a_run_being_written_is_refused_to_a_second_process_and_released_after(tiny_digits,
                                                                                tmp_path):
    run_dir = tmp_path / "run"
    distill(tiny_digits, tiny_config(steps=2), run_dir=run_dir, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    # Another process writing the run (a second open of the directory: flock conflicts
    # across open files, in one process as in two).
    with runs.Run.open(run_dir).writing():
        with pytest.raises(runs.RunInUseError, match="is in use"):
            distill(tiny_digits, tiny_config(steps=4), run_dir=run_dir, resume=True,
                    progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
    resumed = distill(tiny_digits, tiny_config(steps=4), run_dir=run_dir, resume=True,
                      progress=False)  # the lock went with the other writer, and with ours
    assert resumed.steps_done == 4
    with runs.Run.open(run_dir).writing():
        pass  # free again after a run


def test_a_foreign_checkpoint_in_a_run_without_hashes_is_refused(tiny_digits, tmp_path):
    # Runs written before hashes were recorded load unchecked: the checkpoint's own content
    # must still belong to the run.
    run_dir = tmp_path / "run"
    distill(tiny_digits, tiny_config(steps=2), run_dir=run_dir, progress=False)
    older = torch.load(run_dir / CHECKPOINT, weights_only=True)
    distill(tiny_digits, tiny_config(steps=4), run_dir=run_dir, resume=True, progress=False)
    meta = json.loads((run_dir / META).read_text())
    del meta["sha256"], meta["sha256_pending"]
    (run_dir / META).write_text(json.dumps(meta))
    for foreign, message in (({}, r"it lacks \['step'"),
                             ({**older, "step": "x"}, "its step is .x., not a count"),
                             (older, "it holds step 2, but meta.json says 4 steps were done")):
        torch.save(foreign, run_dir / CHECKPOINT)
        with pytest.raises(runs.RunDamagedError, match="is not this run's checkpoint: " + message):
            distill(tiny_digits, tiny_config(steps=6), run_dir=run_dir, resume=True,
                    progress=False)


def test_distill_names_arguments_of_the_wrong_kind(tiny_digits):
    with pytest.raises(TypeError, match="data must be a DatasetSplits .* got Tensor"):
        distill(torch.zeros(3), tiny_config())
    with pytest.raises(TypeError, match="config must be a DistillConfig or None, got dict"):
        distill(tiny_digits, {"ipc": 1})


def test_hand_built_splits_a_run_cannot_use_are_named_before_it_starts(tiny_digits, tmp_path):
    train, val = tiny_digits.train, tiny_digits.val
    bad_val = {
        "images of (1, 16, 16)": Split(torch.rand(len(val), 1, 16, 16), val.labels),
        "images must lie in [0, 1]": Split(val.images * float("nan"), val.labels),
        "labels must lie in [0, 10)": Split(val.images, val.labels + 5),
        "images must be float32": Split(val.images.double(), val.labels),
    }
    for message, split in bad_val.items():
        data = DatasetSplits("digits", train, split, tiny_digits.test, tiny_digits.class_names)
        with pytest.raises(ValueError, match=r"digits val split: .*" + re.escape(message)):
            distill(data, tiny_config(steps=2), run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_gpu_this_machine_lacks_is_named_before_the_run_starts(tiny_digits, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available"):
        distill(tiny_digits, tiny_config(device="cuda"), run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
