"""Loaders on damaged, hostile or oddly laid-out files: one-line errors naming the file and what
was expected, never a traceback from deeper down (zlib, PIL, numpy, scikit-learn, pathlib)."""

import builtins
import codecs
import errno
import io
import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_loaders import make_cifar10_folder, make_idx_folder, write_idx, write_pngs

from isa_distill.cli import main
from isa_distill.data import DatasetFormatError, DatasetNotFoundError, load_dataset

RNG = np.random.default_rng(1)

# ----------------------------------------------------------------------------- IDX


def test_idx_gz_with_corrupt_deflate_data_is_a_format_error(tmp_path):
    make_idx_folder(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff\x07")  # gzip header, bad block
    with pytest.raises(DatasetFormatError, match="train-images-idx3-ubyte.gz: corrupt"):
        load_dataset("mnist", tmp_path)


def test_idx_shape_too_large_for_int64_is_a_format_error(tmp_path):
    make_idx_folder(tmp_path, compress=False)
    header = bytes([0, 0, 0x08, 4]) + (65536).to_bytes(4, "big") * 4  # 2**64 bytes, none given
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header)
    with pytest.raises(DatasetFormatError, match=r"declares shape .*\(18446744073709551616 bytes"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize(("name", "shape", "message"), [
    ("train-images-idx3-ubyte", (60, 28, 20), "train-images-idx3-ubyte holds 28x20 images"),
    ("t10k-images-idx3-ubyte", (20, 14, 14), "t10k-images-idx3-ubyte holds 14x14 images but"),
])  # fmt: skip
def test_idx_images_not_square_or_not_the_train_size_are_refused(tmp_path, name, shape, message):
    make_idx_folder(tmp_path, compress=False)
    write_idx(tmp_path / name, RNG.integers(0, 256, shape), compress=False)
    with pytest.raises(DatasetFormatError, match=message):
        load_dataset("mnist", tmp_path)


def test_empty_idx_train_split_is_refused_naming_the_file(tmp_path):
    make_idx_folder(tmp_path, n_train=0)
    with pytest.raises(DatasetFormatError, match="train split is empty: .*train-images-idx3"):
        load_dataset("mnist", tmp_path)


def test_class_without_train_images_is_refused_naming_it(tmp_path):
    make_idx_folder(tmp_path, n_train=9)  # labels 0..8: no image of class 9
    with pytest.raises(DatasetFormatError, match="train split of mnist .* no images of class '9'"):
        load_dataset("mnist", tmp_path)


def test_class_with_one_train_image_says_the_hold_out_needs_two(tmp_path):
    make_idx_folder(tmp_path, n_train=19)  # one image of class 9
    expected = "class '9' has only 1 image .* validation hold-out needs at least 2 images per class"
    with pytest.raises(DatasetFormatError, match=expected):
        load_dataset("mnist", tmp_path)
    assert len(load_dataset("mnist", tmp_path, val_size=0).train) == 19  # no hold-out: fine


# ----------------------------------------------------------------------------- CIFAR


def rewrite_batch(folder, name, **entries):
    batch = pickle.loads((folder / name).read_bytes())
    batch.update({key.encode(): value for key, value in entries.items()})
    (folder / name).write_bytes(pickle.dumps(batch))


@pytest.mark.parametrize(
    ("labels", "found"),
    [
        (None, "got None"),
        (3, "got 3"),
        ([2**70] * 20, "got 1180591620717411303424"),
        ([0.7] * 20, "got 0.7"),  # was silently truncated to class 0
        (["cat"] * 20, "got 'cat'"),
        ([1, 2], "got 2 labels for 20 images"),
        ([12] * 20, "got 12"),
    ],
)
def test_cifar_labels_that_are_not_class_indices_are_refused_naming_the_batch(
    tmp_path, labels, found
):
    make_cifar10_folder(tmp_path)
    rewrite_batch(tmp_path, "data_batch_2", labels=labels)
    expected = rf"CIFAR batch data_batch_2: 'labels' must be .* in \[0, 10\), {found}"
    with pytest.raises(DatasetFormatError, match=expected):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(
    ("names", "found"),
    [(5, "got 5"), (None, "got None"), ([b"\xff"] * 10, "not UTF-8")],
)
def test_cifar_meta_without_a_list_of_class_names_is_refused(tmp_path, names, found):
    make_cifar10_folder(tmp_path)
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    with pytest.raises(DatasetFormatError, match=f"CIFAR meta file batches.meta: .*{found}"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (RNG.random((20, 3072)), "dtype float64"),  # pixels in [0, 1] were divided by 255 again
        (RNG.integers(0, 256, (20, 3072)).astype(np.uint16), "dtype uint16"),
        ([["x"] * 3072] * 20, "list of strings"),
        ([[1] * 3072] * 19 + [[1] * 5], "ragged list"),
        ((2 * RNG.integers(0, 256, (20, 3072))).tolist(), r"list of ints in \[0, 5"),
    ],
)
def test_cifar_data_that_is_not_uint8_pixels_is_refused(tmp_path, data, found):
    make_cifar10_folder(tmp_path)
    rewrite_batch(tmp_path, "data_batch_2", data=data)
    expected = rf"CIFAR batch data_batch_2: 'data' must be uint8 pixels .*got .*{found}"
    with pytest.raises(DatasetFormatError, match=expected):
        load_dataset("cifar10", tmp_path)


