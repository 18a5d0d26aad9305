"""Loaders on small files written here in the real on-disk formats."""

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from isa_distill.data import (
    KNOWN_DATASETS,
    DatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
    class_balanced_subset,
    load_dataset,
)
from isa_distill.data.splits import Split

RNG = np.random.default_rng(0)


def write_idx(path, array, *, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def make_idx_folder(folder, *, compress=True, n_train=60, n_test=20, size=28):
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, (n, size, size))
        labels = np.arange(n) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, compress=compress)
        arrays[split] = (images, labels)
    return arrays


def cifar_batch(n, num_classes, label_key):
    return {
        b"data": RNG.integers(0, 256, (n, 3072)).astype(np.uint8),
        label_key: [int(i % num_classes) for i in range(n)],
    }


def make_cifar10_folder(folder, per_batch=20):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": cifar_batch(per_batch, 10, b"labels") for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(per_batch, 10, b"labels")
    batches["batches.meta"] = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch))
    return batches


def test_digits_splits_are_disjoint_stratified_and_in_range():
    data = load_dataset("digits", val_size=0.1, seed=3)
    assert (data.num_classes, data.channels, data.image_size) == (10, 1, 8)
    sizes = len(data.train) + len(data.val) + len(data.test)
    assert sizes == 1797
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
        assert 0.0 <= float(split.images.min()) and float(split.images.max()) <= 1.0
        assert torch.bincount(split.labels, minlength=10).min() > 0
    assert float(data.train.images.max()) == 1.0  # 16 grey levels mapped onto [0, 1]


def test_digits_test_split_does_not_depend_on_seed_but_val_does():
    first, second = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(first.test.images, second.test.images)
    assert not torch.equal(first.val.images, second.val.images)
    again = load_dataset("digits", seed=1)
    assert torch.equal(again.val.images, second.val.images)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_loader_reads_gz_and_plain_files(tmp_path, compress):
    arrays = make_idx_folder(tmp_path, compress=compress)
    data = load_dataset("mnist", tmp_path, val_size=10)
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 20)
    assert data.test.images.shape == (20, 1, 28, 28)
    expected = torch.from_numpy(arrays["t10k"][0].astype(np.float32) / 255).unsqueeze(1)
    assert torch.equal(data.test.images, expected)
    assert data.test.labels.tolist() == arrays["t10k"][1].tolist()


def test_fashion_mnist_gets_its_class_names(tmp_path):
    make_idx_folder(tmp_path / "fashion-mnist")
    data = load_dataset("fashion-mnist", tmp_path, val_size=0)
    assert data.class_names[0] == "T-shirt/top" and len(data.val) == 0


def test_truncated_idx_file_is_a_format_error(tmp_path):
    make_idx_folder(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    with gzip.open(path, "wb") as handle:
        handle.write(raw[:-5])
    with pytest.raises(DatasetFormatError, match="declares shape"):
        load_dataset("mnist", tmp_path)


def test_idx_with_wrong_magic_is_a_format_error(tmp_path):
    make_idx_folder(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DatasetFormatError, match="magic"):
        load_dataset("mnist", tmp_path)


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="looked in") as info:
        load_dataset("cifar10", tmp_path)
    assert str(tmp_path) in str(info.value) and "cifar-10-python.tar.gz" in str(info.value)
    assert isinstance(info.value, DatasetError)


def test_missing_idx_dataset_says_which_folder_the_files_go_in(tmp_path, monkeypatch):
    # `isa-distill info` shows the last line only: it must name the folder by itself.
    if Path("/usr/share/datasets/mnist").is_dir():
        pytest.skip("Debian's MNIST is installed: the default location finds it")
    monkeypatch.setenv("ISA_DISTILL_DATA", str(tmp_path / "data"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist")
    assert f"into {tmp_path / 'data' / 'mnist'}" in str(info.value).splitlines()[-1]
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", tmp_path / "elsewhere")
    assert f"into {tmp_path / 'elsewhere'}" in str(info.value).splitlines()[-1]


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match="known datasets") as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in KNOWN_DATASETS)


def test_cifar10_folder_and_archive_agree(tmp_path):
    batches = make_cifar10_folder(tmp_path / "cifar-10-batches-py")
    with tarfile.open(tmp_path / "archive.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_folder = load_dataset("cifar10", tmp_path, val_size=10)
    from_archive = load_dataset("cifar10", tmp_path / "archive.tar.gz", val_size=10)
    assert from_folder.class_names == [f"class{i}" for i in range(10)]
    assert (len(from_folder.train), len(from_folder.test)) == (90, 20)
    assert from_folder.test.images.shape == (20, 3, 32, 32)
    assert torch.equal(from_folder.train.images, from_archive.train.images)
    first = batches["test_batch"][b"data"][0].reshape(3, 32, 32).astype(np.float32) / 255
    assert torch.equal(from_folder.test.images[0], torch.from_numpy(first))


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 200), ("test", 100)):
        batch = cifar_batch(n, 100, b"fine_labels")
        batch[b"coarse_labels"] = [0] * n
        (folder / name).write_bytes(pickle.dumps(batch))
    names = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)]}
    (folder / "meta").write_bytes(pickle.dumps(names))
    data = load_dataset("cifar100", tmp_path, val_size=100)
    assert data.num_classes == 100 and sorted(data.val.labels.tolist()) == list(range(100))


