"""``svd``: low-rank factorisation of fully connected layers and 1×1 convolutions
(Denton et al. 2014).

Algebra: a weight Wm [K, N] (Y = X·Wm) ≈ first [K, R] · second [R, N], the truncated SVD
with √S split between the factors (``onnxopt.decomp.lowrank_matrix``). Emitted as

* ``Gemm`` (Wm = B' = Bᵀ if transB): ``svd_first`` = MatMul(A, first), or Gemm(A, first,
  transA=1) when transA; ``svd_last`` = Gemm(T, second, C, alpha, beta).
* ``MatMul`` with a constant 2-D B [K, N] (A may be N-D): MatMul(A, first), MatMul(T, second).
* 1×1 ``Conv`` (Wm = W[:, :, 0, 0]ᵀ): ``svd_first`` 1×1 C → R with the strides and pads,
  ``svd_last`` 1×1 R → F + bias.

Exact at R = min(K, N); MACs per row drop from K·N to R·(K + N). Ranks act on Wm; then
rounded up to a multiple of ``round``. ``whiten`` (on by default with calibration data)
factors S·Wm instead, S² the second moment of the layer's input rows
(``onnxopt.decomp.whiten``): at the rank the weight's own spectrum selects (so the same
MACs), the truncation then minimises the output error on that data. ``refit`` re-solves ``second`` and
the bias (MatMul: the weight only).
"""
from __future__ import annotations

import numpy as np

from onnxopt.decomp import lowrank_matrix, singular_values, svd_macs, whitened_svd
from onnxopt.passes._decompose import DecomposePass, Decomposition, Factor, Layer, WhitenOptions
from onnxopt.registry import register


@register
class DecomposeSvdPass(DecomposePass):
    name = "svd"
    method = "svd"
    op_types = ("Conv", "Gemm", "MatMul")
    Options = WhitenOptions
    summary = "low-rank Gemm/MatMul/1×1 Conv weights as two thin layers (Denton et al. 2014)"

    def _kernel_reason(self, kh: int, kw: int) -> str | None:
        if (kh, kw) != (1, 1):
            return f"{kh}×{kw} kernel: svd factors 1×1 convolutions (use tucker, spatial, cp or separable)"
        return None

    def _try_decompose(self, layer: Layer) -> Decomposition:
        if layer.kind == "conv":
            Wm = layer.weight[:, :, 0, 0].T  # [C, F]
            rows = layer.cost_hw()[0][0] * layer.cost_hw()[0][1]
        else:
            Wm = layer.weight  # [K, N]
            rows = layer.cost_rows()
        K, N = Wm.shape
        white = whitened_svd(Wm, layer.input_moment) if layer.input_moment is not None else None
        rank = self._select_rank(
            min(K, N),
            # ranks from the weight's own spectrum, whitened or not: the same ranks and MACs as
            # without data, so whitening only changes what the factors fit (the output)
            singular_values=lambda: singular_values(Wm),
            vbmf_matrix=lambda: np.asarray(Wm, dtype=np.float64),
            macs_for=lambda r: svd_macs(K, N, r, rows),
            original_macs=layer.macs,
        )
        macs = svd_macs(K, N, rank, rows)
        self._check_macs_drop(layer, macs)
        low = white.lowrank(rank) if white else lowrank_matrix(Wm, rank)
        details = {"whitened": True, "output_rel_error": round(white.output_rel_error(rank), 6)} if white else {}
        if layer.kind == "conv":
            conv = layer.conv
            factors = [
                Factor("first", "Conv", low.first.T[:, :, None, None], conv.as_attributes(kernel=(1, 1))),
                Factor("last", "Conv", low.second.T[:, :, None, None],
                       conv.as_attributes(kernel=(1, 1), keep_spatial=False)),
            ]
        elif layer.kind == "gemm":
            attrs = layer.attributes
            if attrs["transA"]:
                zero_c = np.zeros(rank, np.float32) if layer.opset < 11 else None  # C is optional from opset 11
                first = Factor("first", "Gemm", low.first, {"transA": 1}, bias=zero_c)
            else:
                first = Factor("first", "MatMul", low.first)
            factors = [first, Factor("last", "Gemm", low.second, {"alpha": attrs["alpha"], "beta": attrs["beta"]})]
        else:
            factors = [Factor("first", "MatMul", low.first), Factor("last", "MatMul", low.second)]
        return Decomposition(ranks={"R": rank}, factors=factors, macs_after=macs, rel_error=low.rel_error,
                             details=details)
