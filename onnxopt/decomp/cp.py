"""CP (canonical polyadic) decomposition of a conv kernel, Lebedev et al. 2015.

W[f,c,i,j] ≈ Σ_r A[f,r] B[c,r] V[i,r] H[j,r]; emitted as first [R, C, 1, 1] (= Bᵀ) →
vertical [R, 1, kh, 1] depthwise (= V: stride_h, dilation_h, top/bottom pads) → horizontal
[R, 1, 1, kw] depthwise (= H: the width ones) → last [F, R, 1, 1] + bias (= A, λ folded
in). Zero padding commutes with the bias-free 1×1 and depthwise factors.

Algorithm: a deterministic start from the SVDs of the (p, q) slices of W rotated onto the
eigenbases of its spatial unfoldings (all kh·kw·min(F, C) terms reproduce W exactly,
``cp_exact_rank_upper_bound``; the R largest are kept), then at most ``max_iter`` ALS
sweeps with MTTKRPs as GEMMs on the 4-way tensor (no large Khatri–Rao product), a ridge of
``ridge · trace/R`` on the normal equations, Bro's line search, and the fit tracked without
reconstructing W; ALS stops when the relative error improves by less than ``tol`` in a
sweep. Memory: O(size(W) + (F + C + kh·kw)·R + R²), GEMM temporaries in blocks.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from onnxopt.decomp.svd import conv_weight_float64

from ._blas import blas_threads as _blas_threads

__all__ = [
    "CP",
    "DEFAULT_MAX_ITER",
    "DEFAULT_RIDGE",
    "DEFAULT_TOL",
    "cp4",
    "cp4_reconstruct",
    "cp_exact_rank_upper_bound",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_ITER = 100
DEFAULT_TOL = 1e-4
DEFAULT_RIDGE = 1e-8
_MIN_BLOCK = 1 << 22


class CP(NamedTuple):
    last: np.ndarray  # [F, R, 1, 1]
    first: np.ndarray  # [R, C, 1, 1]
    vertical: np.ndarray  # [R, 1, kh, 1]
    horizontal: np.ndarray  # [R, 1, 1, kw]
    rel_error: float
    iterations: int  # ALS sweeps run (0 when the constructive start was used as is)


def cp_exact_rank_upper_bound(W: np.ndarray) -> int:
    """kh·kw·min(F, C): a rank at which an exact CP of W exists by construction (one SVD
    per spatial slice); ``cp4`` at this rank or above returns it (error ~1e-7)."""
    F, C, kh, kw = np.shape(W)
    return kh * kw * min(F, C)


def cp4_reconstruct(last, first, vertical, horizontal) -> np.ndarray:
    """W_hat[f,c,i,j] = Σ_r last[f,r] first[r,c] vertical[r,i] horizontal[r,j] (float64)."""
    A = np.asarray(last, dtype=np.float64)[:, :, 0, 0]
    B = np.asarray(first, dtype=np.float64)[:, :, 0, 0].T
    V = np.asarray(vertical, dtype=np.float64)[:, 0, :, 0].T
    H = np.asarray(horizontal, dtype=np.float64)[:, 0, 0, :].T
    return _reconstruct(A, B, V, H)


def _reconstruct(A, B, V, H) -> np.ndarray:
    F, R = A.shape
    C, kh, kw = B.shape[0], V.shape[0], H.shape[0]
    kr = (B[:, None, None, :] * V[None, :, None, :] * H[None, None, :, :]).reshape(-1, R)
    return (A @ kr.T).reshape(F, C, kh, kw)


def _spatial_basis(W: np.ndarray, axis: int) -> np.ndarray:
    M = np.moveaxis(W, axis, 0).reshape(W.shape[axis], -1)
    _, vecs = np.linalg.eigh(M @ M.T)
    return vecs[:, ::-1]


def _slice_terms(W: np.ndarray):
    """All kh·kw·min(F, C) orthogonal rank-1 terms, sorted by weight (descending)."""
    F, C, kh, kw = W.shape
    Qv, Qh = _spatial_basis(W, 2), _spatial_basis(W, 3)
    Wr = np.einsum("fcij,ip,jq->pqfc", W, Qv, Qh, optimize=True).reshape(kh * kw, F, C)
    U, s, Vt = np.linalg.svd(Wr, full_matrices=False)  # batched over the kh·kw slices
    m = s.shape[1]
    order = np.argsort(-s.ravel(), kind="stable")
    pq, idx = np.divmod(order, m)
    lam = s.ravel()[order]
    A = U[pq, :, idx].T  # [F, n]
    B = Vt[pq, idx, :].T  # [C, n]
    p, q = np.divmod(pq, kw)
    return lam, A, B, Qv[:, p], Qh[:, q]


def _hosvd_start(W: np.ndarray, rank: int, rng: np.random.Generator):
    """tensorly-style start: leading left singular vectors per mode, random-filled."""
    factors = []
    for axis in range(4):
        M = np.moveaxis(W, axis, 0).reshape(W.shape[axis], -1)
        U, _, _ = np.linalg.svd(M, full_matrices=False)
        U = U[:, :rank]
        if U.shape[1] < rank:
            extra = rng.standard_normal((M.shape[0], rank - U.shape[1]))
            U = np.concatenate([U, extra / np.linalg.norm(extra, axis=0)], axis=1)
        factors.append(U)
    return np.ones(rank), *factors


def _normalise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.linalg.norm(X, axis=0)
    safe = np.where(n > 0, n, 1.0)
    return X / safe, n


def _solve(gram: np.ndarray, rhs: np.ndarray, ridge: float) -> np.ndarray:
    """X = rhs · (gram + ridge·mean(diag)·I)⁻¹ for rhs [n, R]."""
    R = gram.shape[0]
    g = gram.copy()
    g[np.diag_indices(R)] += ridge * max(float(np.trace(gram)) / R, 1e-300)
    return np.linalg.solve(g, rhs.T).T


def _block(n_rows: int, row_elems: int, budget: int) -> int:
    return max(1, min(n_rows, budget // max(row_elems, 1)))


def cp4(
    W: np.ndarray,
    rank: int,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    *,
    init: str = "slices",
    ridge: float = DEFAULT_RIDGE,
    blas_threads: int | None = 1,
    linesearch: bool = True,
    linesearch_pow: float = 2.0,
) -> CP:
    """Rank-``rank`` CP of ``W`` [F, C, kh, kw] by ALS; see the module docstring.

    ``init="slices"`` (default) is the constructive start; ``init="hosvd"`` is tensorly's
    SVD start (random columns where the rank exceeds a mode, drawn with ``seed``), kept
    for comparison. ``rel_error`` is measured on the returned float32 factors.
    ``blas_threads``: see ``_blas`` (one BLAS thread by default; None
    leaves BLAS alone).
    """
    with _blas_threads(blas_threads):
        return _cp4(W, rank, max_iter, tol, seed, progress, init, ridge, linesearch, linesearch_pow)


def _cp4(W, rank, max_iter, tol, seed, progress, init, ridge, linesearch, linesearch_pow) -> CP:
    W = conv_weight_float64(W)
    F, C, kh, kw = W.shape
    rank = int(rank)
    if rank < 1:
        raise ValueError(f"CP rank must be >= 1, got {rank}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if init not in ("slices", "hosvd"):
        raise ValueError(f"init must be 'slices' or 'hosvd', got {init!r}")
    k2 = kh * kw
    bound = cp_exact_rank_upper_bound(W)
    norm_w = float(np.linalg.norm(W))
    if norm_w == 0.0:
        zeros = np.zeros((rank,))
        return _pack(zeros, np.zeros((F, rank)), np.ones((C, rank)), np.ones((kh, rank)), np.ones((kw, rank)), W, 0)

    exact = init == "slices" and rank >= bound
    if init == "slices":
        lam, A, B, V, H = _slice_terms(W)
        if exact:
            # pad with zero-weight components; the conv graph keeps the requested rank
            pad = rank - lam.size
            lam = np.concatenate([lam, np.zeros(pad)])
            A = np.concatenate([A, np.zeros((F, pad))], axis=1)
            B = np.concatenate([B, np.tile(B[:, :1], (1, pad))], axis=1)
            V = np.concatenate([V, np.tile(V[:, :1], (1, pad))], axis=1)
            H = np.concatenate([H, np.tile(H[:, :1], (1, pad))], axis=1)
            return _pack(lam, A, B, V, H, W, 0)
        lam, A, B, V, H = lam[:rank], A[:, :rank], B[:, :rank], V[:, :rank], H[:, :rank]
    else:
        lam, A, B, V, H = _hosvd_start(W, rank, np.random.default_rng(seed))

    # Layouts for the two GEMM-based MTTKRPs (copies of W: O(size(W)) extra memory).
    W_a = W.transpose(0, 2, 3, 1).reshape(F * k2, C)  # rows (f, ij)
    W_b = W.transpose(1, 2, 3, 0).reshape(C * k2, F)  # rows (c, ij)
    budget = max(W.size, _MIN_BLOCK)
    blk_f = _block(F, k2 * rank, budget)
    blk_c = _block(C, k2 * rank, budget)
    norm2 = norm_w * norm_w

    def mttkrp_a(B, V, H):
        # M_A[f,r] = Σ_{c,ij} W[f,c,ij] B[c,r] V[i,r] H[j,r]: GEMM over c, then the small KR
        kr_vh = (V[:, None, :] * H[None, :, :]).reshape(k2, rank)
        M = np.empty((F, rank))
        for s in range(0, F, blk_f):
            e = min(F, s + blk_f)
            T = (W_a[s * k2 : e * k2] @ B).reshape(e - s, k2, rank)
            M[s:e] = np.einsum("fsr,sr->fr", T, kr_vh)
        return M

    def rel_err(lam, grams, X, M):
        # ||W − Ŵ||² = ||W||² − 2⟨W, Ŵ⟩ + ||Ŵ||², with ⟨W, Ŵ⟩ from the last MTTKRP
        inner = float(np.sum(lam * np.einsum("xr,xr->r", X, M)))
        g = grams[0] * grams[1] * grams[2] * grams[3]
        return math.sqrt(max(norm2 - 2.0 * inner + float(lam @ g @ lam), 0.0)) / norm_w

    GA, GB, GV, GH = (X.T @ X for X in (A, B, V, H))
    err = prev = math.inf
    it = 0
    M_a = None  # MTTKRP for the next A update, when a line search already computed it
    last_state = None
    acc_pow, acc_fail = linesearch_pow, 0
    for it in range(1, max_iter + 1):
        kr_vh = (V[:, None, :] * H[None, :, :]).reshape(k2, rank)
        if M_a is None:
            M_a = mttkrp_a(B, V, H)
        A, lam = _normalise(_solve(GB * GV * GH, M_a, ridge))
        GA = A.T @ A
        M_a = None

        # B update, then P[ij,r] = Σ_{f,c} W A B (shared by V and H); T_B reused if one block
        M = np.empty((C, rank))
        keep = None
        for s in range(0, C, blk_c):
            e = min(C, s + blk_c)
            T = (W_b[s * k2 : e * k2] @ A).reshape(e - s, k2, rank)
            M[s:e] = np.einsum("csr,sr->cr", T, kr_vh)
            if blk_c >= C:
                keep = T
        B, lam = _normalise(_solve(GA * GV * GH, M, ridge))
        GB = B.T @ B
        if keep is not None:
            P = np.einsum("csr,cr->sr", keep, B)
        else:
            P = np.zeros((k2, rank))
            for s in range(0, C, blk_c):
                e = min(C, s + blk_c)
                T = (W_b[s * k2 : e * k2] @ A).reshape(e - s, k2, rank)
                P += np.einsum("csr,cr->sr", T, B[s:e])
        del keep
        P = P.reshape(kh, kw, rank)

        M = np.einsum("ijr,jr->ir", P, H)
        V, lam = _normalise(_solve(GA * GB * GH, M, ridge))
        GV = V.T @ V
        M = np.einsum("ijr,ir->jr", P, V)
        H, lam = _normalise(_solve(GA * GB * GV, M, ridge))
        GH = H.T @ H
        err = rel_err(lam, (GA, GB, GV, GH), H, M)

        if linesearch and last_state is not None:
            # Extrapolate along the last sweep's step (Bro 1998; tensorly's linesearch):
            # accepted only if the fit improves; the MTTKRP it needs is reused by the next
            # A update, so an accepted jump costs nothing extra.
            jump = it ** (1.0 / acc_pow)
            lamP, AP, BP, VP, HP = last_state
            Bc, nb = _normalise(BP + jump * (B - BP))
            Vc, nv = _normalise(VP + jump * (V - VP))
            Hc, nh = _normalise(HP + jump * (H - HP))
            Ac, lamc = _normalise((AP * lamP + jump * (A * lam - AP * lamP)) * (nb * nv * nh))
            M_c = mttkrp_a(Bc, Vc, Hc)
            grams_c = tuple(X.T @ X for X in (Ac, Bc, Vc, Hc))
            err_c = rel_err(lamc, grams_c, Ac, M_c)
            if err_c < err:
                lam, A, B, V, H, err, M_a = lamc, Ac, Bc, Vc, Hc, err_c, M_c
                GA, GB, GV, GH = grams_c
                acc_fail = 0
            else:
                acc_fail += 1
                if acc_fail >= 4:
                    acc_pow, acc_fail = acc_pow + 1.0, 0
        last_state = (lam, A, B, V, H)

        log.debug("cp4 %s rank %d sweep %d: rel error %.6g", W.shape, rank, it, err)
        if progress is not None:
            progress(it, err)
        if err < 1e-7 or (prev - err) < tol * prev:
            break
        prev = err
    return _pack(lam, A, B, V, H, W, it)


def _pack(lam, A, B, V, H, W, iterations) -> CP:
    F, C, kh, kw = W.shape
    R = lam.size
    last = np.ascontiguousarray((A * lam).reshape(F, R, 1, 1), dtype=np.float32)
    first = np.ascontiguousarray(B.T.reshape(R, C, 1, 1), dtype=np.float32)
    vert = np.ascontiguousarray(V.T.reshape(R, 1, kh, 1), dtype=np.float32)
    horiz = np.ascontiguousarray(H.T.reshape(R, 1, 1, kw), dtype=np.float32)
    W_hat = cp4_reconstruct(last, first, vert, horiz)
    nw = float(np.linalg.norm(W))
    err = float(np.linalg.norm(W - W_hat)) / nw if nw > 0 else 0.0
    return CP(last, first, vert, horiz, err, iterations)