def test_cifar_data_as_a_list_of_byte_values_is_read(tmp_path):
    batches = make_cifar10_folder(tmp_path)
    pixels = batches["test_batch"][b"data"]
    rewrite_batch(tmp_path, "test_batch", data=pixels.tolist())
    test = load_dataset("cifar10", tmp_path, val_size=0).test
    assert torch.equal(test.images, torch.from_numpy(pixels / np.float32(255)).view(-1, 3, 32, 32))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_cifar_batches_pickled_with_other_protocols_load_alike(tmp_path, protocol):
    batches = make_cifar10_folder(tmp_path / "4")  # pickle's default protocol on Python < 3.14
    other = tmp_path / str(protocol)
    other.mkdir()
    for name, batch in batches.items():
        (other / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    expected = load_dataset("cifar10", tmp_path / "4", val_size=0)
    loaded = load_dataset("cifar10", other, val_size=0)
    assert torch.equal(loaded.train.images, expected.train.images)
    assert torch.equal(loaded.train.labels, expected.train.labels)


class ZlibEncode:
    """Pickles as a call of _codecs.encode, which protocol 2 uses (with latin1) to store bytes."""

    def __reduce__(self):
        return codecs.encode, ("x", "zlib")


def test_cifar_pickle_calling_a_codec_other_than_latin1_is_refused(tmp_path):
    make_cifar10_folder(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": ZlibEncode()}, protocol=2))
    with pytest.raises(DatasetFormatError, match="test_batch: refusing _codecs.encode with 'zlib'"):
        load_dataset("cifar10", tmp_path)


def test_empty_cifar_test_split_is_refused(tmp_path):
    make_cifar10_folder(tmp_path)
    rewrite_batch(tmp_path, "test_batch", data=np.zeros((0, 3072), np.uint8), labels=[])
    with pytest.raises(DatasetFormatError, match="test split is empty: CIFAR batches test_batch"):
        load_dataset("cifar10", tmp_path)


def make_cifar10_archive(tmp_path, mode):
    make_cifar10_folder(tmp_path / "cifar-10-batches-py")
    archive = tmp_path / ("cifar.tar.gz" if mode == "w:gz" else "cifar.tar")
    with tarfile.open(archive, mode) as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_cifar_archive_damaged_in_the_middle_says_so(tmp_path):
    archive = make_cifar10_archive(tmp_path, "w:gz")
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 3 : len(raw) // 3 + 16] = b"\xff" * 16
    archive.write_bytes(raw)
    with pytest.raises(DatasetFormatError, match="cifar.tar.gz is damaged or truncated"):
        load_dataset("cifar10", archive)


def test_cifar_tar_with_a_damaged_member_header_says_so(tmp_path):
    # tarfile stops listing at a bad header without a word: the members after it looked absent.
    archive = make_cifar10_archive(tmp_path, "w")
    with tarfile.open(archive) as tar:
        offset = tar.getmembers()[3].offset
    raw = bytearray(archive.read_bytes())
    raw[offset : offset + 512] = b"\xff" * 512
    archive.write_bytes(raw)
    with pytest.raises(DatasetFormatError, match="cifar.tar is damaged or truncated"):
        load_dataset("cifar10", archive)


# ----------------------------------------------------------------------------- image folders


def png_declaring_size(width, height):
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    raw = bytearray(buffer.getvalue())
    raw[16:24] = struct.pack(">II", width, height)  # IHDR, then its CRC
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def test_image_declaring_a_huge_size_is_a_format_error_naming_it(tmp_path):
    write_pngs(tmp_path, ["a", "b"], 5)
    (tmp_path / "a" / "bomb.png").write_bytes(png_declaring_size(20000, 20000))
    with pytest.raises(DatasetFormatError, match="cannot read image .*bomb.png: .*pixels"):
        load_dataset("image-folder", tmp_path)


def test_malformed_ppm_is_a_format_error_naming_it(tmp_path):
    write_pngs(tmp_path, ["a", "b"], 5)
    (tmp_path / "a" / "bad.ppm").write_bytes(b"P6\n16`16\n255\n" + bytes(100))
    with pytest.raises(DatasetFormatError, match="cannot read image .*bad.ppm: "):
        load_dataset("image-folder", tmp_path)


def test_class_folder_name_that_is_not_utf8_is_refused_printably(tmp_path):
    write_pngs(tmp_path, ["a"], 10)
    undecodable = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    write_pngs(undecodable.parent, [undecodable.name], 10)
    with pytest.raises(DatasetFormatError, match=r"class folder .*caf\\xe9 .*rename it") as info:
        load_dataset("image-folder", tmp_path, val_size=0)
    str(info.value).encode("utf-8")  # no lone surrogates: the CLI can print it


def test_empty_class_folder_is_refused_naming_it(tmp_path):
    write_pngs(tmp_path, ["a", "b"], 10)
    (tmp_path / "c").mkdir()
    with pytest.raises(DatasetFormatError, match=f"class folder {tmp_path / 'c'} holds no images"):
        load_dataset("image-folder", tmp_path, val_size=0)


def test_class_called_train_among_other_classes_is_ambiguous(tmp_path):
    write_pngs(tmp_path, ["train", "car", "dog"], 5)
    with pytest.raises(DatasetFormatError, match="ambiguous: it holds train/ and also car/, dog/"):
        load_dataset("image-folder", tmp_path)


def test_image_folder_root_that_is_a_file_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("not a folder")
    with pytest.raises(DatasetNotFoundError, match="notes.txt is a file, not a folder"):
        load_dataset("image-folder", tmp_path / "notes.txt")


def test_image_folder_class_with_two_images_is_too_small_for_both_hold_outs(tmp_path):
    write_pngs(tmp_path, ["a", "b"], 2)
    expected = "class 'a' has only 2 images .* carved test and validation hold-outs need at least 3"
    with pytest.raises(DatasetFormatError, match=expected):
        load_dataset("image-folder", tmp_path)


# ----------------------------------------------------------------------------- roots


@pytest.mark.parametrize("root", ["~nosuchuser/d", "/tmp/" + "x" * 300 + "/d"])
def test_unusable_data_root_is_refused_naming_it(root):
    with pytest.raises(DatasetNotFoundError, match=f"data root {root}: "):
        load_dataset("mnist", root)


def test_unusable_isa_distill_data_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv("ISA_DISTILL_DATA", "~nosuchuser/d")
    with pytest.raises(DatasetNotFoundError, match="ISA_DISTILL_DATA ~nosuchuser/d: cannot expand"):
        load_dataset("cifar10")


def test_info_survives_an_unusable_isa_distill_data(capsys, monkeypatch):
    monkeypatch.setenv("ISA_DISTILL_DATA", "~nosuchuser/d")
    assert main(["info"]) == 0
    assert "no such user" in capsys.readouterr().out


# ----------------------------------------------------------------------------- permissions


@pytest.fixture
def deny(monkeypatch):
    """``deny(path)`` makes ``path`` unreadable as ``chmod 000`` does, even for root (whom chmod
    does not stop): it cannot be listed or opened, and nothing below it can be looked up."""
    denied = []

    def is_denied(path, *, itself):
        if isinstance(path, int):  # a file descriptor
            return False
        path = Path(os.fsdecode(path)).absolute()
        return any(path != d and path.is_relative_to(d) or itself and path == d for d in denied)

    def guarded(function, *, itself):
        def call(path, *args, **kwargs):
            if is_denied(path, itself=itself):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return function(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "stat", guarded(os.stat, itself=False))
    for module, name in ((os, "scandir"), (os, "listdir"), (io, "open"), (builtins, "open")):
        monkeypatch.setattr(module, name, guarded(getattr(module, name), itself=True))
    return lambda path: denied.append(Path(path).absolute())


def test_unreadable_image_folder_is_a_format_error(tmp_path, deny):
    write_pngs(tmp_path, ["a", "b"], 5)
    deny(tmp_path)
    with pytest.raises(DatasetFormatError, match=f"cannot read {tmp_path}: permission denied"):
        load_dataset("image-folder", tmp_path)


def test_unreadable_class_folder_does_not_look_empty(tmp_path, deny):
    write_pngs(tmp_path, ["a", "b"], 10)
    deny(tmp_path / "b")
    with pytest.raises(DatasetFormatError, match=f"cannot read {tmp_path / 'b'}: permission"):
        load_dataset("image-folder", tmp_path, val_size=0)


def test_unreadable_cifar_batch_is_a_format_error(tmp_path, deny):
    make_cifar10_folder(tmp_path)
    deny(tmp_path / "data_batch_2")
    with pytest.raises(DatasetFormatError, match="data_batch_2: permission denied"):
        load_dataset("cifar10", tmp_path)


def test_unreadable_mnist_folder_is_a_format_error(tmp_path, deny):
    make_idx_folder(tmp_path / "mnist")
    deny(tmp_path / "mnist")
    with pytest.raises(DatasetFormatError, match="mnist/train-images-idx3-ubyte.gz: permission"):
        load_dataset("mnist", tmp_path / "mnist")
