"""Per-channel standardisation followed by optional ZCA whitening, fit on the train split.

Forward map for an image x (c, h, w), with v = vec(standardised x) in R^D:

    standardise:  x'[k] = (x[k] - mean[k]) / std[k]            per channel k
    ZCA:          z = (v - mu) W,   W = U diag((s + r)^-1/2) U^T

where mu is the per-pixel mean of the standardised train images, U diag(s) U^T is the
eigendecomposition of cov = (X - mu)^T (X - mu) / N, and r = zca_reg * trace(cov) / D
(zca_reg = 0.1 in the protocol). The inverse uses W^-1 = U diag((s + r)^1/2) U^T, so
``inverse(transform(x)) == x`` up to float32 rounding. The eigendecomposition runs in float64.

Block ZCA for large images. A D x D eigendecomposition is out of reach beyond ``MAX_ZCA_DIM``
(D = 3 * 64 * 64 = 12288), so larger images (e.g. ImageNette / ImageWoof at 128 px) are
whitened by blocks, as the paper's official code does: with block side b (dividing h and w) and
strides (h / b, w / b), block (i, j) holds the b x b interleaved pixels x[:, i::h/b, j::w/b]
of every channel, a vector of d = c * b * b values; the blocks partition the image. ONE d x d
ZCA, fitted on the mean of the blocks' covariances over the train split (after subtracting the
full per-pixel mean mu) with the same regulariser rule (r = zca_reg * trace / d), whitens every
block; the inverse undoes it block by block, exactly. ``fit`` picks the largest b with
c * b * b <= MAX_ZCA_DIM automatically (b = 64 for 3 x 128 x 128, the official choice).

Variants for sets distilled elsewhere (``isa-distill import``): ``fit`` can keep given
per-channel ``mean`` / ``std`` constants instead of fitting them, whiten without centring
(``zca_center=False``: mu = 0 and cov = X^T X / N, as KIP does), take ``zca_reg`` as the ridge r
itself (``zca_reg_absolute=True``, as kornia's ``ZCAWhitening(eps)`` in MTT; stored as the
equivalent relative value), and normalise every standardised image to zero mean and unit L2
norm before whitening (``layer_norm=True``, KIP's "zca_normalize"). Layer norm forgets each
image's mean and norm, so ``inverse`` is then approximate: it restores the train images' mean
norm (``layer_norm_scale``), which is enough for pictures.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

# A D x D eigendecomposition beyond this is slow and memory-hungry (D = 3 * 64 * 64 = 12288).
MAX_ZCA_DIM = 12288
_FIT_CHUNK_VALUES = 2**25  # float64 values converted at a time while fitting (256 MiB)


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(
            f"{name} must be a (n, c, h, w) tensor, got {getattr(images, 'shape', images)}"
        )
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {images.dtype}")


def zca_block_side(channels: int, height: int, width: int) -> int | None:
    """None when a full ZCA fits (c * h * w <= MAX_ZCA_DIM); else the largest block side b that
    divides h and w with c * b * b <= MAX_ZCA_DIM."""
    if channels * height * width <= MAX_ZCA_DIM:
        return None
    for side in range(min(height, width), 0, -1):
        if height % side == 0 and width % side == 0 and channels * side * side <= MAX_ZCA_DIM:
            return side
    raise ValueError(f"{channels} channels exceed MAX_ZCA_DIM={MAX_ZCA_DIM}; use zca=False")


def to_blocks(x: torch.Tensor, side: int) -> torch.Tensor:
    """(n, c, h, w) -> (n, P, c * side * side): the interleaved blocks (see the module docstring),
    P = (h / side) * (w / side), block index i * (w / side) + j for block (i, j)."""
    n, c, h, w = x.shape
    rows, cols = h // side, w // side
    blocks = x.reshape(n, c, side, rows, side, cols).permute(0, 3, 5, 1, 2, 4)
    return blocks.reshape(n, rows * cols, c * side * side)


def from_blocks(blocks: torch.Tensor, shape: torch.Size, side: int) -> torch.Tensor:
    """The inverse of ``to_blocks`` for images of ``shape`` (n, c, h, w)."""
    n, c, h, w = shape
    rows, cols = h // side, w // side
    grid = blocks.reshape(n, rows, cols, c, side, side).permute(0, 3, 4, 1, 5, 2)
    return grid.reshape(n, c, h, w)


def _centred(flat: torch.Tensor) -> torch.Tensor:
    return flat - flat.mean(dim=1, keepdim=True)


def _unit_images(flat: torch.Tensor) -> torch.Tensor:
    """Each row (a flattened image) minus its mean, divided by its L2 norm (KIP's layer norm)."""
    centred = _centred(flat)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _float64_chunks(images: torch.Tensor) -> Iterator[torch.Tensor]:
    """The images in float64, a bounded number at a time (no float64 copy of a whole split)."""
    rows = max(1, _FIT_CHUNK_VALUES // images[0].numel())
    for chunk in images.split(rows):
        yield chunk.to(torch.float64)


class Preprocessor:
    """Standardisation (+ ZCA) fit once on the train split; apply the same map everywhere."""

    def __init__(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        zca_mean: torch.Tensor | None = None,
        zca_eigenvectors: torch.Tensor | None = None,
        zca_eigenvalues: torch.Tensor | None = None,
        zca_reg: float = 0.1,
        zca_block: int | None = None,
        layer_norm: bool = False,
        layer_norm_scale: float = 1.0,
    ) -> None:
        zca_parts = (zca_mean, zca_eigenvectors, zca_eigenvalues)
        if any(p is None for p in zca_parts) and not all(p is None for p in zca_parts):
            raise ValueError("zca_mean, zca_eigenvectors and zca_eigenvalues go together")
        if bool((std <= 0).any()):
            raise ValueError("std must be positive in every channel")
        self.mean = mean.to(torch.float32)
        self.std = std.to(torch.float32)
        self.zca_reg = float(zca_reg)
        self.layer_norm = bool(layer_norm)
        self.layer_norm_scale = float(layer_norm_scale)
        if not (math.isfinite(self.layer_norm_scale) and self.layer_norm_scale > 0):
            raise ValueError(f"layer_norm_scale must be positive, got {layer_norm_scale}")
        self.zca = zca_mean is not None
        self.zca_block = None if not self.zca or zca_block is None else int(zca_block)
        self._device_cache: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        if self.zca:
            self.zca_mean = zca_mean.to(torch.float32)
            self.zca_eigenvectors = zca_eigenvectors.to(torch.float32)
            self.zca_eigenvalues = zca_eigenvalues.to(torch.float64)
            self._check_zca_shapes()
            u = self.zca_eigenvectors.to(torch.float64)
            shifted = self.zca_eigenvalues + self.zca_ridge
            self.whiten = ((u * shifted.rsqrt()) @ u.T).to(torch.float32)
            self.unwhiten = ((u * shifted.sqrt()) @ u.T).to(torch.float32)

    def _check_zca_shapes(self) -> None:
        dim = self.zca_eigenvalues.numel()
        if self.zca_eigenvectors.shape != (dim, dim):
            raise ValueError(
                f"zca_eigenvectors must be {dim}x{dim} to match zca_eigenvalues, got "
                f"{tuple(self.zca_eigenvectors.shape)}"
            )
        expected = self.zca_mean.numel() if self.zca_block is None else (
            self.mean.numel() * self.zca_block**2
        )
        if dim != expected:
            what = "the image" if self.zca_block is None else f"a {self.zca_block}-pixel block"
            raise ValueError(f"the ZCA has {dim} values per vector, {what} has {expected}")

    @property
    def zca_ridge(self) -> float:
        """r = zca_reg * trace(cov) / d, added to every eigenvalue (d: values per image, or per
        block for a block ZCA)."""
        return self.zca_reg * float(self.zca_eigenvalues.sum()) / self.zca_eigenvalues.numel()

    @classmethod
    def fit(
        cls,
        images: torch.Tensor,
        *,
        zca: bool = True,
        zca_reg: float = 0.1,
        zca_block: int | None = None,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        zca_center: bool = True,
        zca_reg_absolute: bool = False,
        layer_norm: bool = False,
    ) -> Preprocessor:
        """Fit on train images (n, c, h, w) in [0, 1].

        ``zca_block``: None picks a full ZCA when it fits and blocks of ``zca_block_side``
        otherwise; an int forces blocks of that side (it must divide h and w). ``mean``,
        ``std``, ``zca_center``, ``zca_reg_absolute`` and ``layer_norm``: the variants of the
        module docstring (defaults: the protocol's preprocessing).
        """
        _check_images(images, "images")
        if images.shape[0] < 2:
            raise ValueError(f"need at least 2 images to fit, got {images.shape[0]}")
        if not zca_reg >= 0:
            raise ValueError(f"zca_reg must be >= 0, got {zca_reg}")
        n, channels, height, width = images.shape
        if (mean is None) != (std is None):
            raise ValueError("mean and std go together (both given, or both fitted)")
        if mean is None:
            mean, std = cls._channel_statistics(images)
        else:
            mean, std = (torch.as_tensor(v, dtype=torch.float64).flatten() for v in (mean, std))
            if mean.shape != (channels,) or std.shape != (channels,):
                raise ValueError(f"mean and std need {channels} values (one per channel), got "
                                 f"{tuple(mean.shape)} and {tuple(std.shape)}")
        if bool((std <= 0).any()):
            raise ValueError("a channel of the train images is constant; cannot standardise it")
        if not zca:
            if layer_norm:
                raise ValueError("layer_norm=True goes with zca=True (KIP's zca_normalize)")
            return cls(mean, std, zca_reg=zca_reg)
        block = cls._block_side(zca_block, channels, height, width)

        def prepared(chunk: torch.Tensor) -> torch.Tensor:
            flat = ((chunk - mean[:, None, None]) / std[:, None, None]).flatten(1)
            return _unit_images(flat) if layer_norm else flat

        dim = channels * height * width if block is None else channels * block * block
        pixel_mean = torch.zeros(channels * height * width, dtype=torch.float64)
        if zca_center:
            pixel_mean = sum(prepared(c).sum(0) for c in _float64_chunks(images)) / n
        cov = torch.zeros(dim, dim, dtype=torch.float64)
        for chunk in _float64_chunks(images):
            centred = prepared(chunk) - pixel_mean
            if block is not None:
                centred = to_blocks(centred.view(chunk.shape), block).reshape(-1, dim)
            cov += centred.T @ centred
        cov /= len(images) if block is None else len(images) * (height // block) * (width // block)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues = eigenvalues.clamp_min(0.0)  # rounding makes the null space slightly negative
        if zca_reg == 0 and bool((eigenvalues == 0).any()):
            raise ValueError("the train covariance is singular; use zca_reg > 0")
        if zca_reg_absolute:  # r = zca_reg itself, stored as the relative value giving that r
            zca_reg = zca_reg * eigenvalues.numel() / float(eigenvalues.sum())
        scale = 1.0
        if layer_norm:  # the train images' mean norm after standardising and centring
            norms = [_centred(((c - mean[:, None, None]) / std[:, None, None]).flatten(1))
                     .norm(dim=1) for c in _float64_chunks(images)]
            scale = float(torch.cat(norms).mean())
        return cls(
            mean,
            std,
            zca_mean=pixel_mean,
            zca_eigenvectors=eigenvectors,
            zca_eigenvalues=eigenvalues,
            zca_reg=zca_reg,
            zca_block=block,
            layer_norm=layer_norm,
            layer_norm_scale=scale,
        )

    @staticmethod
    def _channel_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (population) std of the images, in float64."""
        n, _, height, width = images.shape
        values_per_channel = n * height * width
        mean = sum(c.sum(dim=(0, 2, 3)) for c in _float64_chunks(images)) / values_per_channel
        variance = sum(
            (c - mean[:, None, None]).square().sum(dim=(0, 2, 3)) for c in _float64_chunks(images)
        ) / values_per_channel
        return mean, variance.sqrt()

    @staticmethod
    def _block_side(zca_block: int | None, channels: int, height: int, width: int) -> int | None:
        """The block side to fit with (None: full ZCA), checking a requested one."""
        if zca_block is None:
            return zca_block_side(channels, height, width)
        if isinstance(zca_block, bool) or not isinstance(zca_block, int) or zca_block < 1:
            raise ValueError(f"zca_block must be a positive int or None, got {zca_block!r}")
        if height % zca_block or width % zca_block:
            raise ValueError(f"zca_block={zca_block} must divide the image sides {height}x{width}")
        if channels * zca_block**2 > MAX_ZCA_DIM:
            raise ValueError(
                f"zca_block={zca_block} gives {channels * zca_block**2} values per block "
                f"(limit MAX_ZCA_DIM={MAX_ZCA_DIM})"
            )
        return None if (zca_block, zca_block) == (height, width) else zca_block

    def _buffers(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._device_cache:
            parts = [self.mean, self.std]
            if self.zca:
                parts += [self.zca_mean, self.whiten, self.unwhiten]
            self._device_cache[device] = tuple(p.to(device) for p in parts)
        return self._device_cache[device]

    def _check_input(self, x: torch.Tensor, name: str) -> None:
        _check_images(x, name)
        if x.shape[1] != self.mean.numel():
            raise ValueError(f"{name} has {x.shape[1]} channels, expected {self.mean.numel()}")
        if self.zca and x[0].numel() != self.zca_mean.numel():
            raise ValueError(
                f"{name} has {x[0].numel()} values per image, the ZCA was fit on "
                f"{self.zca_mean.numel()}"
            )
        block = self.zca_block
        if block is not None and (x.shape[2] % block or x.shape[3] % block):
            raise ValueError(
                f"{name} is {x.shape[2]}x{x.shape[3]}; the block ZCA needs sides divisible by "
                f"{block}"
            )

    def _zca_map(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """x (n, c, h, w) times the (block) ZCA matrix ``matrix``, same shape."""
        if self.zca_block is None:
            return (x.flatten(1) @ matrix).reshape(x.shape)
        return from_blocks(to_blocks(x, self.zca_block) @ matrix, x.shape, self.zca_block)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> network inputs (float32, same shape)."""
        self._check_input(x, "x")
        mean, std, *zca = self._buffers(x.device)
        out = (x.float() - mean[:, None, None]) / std[:, None, None]
        if self.layer_norm:
            out = _unit_images(out.flatten(1)).reshape(x.shape)
        if self.zca:
            zca_mean, whiten, _ = zca
            out = self._zca_map((out.flatten(1) - zca_mean).reshape(x.shape), whiten)
        return out

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Network inputs -> images in pixel space (for pictures; not clipped to [0, 1]);
        approximate after layer norm (see the module docstring)."""
        self._check_input(x, "x")
        mean, std, *zca = self._buffers(x.device)
        out = x.float()
        if self.zca:
            zca_mean, _, unwhiten = zca
            out = (self._zca_map(out, unwhiten).flatten(1) + zca_mean).reshape(x.shape)
        if self.layer_norm:
            out = out * self.layer_norm_scale
        return out * std[:, None, None] + mean[:, None, None]

    def state_dict(self) -> dict[str, Any]:
        """Tensors (CPU) plus plain config values ("zca": bool, "zca_reg": float,
        "zca_block": int block side, or None for a full ZCA)."""
        state: dict[str, Any] = {
            "mean": self.mean.clone(),
            "std": self.std.clone(),
            "zca": self.zca,
            "zca_reg": self.zca_reg,
            "zca_block": self.zca_block,
        }
        if self.layer_norm:  # absent from states of the protocol's preprocessing (and old runs)
            state["layer_norm"] = True
            state["layer_norm_scale"] = self.layer_norm_scale
        if self.zca:
            state["zca_mean"] = self.zca_mean.clone()
            state["zca_eigenvectors"] = self.zca_eigenvectors.clone()
            state["zca_eigenvalues"] = self.zca_eigenvalues.clone()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Preprocessor:
        """The inverse of ``state_dict``; a state without "zca_block" (written before block ZCA
        existed) is a full ZCA."""
        missing = {"mean", "std", "zca", "zca_reg"} - set(state)
        if bool(state.get("zca")):
            missing |= {"zca_mean", "zca_eigenvectors", "zca_eigenvalues"} - set(state)
        if missing:
            raise ValueError(f"preprocessor state lacks {sorted(missing)}")
        zca_keys = ("zca_mean", "zca_eigenvectors", "zca_eigenvalues")
        zca_parts = {k: state[k] for k in zca_keys} if bool(state["zca"]) else {}
        block = state.get("zca_block")
        if block is not None and (isinstance(block, bool) or not isinstance(block, int)):
            raise ValueError(f"preprocessor state: zca_block must be an int or None, got {block!r}")
        return cls(
            state["mean"], state["std"], zca_reg=float(state["zca_reg"]), zca_block=block,
            layer_norm=bool(state.get("layer_norm", False)),
            layer_norm_scale=float(state.get("layer_norm_scale", 1.0)), **zca_parts,
        )
