"""The evaluation augmentation: shapes, reproducibility, each op's effect."""

import pytest
import torch

from isa_distill.data.augment import OPS, apply_op, augment_batch


def batch(channels=3, size=16, n=6, seed=0):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("size", [8, 28, 32])
def test_every_op_keeps_shape_dtype_and_changes_the_batch(op, size):
    x = batch(size=size)
    out = apply_op(op, x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert not torch.equal(out, x)


def test_augment_batch_is_reproducible_with_a_seed():
    x = batch()
    outs = [augment_batch(x, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])


def test_different_seeds_give_different_augmentations():
    x = batch()
    outs = {augment_batch(x, torch.Generator().manual_seed(s)).sum().item() for s in range(8)}
    assert len(outs) > 1


def test_flip_is_never_drawn_when_disabled():
    x = batch()
    for seed in range(30):
        out = augment_batch(x, torch.Generator().manual_seed(seed), flip=False)
        assert not torch.equal(out, x.flip(-1))


def test_flip_is_drawn_sometimes_when_enabled():
    x = batch()
    outs = [augment_batch(x, torch.Generator().manual_seed(s)) for s in range(30)]
    assert any(torch.equal(out, x.flip(-1)) for out in outs)


def test_translate_moves_whole_pixels():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 8, 8] = 1.0
    out = apply_op("translate", x, torch.Generator().manual_seed(3))
    assert float(out.sum()) == pytest.approx(1.0) and int((out > 0).sum()) == 1


def test_cutout_zeroes_at_most_one_square_hole():
    x = torch.ones(4, 2, 16, 16)
    out = apply_op("cutout", x, torch.Generator().manual_seed(0))
    zeros_per_image = (out == 0).sum(dim=(1, 2, 3))
    assert bool((zeros_per_image > 0).all()) and bool((zeros_per_image <= 2 * 4 * 4).all())
    assert torch.equal(out[out != 0], x[out != 0])


def test_unknown_op_is_rejected():
    with pytest.raises(ValueError, match="unknown augmentation"):
        apply_op("mixup", batch(), torch.Generator())
