"""``cp``: CP (canonical polyadic) decomposition of a convolution (Lebedev et al. 2015).

Algebra: W[f,c,i,j] ≈ Σ_r A[f,r] B[c,r] V[i,r] H[j,r] (``onnxopt.decomp.cp4``: a
constructive start from per-slice SVDs, then at most ``max_iter`` ALS sweeps). Emitted as
1×1 → kh×1 depthwise → 1×kw depthwise → 1×1:

    <name>/cp_first       Conv [R, C, 1, 1]   1×1, C → R
    <name>/cp_vertical    Conv [R, 1, kh, 1]  kh×1, group=R   stride_h, dilation_h, top/bottom pads
    <name>/cp_horizontal  Conv [R, 1, 1, kw]  1×kw, group=R   stride_w, dilation_w, left/right pads
    <name>/cp_last        Conv [F, R, 1, 1]   1×1, R → F      + bias (CP weights λ folded in)

Zero padding commutes with the bias-free 1×1 and depthwise factors. When kh = 1 (or
kw = 1) the two depthwise factors are one: ``cp_depthwise`` [R, 1, kh, kw] with
V[·,r]·H[·,r] and all spatial attributes. Exact at R ≥ kh·kw·min(F, C)
(``cp_exact_rank_upper_bound``).

MACs: C·R·Hi·Wi + R·kh·Ho·Wi + R·(kw + F)·Ho·Wo against C·F·kh·kw·Ho·Wo.

Ranks: ``rank`` is absolute or a fraction of kh·kw·min(F, C); ``speedup`` solves the MAC
formula. CP has no singular values of its own, so ``energy`` and ``vbmf`` take the larger
of the two Tucker-2 ranks the same selector gives on the mode-F and mode-C unfoldings:
a rank-R CP has both mode ranks ≤ R, so this is the smallest R that can reach that
Tucker-2 fit (the CP error is usually larger; the report shows it). ALS cost per sweep is
O(F·C·kh·kw·R); ``max_iter`` bounds it and progress is reported per sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnxopt.passes._decompose import DecomposePass, Decomposition, Factor, Layer, RankOptions

from onnxopt.passbase import option
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

    def _try_decompose(self, layer: Layer) -> Decomposition | str:
        from onnxopt.decomp import (
            cp4,
            cp_exact_rank_upper_bound,
            cp_macs,
            round_rank,
            select_rank_pair,
            tucker2_unfolding_singular_values,
            tucker2_unfoldings,
        )

        W = layer.weight
        F, C, kh, kw = W.shape
        out_hw, in_hw = layer.cost_hw()
        bound = cp_exact_rank_upper_bound(W)
        key, value = self.options.selector
        if key in ("energy", "vbmf"):
            if key == "energy":
                pair = select_rank_pair(tucker2_unfolding_singular_values(W), (F, C), energy=value)
            else:
                pair = select_rank_pair(None, (F, C), vbmf_matrices=tucker2_unfoldings(W))
            rank = round_rank(max(pair), bound, self.options.round)
        else:
            rank = self._select_rank(
                bound,
                macs_for_rank=lambda r: cp_macs(C, F, kh, kw, r, out_hw, in_hw),
                original_macs=layer.macs,
            )
        macs = cp_macs(C, F, kh, kw, rank, out_hw, in_hw)
        if kh == 1 or kw == 1:  # one depthwise factor instead of two
            (ho, wo), (hi, wi) = out_hw, in_hw
            macs = C * rank * hi * wi + rank * (kh * kw + F) * ho * wo
        reason = self._macs_reason(layer, macs)
        if reason:
            return reason

        def sweep(iteration: int, error: float) -> None:
            if self._sweep_progress:  # only from the main thread (jobs=1)
                self.context.progress(f"cp: {layer.name} ALS sweep {iteration}, error {error:.4f}",
                                      iteration, self.options.max_iter)

        cp = cp4(W, rank, max_iter=self.options.max_iter, progress=sweep)
        conv = layer.conv
        pointwise = {"kernel": (1, 1), "keep_spatial": False}
        if kh == 1 or kw == 1:
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
