"""isa-distill import: small files written here in each project's format, converted into runs
whose recorded preprocessing is checked against an independent implementation of the source's."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest
import torch

from isa_distill import load_distilled
from isa_distill.cli import main
from isa_distill.data import load_dataset
from isa_distill.importers import DC_STATS, FREPO_STATS, ImportFormatError, import_set
from isa_distill.runs import META

pytestmark = pytest.mark.usefixtures("single_thread")
RNG = np.random.default_rng(0)
IPC = 2


def write_idx(path, array) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)  # fmt: skip
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    """A small Fashion-MNIST in IDX files: 200 train and 50 test images of 10 classes."""
    folder = tmp_path_factory.mktemp("data") / "fashion-mnist"
    folder.mkdir()
    for split, n in (("train", 200), ("t10k", 50)):
        # Smooth-ish images (a random low-resolution pattern, upsampled) so that ZCA has structure.
        low = RNG.integers(0, 256, (n, 7, 7))
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", np.kron(low, np.ones((4, 4))))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """A small CIFAR-10 (20 images per batch file)."""
    folder = tmp_path_factory.mktemp("data") / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": RNG.integers(0, 256, (20, 3072)).astype(np.uint8),
                 b"labels": [i % 10 for i in range(20)]}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


def real_pixels(dataset, root, *, shuffle: bool = False):
    """IPC real train images per class (class by class, or shuffled) and their labels."""
    train = load_dataset(dataset, root, val_size=0).train
    rows = torch.cat([torch.nonzero(train.labels == k).flatten()[:IPC] for k in range(10)])
    if shuffle:
        rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))]
    return train.images[rows], train.labels[rows], train.images


def normalize(pixels, mean, std):
    mean, std = torch.as_tensor(mean), torch.as_tensor(std)
    return (pixels - mean[:, None, None]) / std[:, None, None]


def zca_matrix(flat, ridge, *, relative, center, unbiased=False):
    """W = U (s + r)^-1/2 U^T of the (centred) covariance, in float64, written from the
    sources' code (kornia's zca_mean; KIP's and FRePo's get_whitening_transform)."""
    flat = flat.double()
    mean = flat.mean(0) if center else torch.zeros(flat.shape[1], dtype=torch.float64)
    centred = flat - mean
    cov = centred.T @ centred / (len(flat) - 1 if unbiased else len(flat))
    r = ridge * torch.trace(cov) / cov.shape[0] if relative else ridge
    u, s, _ = torch.linalg.svd(cov + r * torch.eye(cov.shape[0], dtype=torch.float64))
    return (u * s.rsqrt()) @ u.T, mean


def layer_norm(flat):
    centred = flat - flat.mean(1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True)


def check_recorded_preprocessing(run_dir, published, pixels, test_pixels, expected_test, atol):
    """The run maps real images the way the source did: its stored images are the published
    ones (class by class), and the test images come out as the source would feed them."""
    run = load_distilled(run_dir)
    assert torch.equal(run.images, published)
    got = run.preprocessor.transform(test_pixels)
    torch.testing.assert_close(got, expected_test.float(), atol=atol, rtol=0)
    torch.testing.assert_close(run.preprocessor.transform(pixels), published, atol=atol, rtol=0)
    return run


# ----------------------------------------------------------------------------- each source


def test_dc_result_file(tmp_path, cifar_root):
    pixels, labels, train = real_pixels("cifar10", cifar_root)
    mean, std = DC_STATS["cifar10"]
    images = normalize(pixels, mean, std)
    path = tmp_path / "res_DC_CIFAR10_ConvNet_2ipc.pt"
    accuracies = {"ConvNet": [np.float64(0.31), np.float64(0.29)]}  # as DC saves them
    torch.save({"data": [[torch.randn_like(images), labels], [images, labels]],
                "accs_all_exps": accuracies}, path)  # fmt: skip
    run = import_set("dc", path, tmp_path / "run", dataset="cifar10", data_root=cifar_root,
                     experiment=1)  # fmt: skip
    test = load_dataset("cifar10", cifar_root).test.images[:8]
    loaded = check_recorded_preprocessing(run.path, images, pixels, test,
                                          normalize(test, mean, std), atol=1e-5)  # fmt: skip
    assert torch.equal(loaded.labels, labels)
    torch.testing.assert_close(loaded.pixel_images, pixels, atol=1e-5, rtol=0)
    source = json.loads((run.path / META).read_text())["source"]
    assert source["format"] == "dc" and source["experiment"] == 1
    assert source["experiments_in_file"] == 2 and len(source["file_sha256"]) == 64
    assert loaded.meta["ipc"] == IPC and loaded.meta["dataset"] == "cifar10"


@pytest.mark.parametrize("zca", [False, True])
def test_mtt_images_and_labels(tmp_path, fashion_root, zca):
    pixels, labels, train = real_pixels("fashion-mnist", fashion_root, shuffle=True)
    test = load_dataset("fashion-mnist", fashion_root).test.images[:8]
    if zca:  # kornia's ZCAWhitening(eps=0.1) on raw pixels: centred, unbiased covariance
        w, mu = zca_matrix(train.flatten(1), 0.1, relative=False, center=True, unbiased=True)

        def source(x):
            return ((x.flatten(1).double() - mu) @ w).reshape(x.shape)
    else:
        mean, std = DC_STATS["fashion-mnist"]

        def source(x):
            return normalize(x, mean, std)
    images = source(pixels).float()
    torch.save(images, tmp_path / "images_best.pt")
    torch.save(labels, tmp_path / "labels_best.pt")
    run = import_set("mtt", tmp_path / "images_best.pt", tmp_path / "run",
                     dataset="fashion-mnist", data_root=fashion_root, zca=zca)  # fmt: skip
    order = torch.sort(labels, stable=True).indices  # the run stores the set class by class
    # kornia divides by N - 1 where isa-distill divides by N (200 images here): W differs by
    # about 1 / (2N) relative, which the tolerance covers.
    loaded = check_recorded_preprocessing(run.path, images[order], pixels[order], test,
                                          source(test), atol=1e-2 if zca else 1e-5)  # fmt: skip
    assert torch.equal(loaded.labels, labels[order])


def test_frepo_npz(tmp_path, fashion_root):
    pixels, labels, train = real_pixels("fashion-mnist", fashion_root)
    mean, std = FREPO_STATS["fashion-mnist"]
    w, mu = zca_matrix(normalize(train, mean, std).flatten(1), 0.1, relative=True, center=True)

    def source(x):
        return ((normalize(x, mean, std).flatten(1).double() - mu) @ w).reshape(x.shape).float()

    soft = torch.randn(len(pixels), 10, generator=torch.Generator().manual_seed(1)) * 0.1
    soft[torch.arange(len(pixels)), labels] += 1.0  # learned labels whose argmax is the class
    nhwc = source(pixels).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "step500000.npz", image=nhwc, label=soft.numpy())
    run = import_set("frepo", tmp_path / "step500000.npz", tmp_path / "run",
                     dataset="fashion-mnist", data_root=fashion_root, zca=True)  # fmt: skip
    test = load_dataset("fashion-mnist", fashion_root).test.images[:8]
    loaded = check_recorded_preprocessing(run.path, source(pixels), pixels, test, source(test),
                                          atol=1e-4)  # fmt: skip
    assert torch.equal(loaded.labels, soft)  # learned labels kept as published


def test_kip_npz_with_layer_norm_and_uncentred_zca(tmp_path, fashion_root):
    pixels, labels, train = real_pixels("fashion-mnist", fashion_root)
    mean = train.mean(dim=(0, 2, 3))
    std = train.std(dim=(0, 2, 3), correction=0)
    w, _ = zca_matrix(layer_norm(normalize(train, mean, std).flatten(1)), 0.05, relative=True,
                      center=False)  # fmt: skip

    def source(x):
        return (layer_norm(normalize(x, mean, std).flatten(1)).double() @ w).reshape(
            x.shape).float()  # fmt: skip

    one_hot = torch.nn.functional.one_hot(labels, 10).float() - 0.1
    np.savez(tmp_path / "kip.npz", images=source(pixels).permute(0, 2, 3, 1).numpy(),
             labels=one_hot.numpy())  # fmt: skip
    run = import_set("kip", tmp_path / "kip.npz", tmp_path / "run", dataset="fashion-mnist",
                     data_root=fashion_root, zca=True, zca_reg=0.05)  # fmt: skip
    test = load_dataset("fashion-mnist", fashion_root).test.images[:8]
    loaded = check_recorded_preprocessing(run.path, source(pixels), pixels, test, source(test),
                                          atol=1e-4)  # fmt: skip
    assert loaded.preprocessor.layer_norm and loaded.meta["preprocessing"]["layer_norm"]
    # Pictures: the inverse restores the images up to each one's mean and norm.
    correlation = torch.corrcoef(torch.stack([loaded.pixel_images[0].flatten(),
                                              pixels[0].flatten()]))[0, 1]  # fmt: skip
    assert correlation > 0.999


# ----------------------------------------------------------------------------- the command


def test_an_imported_set_is_evaluated_shown_exported_but_not_resumed(tmp_path, cifar_root,
                                                                     capsys):
    pixels, labels, _ = real_pixels("cifar10", cifar_root)
    mean, std = DC_STATS["cifar10"]
    path = tmp_path / "res.pt"
    torch.save({"data": [[normalize(pixels, mean, std), labels]]}, path)
    run_dir = tmp_path / "dc-run"
    assert main(["import", "--from", "dc", str(path), str(run_dir), "--dataset", "cifar10",
                 "--data-root", str(cifar_root)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "imported 20 cifar10 images (IPC 2) distilled by DC/DSA/DM" in out
    assert "isa-distill evaluate" in out
    assert main(["evaluate", str(run_dir), "--eval-models", "1", "--eval-steps", "1", "--quiet",
                 "--no-full-data"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "distilled (DC/DSA/DM, imported)" in out and "random subset" in out
    assert main(["show", str(run_dir)]) == 0
    assert "DC/DSA/DM (imported from" in capsys.readouterr().out
    assert main(["export", str(run_dir), "--format", "image-folder", "--out",
                 str(tmp_path / "pictures")]) == 0  # fmt: skip
    assert len(list((tmp_path / "pictures" / "class3").iterdir())) == IPC
    assert main(["cross-arch", str(run_dir), "--architectures", "Conv-NN", "--seeds", "0",
                 "--eval-models", "1", "--eval-steps", "1", "--no-random-baseline", "--quiet",
                 "--out", str(tmp_path / "cross")]) == 0  # fmt: skip
    assert (tmp_path / "cross" / "table.md").is_file()
    capsys.readouterr()
    assert main(["distill", "--resume", "--run-dir", str(run_dir)]) == 2
    assert "imported from DC/DSA/DM: there is no distillation to resume" in capsys.readouterr().err


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("isa-distill: error: "), lines
    return lines[0]


def test_bad_files_are_one_line_errors(tmp_path, cifar_root, fashion_root, capsys):
    def run(*args):
        return main(["import", *args, str(tmp_path / "run"), "--data-root", str(cifar_root)])

    pixels, labels, _ = real_pixels("cifar10", cifar_root)
    torch.save({"data": [[pixels[:, :, :28, :28], labels]]}, tmp_path / "small.pt")
    assert run("--from", "dc", str(tmp_path / "small.pt"), "--dataset", "cifar10") == 2
    assert "are not 3x32x32 images" in one_error_line(capsys)
    torch.save({"data": [[pixels[:-1], labels[:-1]]]}, tmp_path / "uneven.pt")
    assert run("--from", "dc", str(tmp_path / "uneven.pt"), "--dataset", "cifar10") == 2
    assert "the same number of images per class" in one_error_line(capsys)
    torch.save({"images": pixels}, tmp_path / "dict.pt")
    assert run("--from", "dc", str(tmp_path / "dict.pt"), "--dataset", "cifar10") == 2
    assert "expected a dict with a non-empty 'data' list" in one_error_line(capsys)
    assert run("--from", "dc", str(tmp_path / "small.pt"), "--dataset", "cifar10",
               "--experiment", "3") == 2  # fmt: skip
    assert "--experiment 3 does not exist" in one_error_line(capsys)
    np.savez(tmp_path / "other.npz", x=pixels.numpy(), y=labels.numpy())
    assert run("--from", "kip", str(tmp_path / "other.npz"), "--dataset", "cifar10") == 2
    assert "has the arrays ['x', 'y']; a KIP file has 'images' and 'labels'" in (
        one_error_line(capsys))
    torch.save(pixels, tmp_path / "images_best.pt")
    assert run("--from", "mtt", str(tmp_path / "images_best.pt"), "--dataset", "cifar10") == 2
    assert "labels_best.pt not found" in one_error_line(capsys)
    torch.save(labels, tmp_path / "labels_best.pt")
    assert run("--from", "mtt", str(tmp_path / "images_best.pt"), "--dataset", "cifar10") == 2
    assert "pass --zca if it was distilled with --zca" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def write_damaged_files(tmp_path) -> None:
    """Files a download can leave behind: empty, cut in half, or of the other kind."""
    torch.save({"data": [[torch.zeros(10, 3, 32, 32), torch.arange(10)]]}, tmp_path / "whole.pt")
    np.savez(tmp_path / "whole.npz", images=np.zeros((10, 32, 32, 3)), labels=np.arange(10))
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "empty").write_bytes(b"")
    for name in ("whole.pt", "whole.npz"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"half-{name}").write_bytes(data[: len(data) // 2])


# file -> what the one-line error says, for the torch.load sources and the numpy.load ones
TORCH_FILE_ERRORS = {
    "empty": "with torch.load(weights_only=True): EOFError (the file is empty or cut short)",
    "half-whole.pt": "with torch.load(weights_only=True): ",
    "whole.npz": "with torch.load(weights_only=True): ",
    "single.npy": "with torch.load(weights_only=True): ",
}
NPZ_FILE_ERRORS = {
    "empty": "with numpy.load as an .npz archive: No data left in file (the file is empty",
    "half-whole.npz": "with numpy.load as an .npz archive: File is not a zip file",
    "single.npy": "with numpy.load as an .npz archive: it is a single .npy array",
}


@pytest.mark.parametrize("source", ["dc", "mtt", "kip", "frepo"])
def test_damaged_or_foreign_files_are_one_line_errors(tmp_path, source, capsys):
    write_damaged_files(tmp_path)
    errors = NPZ_FILE_ERRORS if source in ("kip", "frepo") else TORCH_FILE_ERRORS
    for name, message in errors.items():
        path = tmp_path / name
        args = ["import", "--from", source, str(path), str(tmp_path / "run"), "--dataset",
                "cifar10", "--data-root", str(tmp_path / "no-data-here")]
        if source == "mtt":
            args += ["--labels", str(path), "--zca"]
        assert main(args) == 2, name
        assert f"cannot read {path} {message}" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path, cifar_root, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"data": [[Payload(str(marker)), 0]]}, path)
    assert main(["import", "--from", "dc", str(path), str(tmp_path / "run"), "--dataset",
                 "cifar10", "--data-root", str(cifar_root)]) == 2  # fmt: skip
    assert "weights_only=True" in one_error_line(capsys)
    assert not marker.exists()


class Payload:
    """Unpickling this would create a file: a stand-in for code in a downloaded pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_an_existing_run_directory_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    np.savez(tmp_path / "kip.npz", images=np.zeros((10, 28, 28, 1)), labels=np.eye(10))
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        import_set("kip", tmp_path / "kip.npz", tmp_path / "run", dataset="fashion-mnist",
                   data_root=tmp_path / "no-data-here")  # fmt: skip
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    with pytest.raises(ImportFormatError, match="is not a file"):
        import_set("kip", tmp_path / "missing.npz", tmp_path / "run2", dataset="cifar10")


@pytest.mark.parametrize("options, message", [
    (dict(zca_reg="0.1"), "zca_reg must be a finite positive number or None, got '0.1'"),
    (dict(zca_reg=0.0), "zca_reg must be a finite positive number"),
    (dict(experiment="0"), "experiment must be an int >= 0, got '0'"),
    (dict(zca="no"), "zca must be True, False or None, got 'no'"),
])  # fmt: skip
def test_import_options_of_the_wrong_kind_are_named(tmp_path, options, message):
    np.savez(tmp_path / "kip.npz", images=np.zeros((10, 28, 28, 1)), labels=np.eye(10))
    with pytest.raises(ValueError, match=message):
        import_set("kip", tmp_path / "kip.npz", tmp_path / "run", dataset="fashion-mnist",
                   **options)
    assert not (tmp_path / "run").exists()
