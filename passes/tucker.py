"""``tucker`` (alias ``bottleneck``): Tucker-2 decomposition of a convolution on its channel
modes (Kim et al. 2016).

Algebra: W[f,c,i,j] ≈ Σ_{a,b} U_out[f,b] · G[b,a,i,j] · U_in[c,a] with orthonormal
U_out [F, R2], U_in [C, R1] and the core G = W ×_F U_outᵀ ×_C U_inᵀ (``onnxopt.decomp.tucker2``):

    <name>/tucker_first  Conv [R1, C, 1, 1]    1×1, C → R1
    <name>/tucker_core   Conv [R2, R1, kh, kw] kh×kw, R1 → R2   all strides, dilations, pads / auto_pad
    <name>/tucker_last   Conv [F, R2, 1, 1]    1×1, R2 → F      + bias

Exact at R1 = C, R2 = F. Ranks: ``energy`` / ``vbmf`` act on each unfolding (mode F:
[F, C·kh·kw], mode C: [C, F·kh·kw]) separately; ``rank`` applies to both modes; ``speedup``
keeps R1/C = R2/F. Both ranks are rounded up to a multiple of ``round``. ``whiten`` (on by
default with calibration data) factors W ×_C S instead, S² the second moment of the input
channels, and maps the input factor back by S⁻¹ (distribution-aware Tucker,
``onnxopt.decomp.whitened_tucker2``) at the ranks the weight's own unfoldings select. ``refit`` re-solves ``tucker_last`` and the bias. 1×1 convolutions are left to
``svd``.
"""
from __future__ import annotations

from onnxopt.decomp import (
    tucker2,
    tucker2_unfolding_singular_values,
    tucker2_unfoldings,
    tucker_macs,
    whitened_tucker2,
    whitening,
)
from onnxopt.passes._decompose import DecomposePass, Decomposition, Factor, Layer, WhitenOptions
from onnxopt.registry import register


@register
class DecomposeTuckerPass(DecomposePass):
    name = "tucker"
    aliases = ("bottleneck",)
    method = "tucker"
    Options = WhitenOptions
    summary = "Tucker-2 bottleneck 1×1 → k×k → 1×1 (Kim et al. 2016); refit=true uses calibration data"

    def _try_decompose(self, layer: Layer) -> Decomposition:
        W = layer.weight
        F, C, kh, kw = W.shape
        out_hw, in_hw = layer.cost_hw()
        white = whitening(layer.input_moment) if layer.input_moment is not None else None

        def macs_for(rank_out: int, rank_in: int) -> float:
            return tucker_macs(C, F, kh, kw, rank_out, rank_in, out_hw, in_hw)

        rank_out, rank_in = self._select_rank(
            (F, C),
            # ranks from the weight's own unfoldings, whitened or not: the same ranks and MACs
            singular_values=lambda: tucker2_unfolding_singular_values(W),
            vbmf_matrix=lambda: tucker2_unfoldings(W),
            macs_for=macs_for,
            original_macs=layer.macs,
        )
        macs = macs_for(rank_out, rank_in)
        self._check_macs_drop(layer, macs)
        details = {}
        if white:
            factors, output_error = whitened_tucker2(W, rank_out, rank_in, white)
            details = {"whitened": True, "output_rel_error": round(output_error, 6)}
        else:
            factors = tucker2(W, rank_out, rank_in)
        pointwise = {"kernel": (1, 1), "keep_spatial": False}
        return Decomposition(
            ranks={"R1": rank_in, "R2": rank_out},
            factors=[
                Factor("first", "Conv", factors.first, layer.conv.as_attributes(**pointwise)),
                Factor("core", "Conv", factors.core, layer.conv.as_attributes()),
                Factor("last", "Conv", factors.last, layer.conv.as_attributes(**pointwise)),
            ],
            macs_after=macs,
            rel_error=factors.rel_error,
            details=details,
        )
