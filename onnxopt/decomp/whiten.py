"""Activation-aware (whitened) low-rank factorisation (SVD-LLM, ASVD; "distribution-aware" Tucker).

A layer Y = X·W (W [K, N], rows x of X) with the input second moment Σ = E[xᵀx] = S·S (S
symmetric) loses E‖x(W − Ŵ)‖² = ‖S(W − Ŵ)‖²_F on its real inputs. The best rank-r Ŵ in that
norm is S⁻¹·trunc_r(S·W): with S·W = U·diag(s)·Vᵀ, first = S⁻¹·U_r·√s_r, second = √s_r·V_rᵀ,
and the discarded s_i² are the output error on the calibration data (so ``energy`` on s
selects by output error). Conv (Tucker-2): Σ over input channels; the Tucker-2 of W ×_C S
(taps taken as uncorrelated), its input factor mapped back by S⁻¹.

Regularisation: Σ' = (Σ/m + δ·I)/(1 + δ), m the mean eigenvalue, δ = ``damping``: a
singular Σ stays invertible (S⁻¹ amplifies at most √((1+δ)/δ)), directions the data never
visits keep some weight error in the objective, Σ = c·I gives exactly the plain SVD; an
all-zero or non-finite Σ falls back to the plain SVD.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .lowrank_fc import LowRankMatrix
from .ranks import select_rank
from .svd import relative_error
from .tucker import Tucker2, tucker2, tucker2_reconstruct

__all__ = [
    "DEFAULT_DAMPING",
    "SecondMoment",
    "WhitenedSVD",
    "Whitening",
    "whiten_input_mode",
    "whitened_lowrank",
    "whitened_svd",
    "whitened_tucker2",
    "whitening",
]

DEFAULT_DAMPING = 1e-2
_CHUNK_ROWS = 8192  # rows converted to float64 at a time (bounds the update's memory)


class SecondMoment:
    """Streaming E[xᵀx] of the rows of a layer's input: a d×d float64 accumulator."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.sum = np.zeros((self.dim, self.dim))
        self.count = 0

    def update(self, rows: np.ndarray) -> None:
        """Add the rows of ``rows`` [n, dim] (any float dtype)."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows [n, {self.dim}], got shape {rows.shape}")
        for start in range(0, rows.shape[0], _CHUNK_ROWS):
            chunk = rows[start:start + _CHUNK_ROWS].astype(np.float64)
            self.sum += chunk.T @ chunk
        self.count += rows.shape[0]

    def matrix(self) -> np.ndarray:
        """The second moment [dim, dim] (zeros before any row)."""
        return self.sum / max(self.count, 1)


class Whitening(NamedTuple):
    root: np.ndarray  # S [K, K], symmetric, S·S = the regularised Σ
    inverse_root: np.ndarray  # S⁻¹ [K, K]


def whitening(second_moment: np.ndarray, damping: float = DEFAULT_DAMPING) -> Whitening:
    """Symmetric square root of the regularised, normalised ``second_moment`` and its inverse
    (module docstring); the identity for an all-zero or non-finite moment."""
    sigma = np.asarray(second_moment, dtype=np.float64)
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise ValueError(f"expected a square second moment, got shape {sigma.shape}")
    if not damping > 0:
        raise ValueError(f"damping must be > 0, got {damping}")
    dim = sigma.shape[0]
    sigma = 0.5 * (sigma + sigma.T)
    mean = float(np.trace(sigma)) / dim if dim else 0.0
    if not (np.isfinite(mean) and mean > 0 and np.all(np.isfinite(sigma))):
        eye = np.eye(dim)
        return Whitening(eye, eye.copy())
    values, vectors = np.linalg.eigh(sigma / mean)
    values = (np.maximum(values, 0.0) + damping) / (1.0 + damping)
    root = (vectors * np.sqrt(values)) @ vectors.T
    inverse_root = (vectors / np.sqrt(values)) @ vectors.T
    return Whitening(root, inverse_root)


class WhitenedSVD(NamedTuple):
    """The SVD of S·W, kept to pick a rank (``singular_values``) and then factor once."""

    weight: np.ndarray  # W [K, N], float64
    inverse_root: np.ndarray  # S⁻¹ [K, K]
    U: np.ndarray
    singular_values: np.ndarray  # s of S·W, descending: s_i² is output energy
    Vt: np.ndarray

    @property
    def whitened(self) -> np.ndarray:
        """S·W, the matrix whose spectrum ``singular_values`` is (e.g. for EVBMF)."""
        return (self.U * self.singular_values) @ self.Vt

    def output_rel_error(self, rank: int) -> float:
        """√(Σ_{i≥rank} s_i² / Σ s_i²): the relative output error of rank ``rank`` on the
        (regularised) calibration distribution."""
        energy = self.singular_values ** 2
        total = float(energy.sum())
        return float(np.sqrt(energy[rank:].sum() / total)) if total > 0 else 0.0

    def lowrank(self, rank: int) -> LowRankMatrix:
        """Rank-``rank`` factors (float32) ``first`` [K, rank], ``second`` [rank, N];
        ``rel_error`` is the weight error ‖W − first·second‖/‖W‖."""
        full = self.singular_values.size
        rank = int(rank)
        if not 1 <= rank <= full:
            raise ValueError(f"rank must be in [1, {full}] for a {self.weight.shape[0]}x{self.weight.shape[1]} "
                             f"matrix, got {rank}")
        root = np.sqrt(self.singular_values[:rank])
        first = (self.inverse_root @ self.U[:, :rank]) * root
        second = root[:, None] * self.Vt[:rank]
        first, second = first.astype(np.float32), second.astype(np.float32)
        error = relative_error(self.weight, first.astype(np.float64) @ second.astype(np.float64))
        return LowRankMatrix(first, second, error)


def whitened_svd(W: np.ndarray, second_moment: np.ndarray | Whitening, damping: float = DEFAULT_DAMPING) -> WhitenedSVD:
    """SVD of S·W for ``W`` [K, N] and the input's ``second_moment`` [K, K] (or a
    :class:`Whitening` already computed from it)."""
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {W.shape}")
    white = second_moment if isinstance(second_moment, Whitening) else whitening(second_moment, damping)
    if white.root.shape != (W.shape[0], W.shape[0]):
        raise ValueError(f"second moment of shape {white.root.shape} does not match a weight of {W.shape[0]} rows")
    U, s, Vt = np.linalg.svd(white.root @ W, full_matrices=False)
    return WhitenedSVD(W, white.inverse_root, U, s, Vt)


def whitened_lowrank(W: np.ndarray, second_moment: np.ndarray | Whitening, rank: int | None = None, *,
                     energy: float | None = None, damping: float = DEFAULT_DAMPING) -> LowRankMatrix:
    """Rank-``rank`` (or the smallest rank keeping ``energy`` of the whitened spectrum)
    factors ``first @ second ≈ W`` minimising the output error on inputs with
    ``second_moment``; exact at rank min(K, N)."""
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank and energy")
    svd = whitened_svd(W, second_moment, damping)
    if energy is not None:
        rank = select_rank(svd.singular_values, svd.singular_values.size, energy=energy)
    return svd.lowrank(rank)


def whiten_input_mode(W: np.ndarray, white: Whitening) -> np.ndarray:
    """A conv weight [F, C, kh, kw] with S applied on its input-channel mode (W ×_C S): its
    Tucker-2 error is the output error for inputs with the channels' second moment (taps
    treated as uncorrelated)."""
    return np.einsum("fdij,dc->fcij", np.asarray(W, dtype=np.float64), white.root, optimize=True)


def whitened_tucker2(W: np.ndarray, rank_out: int, rank_in: int, second_moment: np.ndarray | Whitening, *,
                     damping: float = DEFAULT_DAMPING, **tucker_options) -> tuple[Tucker2, float]:
    """Distribution-aware Tucker-2 of ``W`` [F, C, kh, kw] for inputs whose channels have
    ``second_moment`` [C, C]: Tucker-2 (HOOI) of W ×_C S, then ``first`` ×_C S⁻¹, so the
    input factor keeps the channel directions the data uses. Returns the factors (their
    ``rel_error`` the weight error ‖W − Ŵ‖/‖W‖) and the relative output error of the
    whitened tensor."""
    W = np.asarray(W, dtype=np.float64)
    white = second_moment if isinstance(second_moment, Whitening) else whitening(second_moment, damping)
    if white.root.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"second moment of shape {white.root.shape} does not match {W.shape[1]} input channels")
    whitened = tucker2(whiten_input_mode(W, white), rank_out, rank_in, **tucker_options)
    first = np.einsum("ad,dc->ac", whitened.first[:, :, 0, 0].astype(np.float64), white.inverse_root)
    first = np.ascontiguousarray(first[:, :, None, None], dtype=np.float32)
    W_hat = tucker2_reconstruct(first, whitened.core, whitened.last)
    norm = float(np.linalg.norm(W))
    error = float(np.linalg.norm(W - W_hat)) / norm if norm > 0 else 0.0
    return Tucker2(first, whitened.core, whitened.last, error), whitened.rel_error