def test_corrupt_cifar_pickle_is_a_format_error(tmp_path):
    make_cifar10_folder(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetFormatError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path):
    make_cifar10_folder(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Split}))
    with pytest.raises(DatasetFormatError, match="refusing"):
        load_dataset("cifar10", tmp_path)


def write_pngs(folder, classes, per_class, size=12, mode="RGB"):
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            pixels = RNG.integers(0, 256, shape).astype(np.uint8)
            Image.fromarray(pixels, mode).save(folder / name / f"{i}.png")


def test_presplit_image_folder_resizes_and_keeps_splits(tmp_path):
    write_pngs(tmp_path / "train", ["cat", "dog"], 6)
    write_pngs(tmp_path / "test", ["cat", "dog"], 2)
    data = load_dataset("image-folder", tmp_path, image_size=8, val_size=2)
    assert data.class_names == ["cat", "dog"]
    assert (len(data.train), len(data.val), len(data.test)) == (10, 2, 4)
    assert data.train.images.shape[1:] == (3, 8, 8) and data.image_size == 8


def test_flat_image_folder_is_split_deterministically(tmp_path):
    write_pngs(tmp_path, ["a", "b", "c"], 10, mode="L")
    first = load_dataset("image-folder", tmp_path, image_size=6, grayscale=True, val_size=3)
    second = load_dataset("image-folder", tmp_path, image_size=6, grayscale=True, val_size=3)
    assert first.channels == 1 and len(first.test) == 6 and len(first.val) == 3
    assert torch.equal(first.test.images, second.test.images)


def test_image_folder_with_an_unreadable_image_is_a_format_error(tmp_path):
    write_pngs(tmp_path, ["a", "b"], 5)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetFormatError, match="broken.png"):
        load_dataset("image-folder", tmp_path)


def test_image_folder_too_small_for_its_hold_outs_says_what_to_do(tmp_path):
    # 10 images per class: a 20% test split leaves 8, too few for a 10% validation split
    # with one image of each of 10 classes (scikit-learn's message named test_size).
    write_pngs(tmp_path, [str(c) for c in range(10)], 10, size=4, mode="L")
    with pytest.raises(DatasetFormatError, match="too few to hold out a stratified validation"):
        load_dataset("image-folder", tmp_path, grayscale=True)
    few = tmp_path / "few"
    write_pngs(few, [str(c) for c in range(10)], 4, size=4, mode="L")
    with pytest.raises(DatasetFormatError, match="stratified test split .*train/, val/ and test/"):
        load_dataset("image-folder", few, grayscale=True)


def test_image_folder_needs_a_root():
    with pytest.raises(DatasetNotFoundError, match="root"):
        load_dataset("image-folder")


def test_image_size_is_rejected_for_fixed_size_datasets():
    with pytest.raises(ValueError, match="image-folder only"):
        load_dataset("digits", image_size=16)


@pytest.mark.parametrize("val_size", [1.5, -1, 10_000])
def test_bad_val_size_is_rejected(val_size):
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("digits", val_size=val_size)


def test_class_balanced_subset_draws_ipc_per_class_reproducibly():
    data = load_dataset("digits")
    subset = class_balanced_subset(data.train, 3, torch.Generator().manual_seed(0))
    again = class_balanced_subset(data.train, 3, torch.Generator().manual_seed(0))
    assert torch.bincount(subset.labels).tolist() == [3] * 10
    assert torch.equal(subset.images, again.images)
    other = class_balanced_subset(data.train, 3, torch.Generator().manual_seed(1))
    assert not torch.equal(subset.images, other.images)


def test_class_balanced_subset_rejects_ipc_above_smallest_class():
    split = Split(torch.zeros(5, 1, 2, 2), torch.tensor([0, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match="ipc=3 exceeds the smallest class"):
        class_balanced_subset(split, 3, torch.Generator())


def test_the_root_to_read_the_data_again_is_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv("ISA_DISTILL_DATA", raising=False)
    assert load_dataset("digits").root is None  # bundled: nothing to record
    write_pngs(tmp_path / "pictures", ["a", "b"], 5)
    data = load_dataset("image-folder", tmp_path / "pictures", val_size=0)
    assert data.root == str((tmp_path / "pictures").resolve())
    make_idx_folder(tmp_path / "home" / "mnist")
    monkeypatch.setenv("ISA_DISTILL_DATA", str(tmp_path / "home"))
    assert load_dataset("mnist", val_size=0).root == str((tmp_path / "home").resolve())
    given = load_dataset("mnist", tmp_path / "home" / "mnist", val_size=0)
    assert given.root == str((tmp_path / "home" / "mnist").resolve())


@pytest.mark.parametrize("seed", [-1, 2**32, 0.5, True])
def test_bad_seed_is_rejected_before_reading_files(seed, tmp_path):
    # A missing dataset would say so; the seed is checked first.
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 4294967295\]"):
        load_dataset("cifar10", tmp_path, seed=seed)


def test_an_image_size_too_large_to_hold_is_refused_before_reading(tmp_path):
    with pytest.raises(ValueError, match="image_size must be at most 1024, got 100000"):
        load_dataset("image-folder", tmp_path / "not-even-there", image_size=100_000)
