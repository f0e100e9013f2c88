"""``separable``: replace a dense convolution by a depthwise convolution with channel
multiplier m followed by a 1×1 convolution (Denton et al. 2014 §3; Chollet 2017).

Algebra: for each input channel c the F × (kh·kw) slice W[:, c, :, :] = U_c S_c V_cᵀ is
truncated to m terms: W[f,c,i,j] ≈ Σ_{k<m} P[f, c·m+k] · D[c·m+k, i, j]
(``onnxopt.decomp.separable_factors``). Emitted as

    <name>/separable_depthwise  Conv [C·m, 1, kh, kw]  kh×kw, group=C (C → C·m)  all strides, dilations, pads
    <name>/separable_pointwise  Conv [F, C·m, 1, 1]    1×1, C·m → F              + bias

Exact at m = min(F, kh·kw). MACs: C·m·(kh·kw + F)·Ho·Wo against C·F·kh·kw·Ho·Wo, so the
layer only gets cheaper when m < F·kh·kw / (kh·kw + F) (m < 8 for a 3×3 kernel with 64
outputs).

The rank is the multiplier m, one for all channels. ``multiplier=m`` (or ``rank=m``) sets
it; ``rank`` < 1 is a fraction of min(F, kh·kw); ``energy`` acts on the aggregated per-
channel spectrum sqrt(Σ_c s_ck²); ``vbmf`` takes the mean (rounded up) of the EVBMF ranks
of the C per-channel slices; ``speedup`` solves the MAC formula. ``round`` does not apply
(m ≤ kh·kw is small; the depthwise width C·m is a multiple of C already).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnxopt.passes._decompose import DecomposePass, Decomposition, Factor, Layer, RankOptions

from onnxopt.passbase import option
from onnxopt.registry import register


@dataclass(frozen=True)
class SeparableOptions(RankOptions):
    multiplier: int | None = option(None, "channel multiplier m of the depthwise factor (a rank selector)")

    def __post_init__(self):
        super().__post_init__()
        if self.multiplier is not None and self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")

    def _extra_selectors(self) -> list[str]:
        return ["multiplier"] if self.multiplier is not None else []

    @property
    def selector(self):
        if self.multiplier is not None:
            return "rank", int(self.multiplier)  # an absolute rank (a float would be a fraction)
        return super().selector

    def describe_selector(self) -> str:
        return f"multiplier={self.multiplier}" if self.multiplier is not None else super().describe_selector()


@register
class DecomposeSeparablePass(DecomposePass):
    name = "separable"
    method = "separable"
    Options = SeparableOptions
    summary = "depthwise k×k (multiplier m) → 1×1 (Denton et al. 2014); refit=true uses calibration data"

    def _try_decompose(self, layer: Layer) -> Decomposition | str:
        from onnxopt.decomp import evbmf, separable_factors, separable_macs, separable_singular_values

        W = layer.weight
        F, C, kh, kw = W.shape
        out_hw, _ = layer.cost_hw()
        full = min(F, kh * kw)
        if self.options.selector[0] == "vbmf":
            slices = np.asarray(W, dtype=np.float64).transpose(1, 0, 2, 3).reshape(C, F, kh * kw)
            m = max(1, min(full, math.ceil(float(np.mean([evbmf(s) for s in slices])))))
        else:
            m = self._select_rank(
                full,
                singular_values=lambda: separable_singular_values(W),
                macs_for_rank=lambda k: separable_macs(C, F, kh, kw, k, out_hw),
                original_macs=layer.macs,
                round_to=1,
            )
        macs = separable_macs(C, F, kh, kw, m, out_hw)
        reason = self._macs_reason(layer, macs)
        if reason:
            return reason
        factors = separable_factors(W, m)
        conv = layer.conv
        return Decomposition(
            ranks={"m": m},
            factors=[
                Factor("depthwise", "Conv", factors.depthwise, conv.as_attributes(group=C)),
                Factor("pointwise", "Conv", factors.pointwise, conv.as_attributes(kernel=(1, 1), keep_spatial=False)),
            ],
            macs_after=macs,
            rel_error=factors.rel_error,
        )
