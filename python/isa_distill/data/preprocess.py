"""Per-channel standardisation followed by optional ZCA whitening, fit on the train split.

Forward map for an image x (c, h, w), with v = vec(standardised x) in R^D:

    standardise:  x'[k] = (x[k] - mean[k]) / std[k]            per channel k
    ZCA:          z = (v - mu) W,   W = U diag((s + r)^-1/2) U^T

where mu is the per-pixel mean of the standardised train images, U diag(s) U^T is the
eigendecomposition of cov = (X - mu)^T (X - mu) / N, and r = zca_reg * trace(cov) / D
(zca_reg = 0.1 in the protocol). The inverse uses W^-1 = U diag((s + r)^1/2) U^T, so
``inverse(transform(x)) == x`` up to float32 rounding. The eigendecomposition runs in float64.
"""

from __future__ import annotations

from typing import Any

import torch

# A D x D eigendecomposition beyond this is slow and memory-hungry (D = 3 * 64 * 64 = 12288).
MAX_ZCA_DIM = 12288
_FIT_CHUNK = 4096


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(
            f"{name} must be a (n, c, h, w) tensor, got {getattr(images, 'shape', images)}"
        )
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {images.dtype}")


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
    ) -> None:
        zca_parts = (zca_mean, zca_eigenvectors, zca_eigenvalues)
        if any(p is None for p in zca_parts) and not all(p is None for p in zca_parts):
            raise ValueError("zca_mean, zca_eigenvectors and zca_eigenvalues go together")
        if bool((std <= 0).any()):
            raise ValueError("std must be positive in every channel")
        self.mean = mean.to(torch.float32)
        self.std = std.to(torch.float32)
        self.zca_reg = float(zca_reg)
        self.zca = zca_mean is not None
        self._device_cache: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        if self.zca:
            self.zca_mean = zca_mean.to(torch.float32)
            self.zca_eigenvectors = zca_eigenvectors.to(torch.float32)
            self.zca_eigenvalues = zca_eigenvalues.to(torch.float64)
            u = self.zca_eigenvectors.to(torch.float64)
            shifted = self.zca_eigenvalues + self.zca_ridge
            self.whiten = ((u * shifted.rsqrt()) @ u.T).to(torch.float32)
            self.unwhiten = ((u * shifted.sqrt()) @ u.T).to(torch.float32)

    @property
    def zca_ridge(self) -> float:
        """r = zca_reg * trace(cov) / D, added to every eigenvalue."""
        return self.zca_reg * float(self.zca_eigenvalues.sum()) / self.zca_eigenvalues.numel()

    @classmethod
    def fit(cls, images: torch.Tensor, *, zca: bool = True, zca_reg: float = 0.1) -> Preprocessor:
        """Fit on train images (n, c, h, w) in [0, 1]."""
        _check_images(images, "images")
        if images.shape[0] < 2:
            raise ValueError(f"need at least 2 images to fit, got {images.shape[0]}")
        if not zca_reg >= 0:
            raise ValueError(f"zca_reg must be >= 0, got {zca_reg}")
        x = images.to(torch.float64)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3), correction=0)
        if bool((std == 0).any()):
            raise ValueError("a channel of the train images is constant; cannot standardise it")
        if not zca:
            return cls(mean, std, zca_reg=zca_reg)
        dim = images[0].numel()
        if dim > MAX_ZCA_DIM:
            raise ValueError(
                f"ZCA on D={dim} pixels needs a {dim}x{dim} eigendecomposition (limit "
                f"{MAX_ZCA_DIM}); use zca=False or a smaller image_size"
            )
        flat = ((x - mean[:, None, None]) / std[:, None, None]).reshape(len(x), dim)
        pixel_mean = flat.mean(dim=0)
        cov = torch.zeros(dim, dim, dtype=torch.float64)
        for chunk in flat.split(_FIT_CHUNK):  # bounded extra memory for large train splits
            centred = chunk - pixel_mean
            cov += centred.T @ centred
        cov /= len(flat)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues = eigenvalues.clamp_min(0.0)  # rounding makes the null space slightly negative
        if zca_reg == 0 and bool((eigenvalues == 0).any()):
            raise ValueError("the train covariance is singular; use zca_reg > 0")
        return cls(
            mean,
            std,
            zca_mean=pixel_mean,
            zca_eigenvectors=eigenvectors,
            zca_eigenvalues=eigenvalues,
            zca_reg=zca_reg,
        )

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

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> network inputs (float32, same shape)."""
        self._check_input(x, "x")
        mean, std, *zca = self._buffers(x.device)
        out = (x.float() - mean[:, None, None]) / std[:, None, None]
        if self.zca:
            zca_mean, whiten, _ = zca
            out = ((out.flatten(1) - zca_mean) @ whiten).reshape(x.shape)
        return out

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Network inputs -> images in pixel space (for pictures; not clipped to [0, 1])."""
        self._check_input(x, "x")
        mean, std, *zca = self._buffers(x.device)
        out = x.float()
        if self.zca:
            zca_mean, _, unwhiten = zca
            out = (out.flatten(1) @ unwhiten + zca_mean).reshape(x.shape)
        return out * std[:, None, None] + mean[:, None, None]

    def state_dict(self) -> dict[str, Any]:
        """Tensors (CPU) plus plain config values ("zca": bool, "zca_reg": float)."""
        state: dict[str, Any] = {
            "mean": self.mean.clone(),
            "std": self.std.clone(),
            "zca": self.zca,
            "zca_reg": self.zca_reg,
        }
        if self.zca:
            state["zca_mean"] = self.zca_mean.clone()
            state["zca_eigenvectors"] = self.zca_eigenvectors.clone()
            state["zca_eigenvalues"] = self.zca_eigenvalues.clone()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Preprocessor:
        missing = {"mean", "std", "zca", "zca_reg"} - set(state)
        if bool(state.get("zca")):
            missing |= {"zca_mean", "zca_eigenvectors", "zca_eigenvalues"} - set(state)
        if missing:
            raise ValueError(f"preprocessor state lacks {sorted(missing)}")
        zca_keys = ("zca_mean", "zca_eigenvectors", "zca_eigenvalues")
        zca_parts = {k: state[k] for k in zca_keys} if bool(state["zca"]) else {}
        return cls(state["mean"], state["std"], zca_reg=float(state["zca_reg"]), **zca_parts)
