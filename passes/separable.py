"""``separable``: replace a dense convolution by a depthwise convolution with channel
multiplier m followed by a 1×1 convolution (Denton et al. 2014 §3; Chollet 2017).

Algebra: for each input channel c the F × (kh·kw) slice W[:, c, :, :] = U_c S_c V_cᵀ is
truncated to m terms: W[f,c,i,j] ≈ Σ_{k<m} P[f, c·m+k] · D[c·m+k, i, j]
(``onnxopt.decomp.separable_factors``). Emitted as

    <name>/separable_depthwise  Conv [C·m, 1, kh, kw]  kh×kw, group=C (C → C·m)  all strides, dilations, pads
    <name>/separable_pointwise  Conv [F, C·m, 1, 1]    1×1, C·m → F              + bias

Exact at m = min(F, kh·kw); cheaper only when m < F·kh·kw / (kh·kw + F). One m for all
channels: ``multiplier=m`` (or ``rank``, < 1 a fraction of min(F, kh·kw)); ``energy`` acts
on the aggregated spectrum sqrt(Σ_c s_ck²); ``vbmf`` takes the mean EVBMF rank of the
per-channel slices; ``speedup`` solves the MAC formula. ``round`` does not apply.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxopt.decomp import evbmf, separable_factors, separable_macs, separable_singular_values
from onnxopt.passbase import option
from onnxopt.passes._decompose import DecomposePass, Decomposition, Factor, Layer, RankOptions
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

    def _try_decompose(self, layer: Layer) -> Decomposition:
        W = layer.weight
        F, C, kh, kw = W.shape
        out_hw, _ = layer.cost_hw()
        full = min(F, kh * kw)
        if self.options.selector[0] == "vbmf":  # the mean of the per-channel EVBMF ranks
            slices = np.asarray(W, dtype=np.float64).transpose(1, 0, 2, 3).reshape(C, F, kh * kw)
            m = max(1, min(full, math.ceil(float(np.mean([evbmf(s) for s in slices])))))
        else:
            m = self._select_rank(
                full,
                singular_values=lambda: separable_singular_values(W),
                macs_for=lambda k: separable_macs(C, F, kh, kw, k, out_hw),
                original_macs=layer.macs,
                round_to=1,
            )
        macs = separable_macs(C, F, kh, kw, m, out_hw)
        self._check_macs_drop(layer, macs)
        factors = separable_factors(W, m)
        depthwise = layer.conv.as_attributes(group=C)
        pointwise = layer.conv.as_attributes(kernel=(1, 1), keep_spatial=False)
        return Decomposition(ranks={"m": m}, macs_after=macs, rel_error=factors.rel_error, factors=[
            Factor("depthwise", "Conv", factors.depthwise, depthwise),
            Factor("pointwise", "Conv", factors.pointwise, pointwise),
        ])
