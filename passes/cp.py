"""``cp``: CP (canonical polyadic) decomposition of a convolution (Lebedev et al. 2015).

Algebra: W[f,c,i,j] ≈ Σ_r A[f,r] B[c,r] V[i,r] H[j,r] (``onnxopt.decomp.cp4``: an SVD-based
start, then at most ``max_iter`` ALS sweeps, progress per sweep):

    <name>/cp_first       Conv [R, C, 1, 1]   1×1, C → R
    <name>/cp_vertical    Conv [R, 1, kh, 1]  kh×1, group=R   stride_h, dilation_h, top/bottom pads
    <name>/cp_horizontal  Conv [R, 1, 1, kw]  1×kw, group=R   stride_w, dilation_w, left/right pads
    <name>/cp_last        Conv [F, R, 1, 1]   1×1, R → F      + bias (CP weights λ folded in)

When kh = 1 or kw = 1 the depthwise factors are one, ``cp_depthwise`` [R, 1, kh, kw]. Exact
at R ≥ kh·kw·min(F, C). Ranks: ``rank`` is absolute or a fraction of kh·kw·min(F, C);
``speedup`` solves the MAC formula; ``energy`` and ``vbmf`` take the larger of the two
Tucker-2 ranks they give on the mode-F and mode-C unfoldings (a rank-R CP has both mode
ranks ≤ R, so this is the smallest R that can reach that fit).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxopt.decomp import (
    cp4,
    cp_exact_rank_upper_bound,
    cp_macs,
    round_rank,
    tucker2_unfolding_singular_values,
    tucker2_unfoldings,
)
from onnxopt.passbase import option
from onnxopt.passes._decompose import DecomposePass, Decomposition, Factor, Layer, RankOptions
from onnxopt.registry import register

DEFAULT_MAX_ITER = 25


@dataclass(frozen=True)
class CpOptions(RankOptions):
    max_iter: int = option(DEFAULT_MAX_ITER, "at most this many ALS sweeps per layer (0 = the SVD-based start only)")

    def __post_init__(self):
        super().__post_init__()
        if self.max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {self.max_iter}")


@register
class DecomposeCpPass(DecomposePass):
    name = "cp"
    method = "cp"
    Options = CpOptions
    summary = "CP: 1×1 → k×1 dw → 1×k dw → 1×1 (Lebedev et al. 2015); refit=true uses calibration data"

    def _try_decompose(self, layer: Layer) -> Decomposition:
        W = layer.weight
        F, C, kh, kw = W.shape
        out_hw, in_hw = layer.cost_hw()
        bound = cp_exact_rank_upper_bound(W)
        if self.options.selector[0] in ("energy", "vbmf"):  # the larger Tucker-2 rank (module docstring)
            pair = self._select_rank((F, C), singular_values=lambda: tucker2_unfolding_singular_values(W),
                                     vbmf_matrix=lambda: tucker2_unfoldings(W), round_to=1)
            rank = round_rank(max(pair), bound, self.options.round)
        else:
            rank = self._select_rank(bound, macs_for=lambda r: cp_macs(C, F, kh, kw, r, out_hw, in_hw),
                                     original_macs=layer.macs)
        one_depthwise = kh == 1 or kw == 1  # then the two depthwise factors are one
        macs = cp_macs(C, F, kh, kw, rank, out_hw, in_hw, one_depthwise=one_depthwise)
        self._check_macs_drop(layer, macs)

        def sweep(iteration: int, error: float) -> None:
            if layer.progress is not None:
                layer.progress(f"cp: {layer.name} ALS sweep {iteration}, error {error:.4f}",
                               iteration, self.options.max_iter)

        cp = cp4(W, rank, max_iter=self.options.max_iter, progress=sweep)
        conv = layer.conv
        pointwise = {"kernel": (1, 1), "keep_spatial": False}
        if one_depthwise:
            depthwise = (cp.vertical * cp.horizontal).astype(np.float32)  # [R,1,kh,1]·[R,1,1,kw]
            spatial = [Factor("depthwise", "Conv", depthwise, conv.as_attributes(group=rank))]
        else:
            spatial = [
                Factor("vertical", "Conv", cp.vertical, conv.as_attributes(axes=[0], kernel=(kh, 1), group=rank)),
                Factor("horizontal", "Conv", cp.horizontal, conv.as_attributes(axes=[1], kernel=(1, kw), group=rank)),
            ]
        return Decomposition(
            ranks={"R": rank},
            factors=[
                Factor("first", "Conv", cp.first, conv.as_attributes(**pointwise)),
                *spatial,
                Factor("last", "Conv", cp.last, conv.as_attributes(**pointwise)),
            ],
            macs_after=macs,
            rel_error=cp.rel_error,
            details={"als_sweeps": cp.iterations},
        )
