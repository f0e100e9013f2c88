"""Depthwise-separable factorisation (Denton et al. 2014 §3; Chollet 2017).

For each input channel c, the F × (kh·kw) matrix W[:, c, :, :] = U_c S_c V_cᵀ is truncated
to m components: W[f,c,i,j] ≈ Σ_{k<m} P[f, c·m+k] · D[c·m+k, i, j] with
P[f, c·m+k] = U_c[f,k]·√s_ck and D[c·m+k] = √s_ck·V_c[:,k] reshaped to kh×kw. Emitted as

    depthwise [C·m, 1, kh, kw]   kh×kw, group=C, channel multiplier m (channel c·m + k)
    pointwise [F, C·m, 1, 1]     1×1, C·m → F, + bias

The depthwise factor carries the stride, dilation and pads; the pointwise one none.
Exact at m = min(F, kh·kw).

One m is used for all channels (a grouped conv needs a uniform multiplier). Energy-based
choice: ``select_rank(separable_singular_values(W), min(F, kh·kw), energy=e)`` — the
aggregated spectrum s_k = sqrt(Σ_c s_ck²) makes "energy kept with m components" the total
over channels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "Separable",
    "separable_channel_singular_values",
    "separable_factors",
    "separable_reconstruct",
    "separable_singular_values",
]


class Separable(NamedTuple):
    depthwise: np.ndarray  # [C·m, 1, kh, kw]
    pointwise: np.ndarray  # [F, C·m, 1, 1]
    rel_error: float


def _slices(W: np.ndarray) -> np.ndarray:
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 4:
        raise ValueError(f"expected a conv weight [F, C, kh, kw], got shape {W.shape}")
    F, C, kh, kw = W.shape
    return W.transpose(1, 0, 2, 3).reshape(C, F, kh * kw)


def separable_channel_singular_values(W: np.ndarray) -> np.ndarray:
    """[C, min(F, kh·kw)]: singular values of each channel's F × (kh·kw) slice."""
    return np.linalg.svd(_slices(W), compute_uv=False)


def separable_singular_values(W: np.ndarray) -> np.ndarray:
    """Aggregated spectrum sqrt(Σ_c s_ck²), length min(F, kh·kw) = the maximum multiplier."""
    return np.sqrt(np.sum(separable_channel_singular_values(W) ** 2, axis=0))


def separable_reconstruct(depthwise: np.ndarray, pointwise: np.ndarray, in_channels: int) -> np.ndarray:
    """W_hat[f,c,i,j] = Σ_k pointwise[f, c·m+k] · depthwise[c·m+k, 0, i, j] (float64)."""
    F, Cm = pointwise.shape[:2]
    kh, kw = depthwise.shape[2:]
    if depthwise.shape[0] != Cm or Cm % in_channels:
        raise ValueError(f"inconsistent factors: depthwise {depthwise.shape}, pointwise {pointwise.shape}, C={in_channels}")
    m = Cm // in_channels
    D = depthwise.astype(np.float64).reshape(in_channels, m, kh, kw)
    P = pointwise.astype(np.float64).reshape(F, in_channels, m)
    return np.einsum("fck,ckij->fcij", P, D)


def separable_factors(W: np.ndarray, multiplier: int) -> Separable:
    """Depthwise (multiplier m) and pointwise factors of ``W``, float32; see module docstring."""
    S = _slices(W)  # [C, F, kh·kw]
    C, F, k2 = S.shape
    kh, kw = np.shape(W)[2:]
    m = int(multiplier)
    full = min(F, k2)
    if not 1 <= m <= full:
        raise ValueError(f"multiplier must be in [1, {full}] for weight {np.shape(W)}, got {m}")
    U, s, Vt = np.linalg.svd(S, full_matrices=False)  # batched over channels
    root = np.sqrt(s[:, :m])  # [C, m]
    dw = (root[:, :, None] * Vt[:, :m, :]).reshape(C * m, 1, kh, kw)  # channel c·m + k
    pw = (U[:, :, :m] * root[:, None, :]).transpose(1, 0, 2).reshape(F, C * m, 1, 1)
    dw = np.ascontiguousarray(dw, dtype=np.float32)
    pw = np.ascontiguousarray(pw, dtype=np.float32)
    W64 = np.asarray(W, dtype=np.float64)
    nw = float(np.linalg.norm(W64))
    err = float(np.linalg.norm(W64 - separable_reconstruct(dw, pw, C))) / nw if nw > 0 else 0.0
    return Separable(dw, pw, err)
