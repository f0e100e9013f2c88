"""Pure-numpy math of the decomposition passes (never imports onnx; tensorly only lazily,
in ``tensorly_adapter``).

Weights are numpy arrays; conv weights are W[F, C, kh, kw] (ONNX layout). Computation is
float64, returned factors are float32. Where strides, dilations and pads go:

* spatial  — vertical kh×1 factor: stride_h, dilation_h, top/bottom pads;
             horizontal 1×kw factor: stride_w, dilation_w, left/right pads.
* tucker   — the kh×kw core carries all of them; the 1×1 factors none.
* cp       — kh×1 depthwise: the height ones; 1×kw depthwise: the width ones; 1×1 none.
* separable — the kh×kw depthwise factor carries all of them; the 1×1 factor none.

The original bias always goes on the last factor.
"""

from __future__ import annotations

from ._blas import blas_threads
from .costs import (
    conv_output_hw,
    cp_macs,
    dense_conv_macs,
    macs_per_output_pixel,
    matrix_macs,
    separable_macs,
    spatial_macs,
    svd_macs,
    tucker_macs,
)
from .cp import CP, cp4, cp4_reconstruct, cp_exact_rank_upper_bound
from .lowrank_fc import LowRankMatrix, lowrank_matrix
from .ranks import EVBMFResult, evbmf, evbmf_result, round_rank, select_by, select_rank, select_rank_pair
from .refit import LastFactorRefit, im2col
from .separable import (
    Separable,
    separable_channel_singular_values,
    separable_factors,
    separable_reconstruct,
    separable_singular_values,
)
from .spatial import (
    SpatialFactors,
    spatial_factors,
    spatial_matrix,
    spatial_reconstruct,
    spatial_singular_values,
)
from .svd import leading_left_singular_vectors, relative_error, singular_values, truncated_svd
from .tucker import (
    Tucker2,
    tucker2,
    tucker2_reconstruct,
    tucker2_unfolding_singular_values,
    tucker2_unfoldings,
)
from .whiten import (
    SecondMoment,
    WhitenedSVD,
    Whitening,
    whiten_input_mode,
    whitened_lowrank,
    whitened_svd,
    whitened_tucker2,
    whitening,
)

__all__ = [
    "CP",
    "EVBMFResult",
    "LastFactorRefit",
    "LowRankMatrix",
    "SecondMoment",
    "Separable",
    "SpatialFactors",
    "Tucker2",
    "WhitenedSVD",
    "Whitening",
    "blas_threads",
    "conv_output_hw",
    "cp4",
    "cp4_reconstruct",
    "cp_exact_rank_upper_bound",
    "cp_macs",
    "dense_conv_macs",
    "evbmf",
    "evbmf_result",
    "im2col",
    "leading_left_singular_vectors",
    "lowrank_matrix",
    "macs_per_output_pixel",
    "matrix_macs",
    "relative_error",
    "round_rank",
    "select_by",
    "select_rank",
    "select_rank_pair",
    "separable_channel_singular_values",
    "separable_factors",
    "separable_macs",
    "separable_reconstruct",
    "separable_singular_values",
    "singular_values",
    "spatial_factors",
    "spatial_macs",
    "spatial_matrix",
    "spatial_reconstruct",
    "spatial_singular_values",
    "svd_macs",
    "truncated_svd",
    "tucker2",
    "tucker2_reconstruct",
    "tucker2_unfolding_singular_values",
    "tucker2_unfoldings",
    "tucker_macs",
    "whiten_input_mode",
    "whitened_lowrank",
    "whitened_svd",
    "whitened_tucker2",
    "whitening",
]
