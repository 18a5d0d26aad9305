"""isa-distill export: PNG files, an image folder and .npz, read back and checked."""

from __future__ import annotations

import csv
import errno
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from isa_distill.cli import main
from isa_distill.data.preprocess import Preprocessor
from isa_distill.distill import DistillConfig
from isa_distill.export import NPZ_FILE, NPZ_KEYS, export_run, folder_names
from isa_distill.runs import Run, load_distilled

CLASSES = ["T-shirt/top", "Trouser", "Bag"]


def make_run(path, *, channels: int, zca: bool, size: int = 6, ipc: int = 2,
             layer_norm: bool = False):
    """A run of 3 classes whose learned labels put image 1 (a class-0 row) into class 2."""
    gen = torch.Generator().manual_seed(channels)
    real = torch.rand(50, channels, size, size, generator=gen)
    preprocessor = Preprocessor.fit(real, zca=zca, layer_norm=layer_norm)
    # Pixels a little outside [0, 1], as distillation leaves them.
    pixels = torch.rand(3 * ipc, channels, size, size, generator=gen) * 1.3 - 0.15
    labels = torch.full((3 * ipc, 3), -1 / 3)
    for row in range(3 * ipc):
        labels[row, row // ipc] = 2 / 3
    labels[1] = torch.tensor([0.1, -0.2, 0.4])
    data = SimpleNamespace(name="cifar10", num_classes=3, class_names=CLASSES, channels=channels,
                           image_size=size)  # fmt: skip
    run = Run.create(path)
    run.write_meta(data, DistillConfig(ipc=ipc), preprocessor, flip=False, steps_done=0)
    run.write_distilled(preprocessor.transform(pixels), labels, preprocessor)
    return path


def expected_pixels(run_dir) -> np.ndarray:
    pixels = load_distilled(run_dir).pixel_images
    return (pixels * 255).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_labels_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_class_names_become_safe_distinct_folder_names():
    assert folder_names(["T-shirt/top", "a:b", "a-b", "", ".."]) == [
        "T-shirt-top", "a-b", "a-b-2", "class-3", "class-4"]  # fmt: skip


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_has_a_folder_per_class_and_clamped_pixels(tmp_path, channels):
    run_dir = make_run(tmp_path / "run", channels=channels, zca=channels == 3)
    files = export_run(run_dir, "image-folder", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["Bag", "T-shirt-top", "Trouser", "labels.csv"]
    assert sorted(p.name for p in (out / "Bag").iterdir()) == ["0001.png", "0004.png", "0005.png"]
    assert len([f for f in files if f.suffix == ".png"]) == 6
    expected = expected_pixels(run_dir)
    assert expected.min() == 0 and expected.max() == 255  # some pixels were clamped
    for row, folder in [(0, "T-shirt-top"), (1, "Bag"), (3, "Trouser")]:
        with Image.open(out / folder / f"{row:04d}.png") as image:
            assert image.mode == ("L" if channels == 1 else "RGB")
            pixels = np.asarray(image)
        assert np.array_equal(pixels.reshape(expected[row].shape), expected[row])
    rows = read_labels_csv(out / "labels.csv")
    assert [r["file"] for r in rows[:2]] == ["T-shirt-top/0000.png", "Bag/0001.png"]
    assert rows[1]["class_name"] == "Bag" and float(rows[1]["label_2"]) == pytest.approx(0.4)


def test_png_is_one_flat_folder(tmp_path):
    run_dir = make_run(tmp_path / "run", channels=3, zca=False)
    export_run(run_dir, "png", tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names[:3] == ["0000-T-shirt-top.png", "0001-Bag.png", "0002-Trouser.png"]
    assert names[-1] == "labels.csv" and len(names) == 7


@pytest.mark.parametrize("zca, layer_norm", [(False, False), (True, False), (True, True)])
def test_npz_holds_what_is_documented_and_its_recipe_preprocesses_like_the_run(tmp_path, zca,
                                                                               layer_norm):
    run_dir = make_run(tmp_path / "run", channels=3, zca=zca, layer_norm=layer_norm)
    (path,) = export_run(run_dir, "npz", tmp_path / "out")
    stored = np.load(path)
    expected_keys = set(NPZ_KEYS) if zca else {k for k in NPZ_KEYS if "zca_" not in k}
    assert set(stored.files) == expected_keys
    distilled = load_distilled(run_dir)
    assert np.array_equal(stored["images"], distilled.images.numpy())
    assert np.array_equal(stored["labels"], distilled.labels.numpy())
    assert stored["class_names"].tolist() == CLASSES
    assert json.loads(str(stored["meta_json"]))["dataset"] == "cifar10"

    # The recipe of docs/using-a-distilled-set.md, in numpy only.
    def preprocess(x):
        x = (x - stored["preprocessor_mean"][:, None, None]) / stored["preprocessor_std"][:, None,
                                                                                         None]
        if stored["preprocessor_layer_norm"]:
            flat = x.reshape(len(x), -1)
            flat = flat - flat.mean(1, keepdims=True)
            x = (flat / np.linalg.norm(flat, axis=1, keepdims=True)).reshape(x.shape)
        if stored["preprocessor_zca"]:
            flat = x.reshape(len(x), -1) - stored["preprocessor_zca_mean"]
            x = (flat @ stored["preprocessor_zca_whiten"]).reshape(x.shape)
        return x

    real = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(9))
    np.testing.assert_allclose(preprocess(real.numpy()),
                               distilled.preprocessor.transform(real).numpy(), atol=1e-5)


def test_cli_export_and_its_errors(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run", channels=1, zca=False)
    assert main(["export", str(run_dir), "--format", "image-folder", "--out",
                 str(tmp_path / "out")]) == 0  # fmt: skip
    assert "wrote 6 PNG files and labels.csv to" in capsys.readouterr().out
    assert main(["export", str(run_dir), "--format", "npz", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("isa-distill: error: --out ") and "already exists and is not empty" in err
    assert main(["export", str(tmp_path / "nowhere"), "--format", "npz", "--out",
                 str(tmp_path / "o2")]) == 2  # fmt: skip
    assert "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    with pytest.raises(SystemExit):
        main(["export", str(run_dir), "--format", "jpeg", "--out", str(tmp_path / "o3")])
    assert "invalid choice: 'jpeg'" in capsys.readouterr().err


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("format", ["png", "npz"])
def test_a_failed_export_leaves_nothing_and_a_second_try_succeeds(tmp_path, monkeypatch, format):
    run_dir = make_run(tmp_path / "run", channels=1, zca=False)
    out = tmp_path / "out"
    real_save = Image.Image.save
    saved = []

    def disk_full_after_two_images(image, path, *args, **kwargs):
        if len(saved) == 2:
            full_disk()
        saved.append(path)
        return real_save(image, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", disk_full_after_two_images)
    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        export_run(run_dir, format, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no partial folder left
    monkeypatch.undo()
    written = export_run(run_dir, format, out)
    assert written and all(path.is_relative_to(out) and path.is_file() for path in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


def test_long_class_names_are_cut_to_a_valid_file_name():
    [name] = folder_names(["x" * 300])
    assert name == "x" * 200
    [name] = folder_names(["猫" * 100])  # 3 bytes each: cut at a character boundary
    assert name == "猫" * 66 and len(name.encode()) <= 200


def test_an_existing_empty_folder_is_filled_in_place(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path / "run", channels=1, zca=False)
    out = tmp_path / "here"
    out.mkdir()
    monkeypatch.chdir(out)  # `--out .`: the working directory itself stays
    written = export_run(run_dir, "npz", ".")
    assert written == [out / NPZ_FILE] and (out / NPZ_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "run"]
