"""Multi-formation: the exact tiling, its layout and gradient, the run format and evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from isa_distill import cli
from isa_distill import evaluate as evaluate_module
from isa_distill.distill import distill
from isa_distill.formation import check_formation, decode, decode_labels, encode_mosaic
from isa_distill.plots import pixel_grid
from isa_distill.runs import META, RunDamagedError, load_distilled

pytestmark = pytest.mark.usefixtures("single_thread")


def quarters(values: list[list[float]], size: int = 4) -> torch.Tensor:
    """One 1-channel image per row of ``values``: its four quarters constant, in the order
    top-left, top-right, bottom-left, bottom-right."""
    images = torch.zeros(len(values), 1, size, size)
    half = size // 2
    for k, (a, b, c, d) in enumerate(values):
        images[k, 0, :half, :half], images[k, 0, :half, half:] = a, b
        images[k, 0, half:, :half], images[k, 0, half:, half:] = c, d
    return images


def test_f2_decoding_is_the_exact_tiling_in_image_major_order():
    stored = quarters([[1, 2, 3, 4], [5, 6, 7, 8]])
    decoded = decode(stored, 2)
    assert decoded.shape == (8, 1, 4, 4)
    # Decoded image k * 4 + i * 2 + j is tile (row i, column j) of stored image k, upsampled:
    # a constant quarter stays constant.
    for k in range(2):
        for t in range(4):
            assert torch.equal(decoded[k * 4 + t], torch.full((1, 4, 4), float(4 * k + t + 1)))


def test_a_tile_is_upsampled_bilinearly_with_half_pixel_centres():
    # Tile [[0, 1], [2, 3]] of a 4x4 image, to 4x4 with align_corners=False: source coordinate
    # (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1] -> 0, 0.25, 0.75, 1.
    stored = torch.zeros(1, 1, 4, 4)
    stored[0, 0, :2, :2] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    weights = torch.tensor([0.0, 0.25, 0.75, 1.0])
    row_profile = weights  # along a row: 0 -> 1
    column_profile = 2 * weights  # along a column: 0 -> 2
    expected = column_profile[:, None] + row_profile[None, :]
    torch.testing.assert_close(decode(stored, 2)[0, 0], expected)


def test_decoding_agrees_with_cropping_each_tile_by_hand():
    stored = torch.randn(3, 2, 12, 12, generator=torch.Generator().manual_seed(0))
    for factor in (2, 3, 4):
        tile = 12 // factor
        expected = torch.cat([
            F.interpolate(stored[k:k + 1, :, i * tile:(i + 1) * tile, j * tile:(j + 1) * tile],
                          size=(12, 12), mode="bilinear", align_corners=False)
            for k in range(3) for i in range(factor) for j in range(factor)
        ])  # fmt: skip
        torch.testing.assert_close(decode(stored, factor), expected, rtol=0, atol=0)
    assert decode(stored, 1) is stored


def test_the_gradient_of_a_decoded_image_reaches_only_its_tile():
    stored = torch.randn(2, 1, 8, 8, requires_grad=True)
    decode(stored, 2)[4 + 3].sum().backward()  # stored image 1, bottom-right tile
    grad = stored.grad
    assert grad[0].abs().sum() == 0
    assert grad[1, 0, 4:, 4:].abs().min() > 0
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[4:, 4:] = False
    assert grad[1, 0][mask].abs().sum() == 0


def test_labels_are_shared_by_the_tiles_of_a_stored_image():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(decode_labels(labels, 2), labels.repeat_interleave(4, dim=0))
    assert decode_labels(labels, 1) is labels


def test_mosaics_place_shrunk_images_where_decoding_finds_them():
    images = torch.arange(8 * 16, dtype=torch.float32).reshape(8, 1, 4, 4)
    mosaic = encode_mosaic(images, 2)
    assert mosaic.shape == (2, 1, 4, 4)
    shrunk = F.avg_pool2d(images, 2)
    for k in range(2):
        for i in range(2):
            for j in range(2):
                tile = mosaic[k, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                assert torch.equal(tile, shrunk[4 * k + 2 * i + j])
    # Constant images survive the round trip exactly.
    flat = torch.arange(4.0).repeat_interleave(16).reshape(4, 1, 4, 4)
    assert torch.equal(decode(encode_mosaic(flat, 2), 2), flat)


@pytest.mark.parametrize(("factor", "size", "message"), [
    (0, 8, "formation must be a positive int, got 0"),
    (True, 8, "formation must be a positive int"),
    (3, 8, "formation 3 does not divide the image size 8.*1, 2, 4, 8"),
])  # fmt: skip
def test_bad_factors_name_formation(factor, size, message):
    with pytest.raises(ValueError, match=message):
        check_formation(factor, size)


def test_distill_refuses_a_formation_that_does_not_divide_the_images(tiny_digits):
    with pytest.raises(ValueError, match="formation 3 does not divide the image size 8"):
        distill(tiny_digits, tiny_config(formation=3), progress=False)
    with pytest.raises(ValueError, match=r"ipc=6 is too large with formation 2"):
        distill(tiny_digits, tiny_config(ipc=6, formation=2), progress=False)


@pytest.fixture(scope="module")
def f2_run(tiny_digits, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("formation") / "run"
    result = distill(tiny_digits, tiny_config(steps=3, formation=2), run_dir=run_dir,
                     progress=False)
    return run_dir, result


def test_an_f2_set_round_trips_through_the_run_format(f2_run):
    run_dir, result = f2_run
    loaded = load_distilled(run_dir)
    assert loaded.meta["formation"] == 2 and loaded.formation == 2
    assert loaded.images.shape == (2 * 10, 1, 8, 8)  # stored: IPC per class
    assert torch.equal(loaded.images, result.images)
    assert loaded.training_images.shape == (2 * 4 * 10, 1, 8, 8)  # decoded: IPC x F^2
    assert torch.equal(loaded.training_images, decode(result.images, 2))
    assert torch.equal(loaded.training_labels, result.labels.repeat_interleave(4, dim=0))
    assert torch.equal(result.training_images, loaded.training_images)
    # Each class block of the decoded set holds that class's IPC x 4 images.
    classes = loaded.training_labels.argmax(1)
    assert torch.equal(classes, torch.arange(10).repeat_interleave(8))
    grid, columns = pixel_grid(loaded)
    assert grid.shape[:2] == (10, 8) and columns == 8


def test_a_formation_the_image_cannot_take_is_damage(f2_run, tmp_path):
    import json
    import shutil

    run_dir, _ = f2_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    meta = json.loads((copy / META).read_text())
    meta["formation"] = 3
    (copy / META).write_text(json.dumps(meta))
    with pytest.raises(RunDamagedError, match="formation 3 does not divide the image size 8"):
        load_distilled(copy)


def test_evaluation_trains_on_ipc_times_four_images_per_class(f2_run, monkeypatch, capsys):
    run_dir, _ = f2_run
    sizes = []
    real = evaluate_module.evaluate_set

    def spy(images, labels, **options):
        sizes.append((len(images), tuple(torch.bincount(labels.argmax(1) if labels.ndim == 2
                                                       else labels, minlength=10).tolist())))
        return real(images, labels, **options)

    monkeypatch.setattr(evaluate_module, "evaluate_set", spy)
    assert cli.main(["evaluate", str(run_dir), "--eval-models", "1", "--eval-steps", "2",
                     "--no-full-data", "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert sizes[0] == (80, (8,) * 10)  # the distilled set: 2 x 4 decoded images per class
    assert "formation 2x2" in out
    distilled_row = next(line for line in out.splitlines() if line.strip().startswith("distilled"))
    assert " 80 " in distilled_row
