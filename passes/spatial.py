"""``spatial``: factor a kh×kw convolution into a kh×1 and a 1×kw convolution
(Jaderberg, Vedaldi & Zisserman 2014, scheme 2).

Algebra: W[f,c,i,j] ≈ Σ_k V[k,c,i] H[f,k,j], the rank-K truncated SVD of W reshaped to the
(C·kh) × (kw·F) matrix M[(c,i), (j,f)] (``onnxopt.decomp.spatial_factors``). Emitted as

    <name>/spatial_vertical    Conv [K, C, kh, 1]   kh×1, C → K   stride_h, dilation_h, top/bottom pads
    <name>/spatial_horizontal  Conv [F, K, 1, kw]   1×kw, K → F   stride_w, dilation_w, left/right pads, + bias

Zero padding commutes with the bias-free vertical conv, so each factor pads its own axis;
``auto_pad`` SAME_* is per axis and is kept on both factors (each pads only the axis it
convolves). Exact at K = min(C·kh, kw·F).

MACs: C·K·kh·Ho·Wi + K·F·kw·Ho·Wo against C·F·kh·kw·Ho·Wo (the vertical factor runs at
the output height and the input width). Rank selectors act on the singular values of M
(``energy``), on M itself (``vbmf``), or on that MAC formula (``speedup``); ``rank`` is
absolute or a fraction of min(C·kh, kw·F). With ``refit`` the 1×kw factor is re-solved on
its im2col windows. 1×1 convolutions are left to ``svd``; a 1×k or k×1 kernel is
accepted (one factor is then a 1×1 conv: a low-rank split across channels).
"""

from __future__ import annotations

from onnxopt.passes._decompose import DecomposePass, Decomposition, Factor, Layer

from onnxopt.registry import register


@register
class DecomposeSpatialPass(DecomposePass):
    name = "spatial"
    method = "spatial"
    summary = "split k×k convs into k×1 then 1×k (Jaderberg et al. 2014); refit=true uses calibration data"

    def _try_decompose(self, layer: Layer) -> Decomposition | str:
        from onnxopt.decomp import spatial_factors, spatial_macs, spatial_matrix, spatial_singular_values

        W = layer.weight
        F, C, kh, kw = W.shape
        out_hw, in_hw = layer.cost_hw()
        rank = self._select_rank(
            min(C * kh, kw * F),
            singular_values=lambda: spatial_singular_values(W),
            vbmf_matrix=lambda: spatial_matrix(W),
            macs_for_rank=lambda k: spatial_macs(C, F, kh, kw, k, out_hw, in_hw),
            original_macs=layer.macs,
        )
        macs = spatial_macs(C, F, kh, kw, rank, out_hw, in_hw)
        reason = self._macs_reason(layer, macs)
        if reason:
            return reason
        factors = spatial_factors(W, rank)
        conv = layer.conv
        return Decomposition(
            ranks={"K": rank},
            factors=[
                Factor("vertical", "Conv", factors.vertical, conv.as_attributes(axes=[0], kernel=(kh, 1))),
                Factor("horizontal", "Conv", factors.horizontal, conv.as_attributes(axes=[1], kernel=(1, kw))),
            ],
            macs_after=macs,
            rel_error=factors.rel_error,
        )
