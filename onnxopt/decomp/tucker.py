"""Tucker-2 decomposition of a conv kernel on its output and input channel modes (Kim et al. 2016).

W[f,c,i,j] ≈ Σ_{a,b} U_out[f,b] · G[b,a,i,j] · U_in[c,a], with U_out [F, R2] and U_in [C, R1]
orthonormal and the core G = W ×_F U_outᵀ ×_C U_inᵀ. Emitted as

    first [R1, C, 1, 1]    1×1, C → R1        (= U_inᵀ)
    core  [R2, R1, kh, kw] kh×kw, R1 → R2     (= G)
    last  [F, R2, 1, 1]    1×1, R2 → F        (= U_out)

The core carries the stride, dilation, pads (and group=1); the 1×1 factors carry none;
the original bias goes on ``last``. Exact (up to float32) at R2 = F, R1 = C.

Algorithm: HOSVD (leading eigenvectors of the Gram matrices of the mode-F and mode-C
unfoldings), then HOOI sweeps (two GEMMs and two small Gram eigh each; none increases the
error) until the squared error drops by less than 1e-5 (relative), at most 10.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from onnxopt.decomp.svd import conv_weight_float64

from ._blas import blas_threads as _blas_threads
from .svd import leading_left_singular_vectors

__all__ = [
    "DEFAULT_HOOI_ITERS",
    "DEFAULT_HOOI_TOL",
    "Tucker2",
    "tucker2",
    "tucker2_reconstruct",
    "tucker2_unfolding_singular_values",
    "tucker2_unfoldings",
]

DEFAULT_HOOI_ITERS = 10
DEFAULT_HOOI_TOL = 1e-5


class Tucker2(NamedTuple):
    first: np.ndarray  # [R1, C, 1, 1]
    core: np.ndarray  # [R2, R1, kh, kw]
    last: np.ndarray  # [F, R2, 1, 1]
    rel_error: float


def tucker2_unfoldings(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mode-F unfolding [F, C·kh·kw] and mode-C unfolding [C, F·kh·kw] (float64).

    These are the matrices whose singular values / EVBMF ranks give R2 and R1
    (``select_rank_pair(..., vbmf_matrices=tucker2_unfoldings(W))``).
    """
    W = conv_weight_float64(W)
    F, C = W.shape[:2]
    return W.reshape(F, -1), W.transpose(1, 0, 2, 3).reshape(C, -1)


def tucker2_unfolding_singular_values(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(s_out, s_in)``: singular values of the two unfoldings, each padded with zeros to
    the mode size (F resp. C) so that ``len`` is the maximum rank of that mode."""
    out = []
    for M in tucker2_unfoldings(W):
        s = np.linalg.svd(M, compute_uv=False)
        out.append(np.pad(s, (0, M.shape[0] - s.size)))
    return out[0], out[1]


def tucker2_reconstruct(first: np.ndarray, core: np.ndarray, last: np.ndarray) -> np.ndarray:
    """W_hat[f,c,i,j] = Σ_{a,b} last[f,b] core[b,a,i,j] first[a,c] (float64)."""
    return np.einsum(
        "fb,baij,ac->fcij",
        last[:, :, 0, 0].astype(np.float64),
        core.astype(np.float64),
        first[:, :, 0, 0].astype(np.float64),
        optimize=True,
    )


def tucker2(
    W: np.ndarray,
    rank_out: int,
    rank_in: int,
    n_iter: int = DEFAULT_HOOI_ITERS,
    *,
    tol: float = DEFAULT_HOOI_TOL,
    blas_threads: int | None = 1,
) -> Tucker2:
    """Tucker-2 factors of ``W`` [F, C, kh, kw] with R2 = ``rank_out`` ≤ F, R1 = ``rank_in`` ≤ C.

    At most ``n_iter`` HOOI sweeps refine the HOSVD start (0 = plain HOSVD); they stop
    early once a sweep lowers the squared error by less than ``tol`` (relative). ``rel_error`` is
    measured on the returned float32 factors. ``blas_threads``: see ``_blas`` (one BLAS
    thread by default; None leaves BLAS alone).
    """
    with _blas_threads(blas_threads):
        return _tucker2(W, rank_out, rank_in, n_iter, tol)


def _tucker2(W: np.ndarray, rank_out: int, rank_in: int, n_iter: int, tol: float) -> Tucker2:
    W = conv_weight_float64(W)
    F, C, kh, kw = W.shape
    k2 = kh * kw
    r2, r1 = int(rank_out), int(rank_in)
    if not (1 <= r2 <= F and 1 <= r1 <= C):
        raise ValueError(f"Tucker-2 ranks must satisfy 1 <= rank_out <= {F}, 1 <= rank_in <= {C}; got ({r2}, {r1})")
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    W0, W1 = tucker2_unfoldings(W)
    U_out = leading_left_singular_vectors(W0, r2)
    U_in = leading_left_singular_vectors(W1, r1)
    # Projections as plain GEMMs; the column order of an unfolding does not change its
    # left singular vectors, so (c, ij, b) order is as good as (c, b, ij).
    W_fs_c = W.transpose(0, 2, 3, 1).reshape(F * k2, C)
    W_cs_f = W.transpose(1, 2, 3, 0).reshape(C * k2, F)
    norm2 = float(np.sum(W * W))
    Y0 = (W_fs_c @ U_in).reshape(F, k2 * r1)
    err2 = norm2 - float(np.sum((U_out.T @ Y0) ** 2))
    # A full mode needs no refinement: its basis is already complete.
    if r2 < F or r1 < C:
        for _ in range(n_iter):
            Y1 = (W_cs_f @ U_out).reshape(C, k2 * r2)
            U_in = leading_left_singular_vectors(Y1, r1)
            Y0 = (W_fs_c @ U_in).reshape(F, k2 * r1)
            U_out = leading_left_singular_vectors(Y0, r2)
            # ||W − Ŵ||² = ||W||² − ||G||² for orthonormal factors
            prev, err2 = err2, norm2 - float(np.sum((U_out.T @ Y0) ** 2))
            if prev - err2 <= tol * max(prev, 1e-300):
                break
    core = (U_out.T @ Y0).reshape(r2, k2, r1).transpose(0, 2, 1).reshape(r2, r1, kh, kw)
    first = np.ascontiguousarray(U_in.T.reshape(r1, C, 1, 1), dtype=np.float32)
    core32 = np.ascontiguousarray(core, dtype=np.float32)
    last = np.ascontiguousarray(U_out.reshape(F, r2, 1, 1), dtype=np.float32)
    W_hat = tucker2_reconstruct(first, core32, last)
    nw = math.sqrt(norm2)
    err = float(np.linalg.norm(W - W_hat)) / nw if nw > 0 else 0.0
    return Tucker2(first, core32, last, err)
