"""Data-aware refit of the last factor of a decomposed layer (in the spirit of Zhang et al. 2016).

The decomposed layer ends in a linear map with bias (a 1×1 conv or a matrix). Given the
activations Z entering that last factor and the original layer's output Y (bias included)
on real data, solve

    min_{Θ=[Wl, b]}  Σ_pixels ||Y_p − Wl·Z_p − b||² + λ·||Wl||_F²,   λ = ridge · tr(ZᵀZ)/R

so that the layer's output, not its weight, matches. The normal equations need only
G = Σ [Z_p; 1][Z_p; 1]ᵀ ((R+1)×(R+1)) and X = Σ Y_p [Z_p; 1]ᵀ (F×(R+1)), accumulated in
float64: memory 8·((R+1)² + F·(R+1) + 1) bytes whatever the number of samples. Pixels are
subsampled per sample (``max_pixels_per_sample``). For a last factor that is not 1×1 (the
spatial scheme's 1×kw conv), pass ``im2col(Z, ...)`` as Z and reshape the solved weight.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["LastFactorRefit", "im2col"]


def _pixels(a: np.ndarray, name: str, channels_last: bool) -> np.ndarray:
    """[N, C, *spatial] (or [rows, C], or channels last) → [N, P, C] float64 view/copy."""
    a = np.asarray(a)
    if a.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (rows, channels), got shape {a.shape}")
    if a.ndim == 2:
        return a.astype(np.float64, copy=False)[:, None, :]
    if channels_last:
        return a.reshape(a.shape[0], -1, a.shape[-1]).astype(np.float64, copy=False)
    return np.moveaxis(a.reshape(a.shape[0], a.shape[1], -1), 1, 2).astype(np.float64, copy=False)


class LastFactorRefit:
    """Streaming least-squares refit of a last factor ``Y ≈ Z · weightᵀ + bias``.

    ``update(Z, Y)`` with Z [N, R, H, W] and Y [N, F, H, W] (or [N, R] / [M, R] rows; or
    channels-last [N, T, R] with ``channels_last=True``); ``solve()`` returns
    ``(weight [F, R], bias [F])`` as float32 (reshape weight to [F, R, 1, 1] for a conv).
    Memory: O((R+1)² + F·(R+1)) float64, independent of the number of samples.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ridge: float = 1e-6,
        *,
        fit_bias: bool = True,
        max_pixels_per_sample: int | None = 4096,
        seed: int = 0,
        channels_last: bool = False,
    ):
        if in_channels < 1 or out_channels < 1:
            raise ValueError("in_channels and out_channels must be >= 1")
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        if max_pixels_per_sample is not None and max_pixels_per_sample < 1:
            raise ValueError("max_pixels_per_sample must be >= 1 or None")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.ridge = float(ridge)
        self.fit_bias = fit_bias
        self.max_pixels_per_sample = max_pixels_per_sample
        self.channels_last = channels_last
        self._rng = np.random.default_rng(seed)
        n = self.in_channels + 1
        self.gram = np.zeros((n, n))  # Σ [z;1][z;1]ᵀ
        self.cross = np.zeros((self.out_channels, n))  # Σ y [z;1]ᵀ
        self.y_sq = 0.0  # Σ ||y||², for relative_residual
        self.n_samples = 0
        self.n_rows = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulators (constant after construction)."""
        return self.gram.nbytes + self.cross.nbytes

    def update(self, Z: np.ndarray, Y: np.ndarray) -> None:
        Zp = _pixels(Z, "Z", self.channels_last)
        Yp = _pixels(Y, "Y", self.channels_last)
        if Zp.shape[:2] != Yp.shape[:2]:
            raise ValueError(f"Z {np.shape(Z)} and Y {np.shape(Y)} differ in batch or spatial size")
        if Zp.shape[2] != self.in_channels or Yp.shape[2] != self.out_channels:
            raise ValueError(
                f"expected {self.in_channels} channels in Z and {self.out_channels} in Y, "
                f"got {Zp.shape[2]} and {Yp.shape[2]}"
            )
        n, p = Zp.shape[:2]
        cap = self.max_pixels_per_sample
        if cap is not None and p > cap:
            # same random pixels for Z and Y; a fresh draw per sample covers the map
            idx = np.stack([self._rng.choice(p, cap, replace=False) for _ in range(n)])
            Zp = np.take_along_axis(Zp, idx[:, :, None], axis=1)
            Yp = np.take_along_axis(Yp, idx[:, :, None], axis=1)
        Z2 = Zp.reshape(-1, self.in_channels)
        Y2 = Yp.reshape(-1, self.out_channels)
        R = self.in_channels
        self.gram[:R, :R] += Z2.T @ Z2
        zs = Z2.sum(axis=0)
        self.gram[:R, R] += zs
        self.gram[R, :R] += zs
        self.gram[R, R] += Z2.shape[0]
        self.cross[:, :R] += Y2.T @ Z2
        self.cross[:, R] += Y2.sum(axis=0)
        self.y_sq += float(np.sum(Y2 * Y2))
        self.n_samples += n
        self.n_rows += Z2.shape[0]

    def _theta(self) -> np.ndarray:
        if self.n_rows == 0:
            raise ValueError("no data: call update() before solve()")
        R = self.in_channels
        n = R + 1 if self.fit_bias else R
        g = self.gram[:n, :n].copy()
        lam = self.ridge * max(float(np.trace(self.gram[:R, :R])) / R, 1e-300)
        g[np.arange(R), np.arange(R)] += lam  # the bias is not shrunk
        theta = np.linalg.solve(g, self.cross[:, :n].T).T
        if not self.fit_bias:
            theta = np.concatenate([theta, np.zeros((self.out_channels, 1))], axis=1)
        return theta

    def solve(self) -> tuple[np.ndarray, np.ndarray]:
        """``(weight [F, R], bias [F])`` float32 (bias is zeros when ``fit_bias=False``)."""
        theta = self._theta()
        return theta[:, :-1].astype(np.float32), theta[:, -1].astype(np.float32)

    def relative_residual(self, weight: np.ndarray, bias: np.ndarray | None = None) -> float:
        """sqrt(Σ||Y − Z·weightᵀ − bias||² / Σ||Y||²) on the accumulated (subsampled) pixels;
        use it to compare the refit weight with the un-refitted one."""
        theta = np.concatenate(
            [np.asarray(weight, np.float64).reshape(self.out_channels, -1),
             (np.zeros(self.out_channels) if bias is None else np.asarray(bias, np.float64))[:, None]],
            axis=1,
        )
        res = self.y_sq - 2.0 * float(np.sum(theta * self.cross)) + float(np.sum((theta @ self.gram) * theta))
        return float(np.sqrt(max(res, 0.0) / self.y_sq)) if self.y_sq > 0 else 0.0


def im2col(
    x: np.ndarray,
    kernel_hw: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
) -> np.ndarray:
    """[N, C, H, W] → [N, C·kh·kw, Ho, Wo], channel order (c, i, j), ONNX pads
    (top, left, bottom, right): conv(x, Wk) == einsum('fk,nkhw->nfhw', Wk.reshape(F, -1), im2col(x))."""
    x = np.asarray(x)
    N, C, H, Wd = x.shape
    kh, kw = kernel_hw
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (Wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    out = np.empty((N, C, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i, j] = xp[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
    return out.reshape(N, C * kh * kw, ho, wo)
