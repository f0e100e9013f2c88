"""Spatial (vertical × horizontal) factorisation, Jaderberg, Vedaldi & Zisserman 2014, scheme 2.

W[f,c,i,j] ≈ Σ_k V[k,c,i] H[f,k,j], found as the truncated SVD of W reshaped to the
(C·kh) × (kw·F) matrix M[(c,i), (j,f)] = W[f,c,i,j] (the rank-K optimum in Frobenius norm).
Emitted as two convolutions:

    vertical   [K, C, kh, 1]   kh×1, C → K
    horizontal [F, K, 1, kw]   1×kw, K → F

conv(conv(x, vertical), horizontal) == conv(x, W) at full rank K = min(C·kh, kw·F).

Attributes: the vertical factor carries stride_h, dilation_h and the top/bottom pads
(its output is Ho × Wi); the horizontal factor carries stride_w, dilation_w and the
left/right pads. Zero padding commutes with the vertical conv because it has no bias;
the original bias goes on the horizontal factor.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from onnxopt.decomp.svd import conv_weight_float64

from .svd import relative_error

__all__ = ["SpatialFactors", "spatial_factors", "spatial_matrix", "spatial_singular_values"]


class SpatialFactors(NamedTuple):
    vertical: np.ndarray  # [K, C, kh, 1]
    horizontal: np.ndarray  # [F, K, 1, kw]
    singular_values: np.ndarray  # all singular values of the reshaped matrix (float64)
    rel_error: float


def spatial_matrix(W: np.ndarray) -> np.ndarray:
    """The (C·kh) × (kw·F) matrix whose SVD gives the factors (also the VBMF input)."""
    W = conv_weight_float64(W)
    F, C, kh, kw = W.shape
    return W.transpose(1, 2, 3, 0).reshape(C * kh, kw * F)


def spatial_singular_values(W: np.ndarray) -> np.ndarray:
    """Singular values of ``spatial_matrix(W)``, descending; max rank is their count."""
    return np.linalg.svd(spatial_matrix(W), compute_uv=False)


def spatial_reconstruct(vertical: np.ndarray, horizontal: np.ndarray) -> np.ndarray:
    """W_hat[f,c,i,j] = Σ_k vertical[k,c,i,0] · horizontal[f,k,0,j]."""
    return np.einsum("kci,fkj->fcij", vertical[..., 0].astype(np.float64), horizontal[:, :, 0, :].astype(np.float64))


def spatial_factors(W: np.ndarray, rank: int) -> SpatialFactors:
    """Rank-``rank`` vertical/horizontal factors of ``W`` (float32), see module docstring."""
    W = conv_weight_float64(W)
    F, C, kh, kw = W.shape
    full = min(C * kh, kw * F)
    rank = int(rank)
    if not 1 <= rank <= full:
        raise ValueError(f"spatial rank must be in [1, {full}] for weight {W.shape}, got {rank}")
    U, s, Vt = np.linalg.svd(spatial_matrix(W), full_matrices=False)
    root = np.sqrt(s[:rank])
    vert = (U[:, :rank] * root).T.reshape(rank, C, kh, 1)  # [(c,i), k] -> [k, c, i, 1]
    horiz = (root[:, None] * Vt[:rank]).reshape(rank, kw, F).transpose(2, 0, 1)[:, :, None, :]
    vert = np.ascontiguousarray(vert, dtype=np.float32)
    horiz = np.ascontiguousarray(horiz, dtype=np.float32)
    err = relative_error(W, spatial_reconstruct(vert, horiz))
    return SpatialFactors(vert, horiz, s, err)
