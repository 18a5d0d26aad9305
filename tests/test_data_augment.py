"""The evaluation augmentation: shapes, reproducibility, and each op's distribution.

The distribution tests recover every image's random parameter from a constructed image (a
constant, a ramp, a +-1 pattern) and check its range and mean against the official recipe.
Bounds are several standard errors wide, and the seeds are fixed, so they do not flake.
"""

import math

import pytest
import torch

from isa_distill.data.augment import (
    BRIGHTNESS,
    LOG_JITTER,
    MAX_TRANSLATION,
    OPS,
    apply_op,
    augment_batch,
    cutout_side,
)

LARGE = 2000


def batch(channels=3, size=16, n=6, seed=0):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("size", [8, 28, 32])
def test_every_op_keeps_shape_dtype_and_changes_the_batch(op, size):
    x = batch(size=size)
    out = apply_op(op, x, gen())
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert not torch.equal(out, x)


def test_augment_batch_is_reproducible_with_a_seed():
    x = batch()
    outs = [augment_batch(x, gen(7)) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])


def test_different_seeds_give_different_augmentations():
    x = batch()
    outs = {augment_batch(x, gen(s)).sum().item() for s in range(8)}
    assert len(outs) > 1


def is_flip_of_some_images(out, x):
    """True when some images are mirrored and every image is either itself or its mirror."""
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    return bool((same | mirrored).all()) and bool(mirrored.any())


def test_flip_is_never_drawn_when_disabled():
    x = batch()
    for seed in range(30):
        assert not is_flip_of_some_images(augment_batch(x, gen(seed), flip=False), x)


def test_flip_is_drawn_sometimes_when_enabled():
    x = batch()
    assert any(is_flip_of_some_images(augment_batch(x, gen(s)), x) for s in range(30))


def test_flip_mirrors_each_image_with_probability_one_half():
    x = batch(channels=1, size=6, n=LARGE)  # random images: none equals its own mirror
    out = apply_op("flip", x, gen(1))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same ^ mirrored).all())
    # Binomial(2000, 1/2): sd 22.4; +-5 sd.
    assert abs(int(mirrored.sum()) - LARGE // 2) < 5 * math.sqrt(LARGE / 4)


def test_brightness_is_an_additive_delta_within_a_quarter():
    # A constant single-channel image is untouched by contrast and saturation: out = v + delta.
    deltas = []
    for value in (0.0, 5.0):
        x = torch.full((LARGE, 1, 4, 4), value)
        out = apply_op("color_jitter", x, gen(2))
        assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))  # still constant
        deltas.append(out[:, 0, 0, 0] - value)
    # The same seed gives the same delta for both levels: additive, not a factor.
    assert torch.allclose(deltas[0], deltas[1], atol=1e-5)
    delta = deltas[0]
    assert float(delta.abs().max()) <= BRIGHTNESS + 1e-6
    assert float(delta.min()) < -0.95 * BRIGHTNESS and float(delta.max()) > 0.95 * BRIGHTNESS
    sd = 2 * BRIGHTNESS / math.sqrt(12)
    assert abs(float(delta.mean())) < 5 * sd / math.sqrt(LARGE)


def check_log_uniform(log_factors):
    assert float(log_factors.abs().max()) <= LOG_JITTER + 1e-5
    assert float(log_factors.min()) < -0.95 * LOG_JITTER
    assert float(log_factors.max()) > 0.95 * LOG_JITTER
    sd = 2 * LOG_JITTER / math.sqrt(12)
    assert abs(float(log_factors.mean())) < 5 * sd / math.sqrt(len(log_factors))
    # Uniform in log space: a quarter of the draws in each quarter of the interval.
    quarter = ((log_factors + LOG_JITTER) / (0.5 * LOG_JITTER)).floor().clamp(0, 3)
    counts = torch.bincount(quarter.long(), minlength=4).double()
    expected = len(log_factors) / 4
    assert bool(((counts - expected).abs() < 5 * math.sqrt(expected)).all()), counts


