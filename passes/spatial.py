"""``spatial``: factor a kh×kw convolution into a kh×1 and a 1×kw convolution
(Jaderberg, Vedaldi & Zisserman 2014, scheme 2).

Algebra: W[f,c,i,j] ≈ Σ_k V[k,c,i] H[f,k,j], the rank-K truncated SVD of W reshaped to the
(C·kh) × (kw·F) matrix M[(c,i), (j,f)] (``onnxopt.decomp.spatial_factors``). Emitted as

    <name>/spatial_vertical    Conv [K, C, kh, 1]   kh×1, C → K   stride_h, dilation_h, top/bottom pads
    <name>/spatial_horizontal  Conv [F, K, 1, kw]   1×kw, K → F   stride_w, dilation_w, left/right pads, + bias

Zero padding commutes with the bias-free vertical conv; ``auto_pad`` SAME_* is kept on
both factors (each pads only its own axis). Exact at K = min(C·kh, kw·F). Ranks act on
M's singular values (``energy``), on M (``vbmf``) or on the MAC formula (``speedup``).
``refit`` re-solves the 1×kw factor on its im2col windows. 1×1 convolutions are left to
``svd``; for a 1×k or k×1 kernel one factor is a 1×1 conv.
"""
from __future__ import annotations

from onnxopt.decomp import spatial_factors, spatial_macs, spatial_matrix, spatial_singular_values
from onnxopt.passes._decompose import DecomposePass, Decomposition, Factor, Layer
from onnxopt.registry import register


@register
class DecomposeSpatialPass(DecomposePass):
    name = "spatial"
    method = "spatial"
    summary = "split k×k convs into k×1 then 1×k (Jaderberg et al. 2014); refit=true uses calibration data"

    def _try_decompose(self, layer: Layer) -> Decomposition:
        W = layer.weight
        F, C, kh, kw = W.shape
        out_hw, in_hw = layer.cost_hw()
        rank = self._select_rank(
            min(C * kh, kw * F),
            singular_values=lambda: spatial_singular_values(W),
            vbmf_matrix=lambda: spatial_matrix(W),
            macs_for=lambda k: spatial_macs(C, F, kh, kw, k, out_hw, in_hw),
            original_macs=layer.macs,
        )
        macs = spatial_macs(C, F, kh, kw, rank, out_hw, in_hw)
        self._check_macs_drop(layer, macs)
        factors = spatial_factors(W, rank)
        vertical = layer.conv.as_attributes(axes=[0], kernel=(kh, 1))
        horizontal = layer.conv.as_attributes(axes=[1], kernel=(1, kw))
        return Decomposition(ranks={"K": rank}, macs_after=macs, rel_error=factors.rel_error, factors=[
            Factor("vertical", "Conv", factors.vertical, vertical),
            Factor("horizontal", "Conv", factors.horizontal, horizontal),
        ])
