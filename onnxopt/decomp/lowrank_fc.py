"""Low-rank factorisation of a fully connected (Gemm / MatMul) weight.

Y = X @ Wm with Wm [K, N] becomes Y = (X @ first) @ second, first [K, R], second [R, N],
the truncated SVD of Wm (see ``svd.truncated_svd``; √S is split between the factors).
The bias goes on the second product. MACs per row drop from K·N to R·(K + N).

ONNX Gemm with transB=1 stores Wᵀ [N, K]: transpose before calling and after, or emit
the factors with transB=0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .svd import relative_error, truncated_svd

__all__ = ["LowRankMatrix", "lowrank_matrix"]


class LowRankMatrix(NamedTuple):
    first: np.ndarray  # [K, R]
    second: np.ndarray  # [R, N]
    rel_error: float


def lowrank_matrix(Wm: np.ndarray, rank: int) -> LowRankMatrix:
    """Rank-``rank`` factors (float32) with ``first @ second ≈ Wm``; exact at min(K, N)."""
    first, second = truncated_svd(Wm, rank)
    err = relative_error(Wm, first.astype(np.float64) @ second.astype(np.float64))
    return LowRankMatrix(first, second, err)
