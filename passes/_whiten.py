"""Input statistics for activation-aware factorisation (``whiten``): per layer, the second
moment E[xᵀx] of its real input on the calibration data, which
:mod:`onnxopt.decomp.whiten` factors against (SVD-LLM / ASVD whitening).

The rows x are: for ``MatMul`` the input's last axis (token rows of [batch, seq, K]
activations, padded tokens left out where an attention mask marks them); for ``Gemm`` the
rows of A (columns when transA); for ``Conv`` the input channels at every pixel a 1×1
kernel reads (its strides applied), or at every pixel for larger kernels. The model
(before any rewrite) runs once over the data in one onnxruntime session (``_activations``);
memory: a d×d float64 accumulator per distinct input (layers reading the same value, such
as attention's Q/K/V projections, share one), plus one batch of activations.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxopt.decomp import SecondMoment, blas_threads
from onnxopt.passes._activations import stream_values, token_rows
from onnxopt.passes._layers import Layer
from onnxopt.passes._refit import explicit_pads
from onnxopt.runtime import first_line

logger = logging.getLogger(__name__)


def _row_rule(layer: Layer) -> tuple:
    """What makes two layers reading the same value see the same rows."""
    if layer.kind == "gemm":
        return ("gemm", layer.attributes["transA"])
    if layer.kind == "conv":
        attrs = layer.conv
        if tuple(attrs.kernel) == (1, 1) and tuple(attrs.strides) != (1, 1):
            return ("conv-strided", tuple(attrs.strides), attrs.auto_pad, tuple(attrs.pads))
        return ("conv",)
    return ("matmul",)


def input_rows(layer: Layer, x: np.ndarray, tokens: np.ndarray | None) -> np.ndarray:
    """The rows [n, d] of one batch of ``layer``'s input ``x`` (module docstring)."""
    if layer.kind == "gemm":
        return x.T if layer.attributes["transA"] else x
    if layer.kind == "conv":
        rule = _row_rule(layer)
        if rule[0] == "conv-strided":
            sh, sw = rule[1]
            top, left = explicit_pads(layer.conv.as_attributes(kernel=(1, 1)), (1, 1), x.shape[2:])[:2]
            x = x[:, :, (-top) % sh::sh, (-left) % sw::sw]
        return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
    return token_rows(x, tokens)


def collect_input_moments(model: ir.Model, layers: list[Layer], *, context, report, pass_name: str) -> None:
    """Set ``layer.input_moment`` for every layer of ``layers`` from ``context.calibration()``;
    ``report.figures["whiten"]`` says on how much data. A failure (data, onnxruntime) becomes a
    warning and leaves the moments unset: those layers are factored without whitening."""
    if not layers:
        return
    try:
        with blas_threads(1):  # d×d updates: BLAS threads cost more than they give
            moments, batches = _collect(model, layers, context, pass_name)
    except Exception as exc:
        report.warn(f"whitening skipped: {type(exc).__name__}: {first_line(exc)}")
        logger.info("whitening statistics failed", exc_info=True)
        return
    if batches == 0:
        report.warn("whiten: the calibration data yielded no batch: the weights are factored without whitening")
        return
    rows = []
    for layer in layers:
        moment = moments[_key(layer)]
        if moment.count > 0:
            layer.input_moment = moment.matrix()
            rows.append(moment.count)
    report.figures["whiten"] = {
        "layers": len(rows), "batches": batches, "rows_min": min(rows, default=0),
        "data": context.calibration_description,
    }


def _key(layer: Layer) -> tuple:
    return (layer.node.inputs[0].name, *_row_rule(layer))


def _collect(model: ir.Model, layers: list[Layer], context, pass_name: str) -> tuple[dict, int]:
    first_of: dict[tuple, Layer] = {}
    for layer in layers:
        first_of.setdefault(_key(layer), layer)
    names = list(dict.fromkeys(key[0] for key in first_of))
    elem_types = {layer.node.inputs[0].name: ir.DataType.from_numpy(layer.dtype).value for layer in layers}
    moments = {key: SecondMoment(_dim(layer)) for key, layer in first_of.items()}
    batches = 0
    for values, tokens in stream_values(ir.to_proto(model), names, elem_types, context.calibration):
        for key, layer in first_of.items():
            moments[key].update(input_rows(layer, np.asarray(values[key[0]]), tokens))
        batches += 1
        context.progress(f"{pass_name}: input statistics, batch {batches}", batches, 0)
    return moments, batches


def _dim(layer: Layer) -> int:
    return layer.weight.shape[1] if layer.kind == "conv" else layer.weight.shape[0]