def checkerboard(n, channels, size=4):
    """+-1 in a checkerboard: every image has mean 0 and deviations of exactly 1."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pattern = ((rows + cols) % 2 * 2 - 1).float()
    return pattern.expand(n, channels, size, size).clone()


def test_contrast_factor_is_log_uniform_in_a_quarter():
    # One channel: saturation is a no-op; brightness shifts the mean; contrast scales the +-1.
    out = apply_op("color_jitter", checkerboard(LARGE, 1), gen(3))
    contrast = (out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))) / 2
    check_log_uniform(contrast.log())


def test_saturation_factor_is_log_uniform_in_a_quarter():
    # Grey +-1 checkerboard plus a colour offset (-1, 0, +1) per channel. Contrast scales both
    # the grey pattern and the colour offset; saturation scales only the colour offset.
    colour = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    out = apply_op("color_jitter", checkerboard(LARGE, 3) + colour, gen(4))
    grey = out.mean(dim=1)
    contrast = (grey.amax(dim=(1, 2)) - grey.amin(dim=(1, 2))) / 2
    colour_spread = ((out[:, 2] - out[:, 0]) / 2).mean(dim=(1, 2))
    check_log_uniform(contrast.log())
    check_log_uniform((colour_spread / contrast).log())


@pytest.mark.parametrize("op", ["translate", "rotate", "resized_crop"])
def test_geometric_ops_replicate_the_edges(op):
    # Zero fill would darken the border of a constant image; edge replication keeps it.
    x = torch.full((200, 2, 16, 16), 3.0)
    assert torch.allclose(apply_op(op, x, gen(5)), x)


def ramp(n, size=32):
    """Columns 1, 2, ..., size: a horizontal ramp whose left edge is 1, not 0."""
    return torch.arange(1, size + 1, dtype=torch.float32).expand(n, 1, size, size).clone()


def test_translate_shifts_by_continuous_amounts_up_to_an_eighth():
    size, limit = 32, MAX_TRANSLATION * 32
    x = ramp(LARGE, size)
    out = apply_op("translate", x, gen(6))
    # In the middle columns (never sampled past the edge) the output is the ramp shifted.
    middle = slice(int(limit) + 2, size - int(limit) - 2)
    shift = x[..., middle] - out[..., middle]
    per_image = shift[:, 0, size // 2, size // 2]
    assert torch.allclose(shift, per_image.view(-1, 1, 1, 1).expand_as(shift), atol=1e-4)
    assert float(per_image.abs().max()) <= limit + 1e-4
    assert float(per_image.min()) < -0.95 * limit and float(per_image.max()) > 0.95 * limit
    assert abs(float(per_image.mean())) < 5 * (2 * limit / math.sqrt(12)) / math.sqrt(LARGE)
    fraction = per_image - per_image.round()
    assert float((fraction.abs() > 0.1).float().mean()) > 0.7  # sub-pixel, not whole pixels
    # The left column: content moving right replicates the edge value 1; moving left shows
    # the ramp's value further in.
    expected_left = 1 + (-per_image).clamp_min(0)
    assert torch.allclose(out[:, 0, :, 0], expected_left.view(-1, 1).expand(-1, size), atol=1e-4)


def test_rotation_angles_are_uniform_within_fifteen_degrees():
    x = ramp(LARGE)
    out = apply_op("rotate", x, gen(9))[:, 0]
    # Near the centre the output is the ramp rotated: its gradient is (cos a, -sin a).
    along_x = (out[:, 16, 20] - out[:, 16, 12]) / 8
    along_y = (out[:, 20, 16] - out[:, 12, 16]) / 8
    degrees = torch.rad2deg(torch.atan2(-along_y, along_x))
    assert torch.allclose(along_x.square() + along_y.square(), torch.ones(LARGE), atol=1e-3)
    assert float(degrees.abs().max()) <= 15 + 1e-3
    assert float(degrees.min()) < -14 and float(degrees.max()) > 14
    assert abs(float(degrees.mean())) < 5 * (30 / math.sqrt(12)) / math.sqrt(LARGE)


def test_resized_crop_zoom_is_log_uniform_and_the_window_moves_within_its_slack():
    size = 32
    x = ramp(LARGE, size)
    out = apply_op("resized_crop", x, gen(10))[:, 0, size // 2]
    # Central columns never sample past the edge: out = ramp(centre / zoom + shift).
    zoom = 4 / (out[:, 18] - out[:, 14])
    log_zoom = zoom.log()
    assert float(log_zoom.min()) >= math.log(0.8) - 1e-4
    assert float(log_zoom.max()) <= math.log(1.25) + 1e-4
    assert float(log_zoom.min()) < 0.95 * math.log(0.8)
    assert float(log_zoom.max()) > 0.95 * math.log(1.25)
    # The value at the centre (between columns 15 and 16) gives the shift in [-1, 1] units.
    shift = ((out[:, 15] + out[:, 16]) / 2 - 0.5) / (size / 2) - 1
    slack = (1 - 1 / zoom).abs()
    assert bool((shift.abs() <= slack + 1e-4).all())
    # Zooming in and zooming out both move the window up to their slack.
    for side in (zoom > 1.1, zoom < 0.9):
        assert float((shift.abs() / slack)[side].max()) > 0.9


def test_translate_moves_rows_too():
    x = ramp(LARGE).transpose(-1, -2).contiguous()  # a vertical ramp
    out = apply_op("translate", x, gen(7))
    per_image = (x - out)[:, 0, 16, 16]
    assert float(per_image.min()) < -3.5 and float(per_image.max()) > 3.5


@pytest.mark.parametrize("size", [8, 28, 32])
def test_cutout_holes_lie_inside_the_image_and_have_the_right_size(size):
    side = cutout_side(size, size)
    assert side == size // 4
    x = torch.ones(LARGE, 2, size, size)
    out = apply_op("cutout", x, gen(8))
    hole = out[:, 0] == 0
    assert torch.equal(hole, out[:, 1] == 0)  # the same hole in every channel
    assert bool((hole.sum(dim=(1, 2)) == side * side).all())  # never clipped
    rows, cols = hole.any(dim=2), hole.any(dim=1)
    assert bool((rows.sum(1) == side).all()) and bool((cols.sum(1) == side).all())  # a square
    top = rows.float().argmax(1)
    left = cols.float().argmax(1)
    # Every placement is reachable: corners included, nothing beyond them.
    assert int(top.min()) == 0 and int(top.max()) == size - side
    assert int(left.min()) == 0 and int(left.max()) == size - side
    assert torch.equal(out[out != 0], x[out != 0])


def test_unknown_op_is_rejected():
    with pytest.raises(ValueError, match="unknown augmentation"):
        apply_op("mixup", batch(), gen())
