"""``svd``: low-rank factorisation of fully connected layers and 1×1 convolutions
(Denton et al. 2014).

Algebra: a weight Wm [K, N] (Y = X·Wm) ≈ first [K, R] · second [R, N], the truncated SVD
with √S split between the factors (``onnxopt.decomp.lowrank_matrix``). MACs per row drop
from K·N to R·(K + N). Emitted as

* ``Gemm`` Y = alpha·A'·B' + beta·C (A' = Aᵀ if transA, B' = Bᵀ if transB, so Wm = B'):
  ``<name>/svd_first`` = MatMul(A, first) — or Gemm(A, first, transA=1) when transA —
  then ``<name>/svd_last`` = Gemm(T, second, C, alpha, beta). C is passed through as is.
* ``MatMul`` with a constant 2-D right operand B [K, N] (A may be N-D):
  MatMul(A, first) then MatMul(T, second). No bias.
* 1×1 ``Conv`` W [F, C, 1, 1] (Wm = W[:, :, 0, 0]ᵀ): ``svd_first`` 1×1 C → R carrying the
  strides and pads (zero padding commutes with it: it has no bias), ``svd_last`` 1×1
  R → F + bias.

Exact at R = min(K, N). Ranks: ``energy`` / ``vbmf`` on Wm's singular values / Wm,
``rank`` absolute or a fraction of min(K, N), ``speedup`` on R·(K + N); then rounded up
to a multiple of ``round``. ``refit`` re-solves ``second`` and the bias (Gemm and Conv;
MatMul has no bias, so only its weight). k×k convolutions belong to the other passes.
"""

from __future__ import annotations

import numpy as np
from onnxopt.passes._decompose import DecomposePass, Decomposition, Factor, Layer

from onnxopt.registry import register


@register
class DecomposeSvdPass(DecomposePass):
    name = "svd"
    method = "svd"
    op_types = ("Conv", "Gemm", "MatMul")
    summary = "low-rank Gemm/MatMul/1×1 Conv weights as two thin layers (Denton et al. 2014)"

    def _kernel_reason(self, kh: int, kw: int) -> str | None:
        if (kh, kw) != (1, 1):
            return f"{kh}×{kw} kernel: svd factors 1×1 convolutions (use tucker, spatial, cp or separable)"
        return None

    def _try_decompose(self, layer: Layer) -> Decomposition | str:
        from onnxopt.decomp import lowrank_matrix, singular_values, svd_macs

        if layer.kind == "conv":
            Wm = layer.weight[:, :, 0, 0].T  # [C, F]
            rows = layer.cost_hw()[0][0] * layer.cost_hw()[0][1]
        else:
            Wm = layer.weight  # [K, N]
            rows = layer.cost_rows()
        K, N = Wm.shape
        rank = self._select_rank(
            min(K, N),
            singular_values=lambda: singular_values(Wm),
            vbmf_matrix=lambda: np.asarray(Wm, dtype=np.float64),
            macs_for_rank=lambda r: svd_macs(K, N, r, rows),
            original_macs=layer.macs,
        )
        macs = svd_macs(K, N, rank, rows)
        reason = self._macs_reason(layer, macs)
        if reason:
            return reason
        low = lowrank_matrix(Wm, rank)
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
                zero_c = np.zeros(rank, np.float32) if self._opset < 11 else None  # C is optional from opset 11
                first = Factor("first", "Gemm", low.first, {"transA": 1}, bias=zero_c)
            else:
                first = Factor("first", "MatMul", low.first)
            factors = [first, Factor("last", "Gemm", low.second, {"alpha": attrs["alpha"], "beta": attrs["beta"]})]
        else:
            factors = [Factor("first", "MatMul", low.first), Factor("last", "MatMul", low.second)]
        return Decomposition(ranks={"R": rank}, factors=factors, macs_after=macs, rel_error=low.rel_error)
