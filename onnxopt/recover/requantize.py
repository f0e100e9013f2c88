"""Keep a QDQ model's int32 biases at input scale × weight scale after scales were trained.

onnxruntime fuses a ``DequantizeLinear → Conv/Gemm → QuantizeLinear`` group into one
integer kernel (QLinearConv, …) only where the int32 bias's scale is the product of the
input and weight scales — the convention of its quantizer and of QLinearConv's bias. Once
recovery has trained an activation or weight scale, that product moves away from the
stored bias scale and onnxruntime (1.31, measured) leaves the layer as a float Conv between
dequantize and quantize: correct, but slower. :func:`rescale_biases` re-quantizes each such
bias at the product of the new scales, keeping its value: b = s_b · q_b, q_b' = round(b /
s_b'). A bias whose scale did not follow the convention before training is left. Pure onnx.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

_LAYERS = {"Conv": (0, 1, 2), "ConvTranspose": (0, 1, 2), "Gemm": (0, 1, 2)}  # op -> (input, weight, bias)
_PRODUCT_RTOL = 1e-5


def _bias_groups(model: onnx.ModelProto) -> list[tuple[str, str, str, str, str]]:
    """(input scale, weight scale, bias initializer, bias scale, bias zero point) of each fused layer."""
    producer = {o: n for n in model.graph.node for o in n.output}
    groups = []
    for node in model.graph.node:
        positions = _LAYERS.get(node.op_type)
        if positions is None or len(node.input) <= positions[2] or not node.input[positions[2]]:
            continue
        dequantizers = [producer.get(node.input[i]) for i in positions]
        if any(d is None or d.op_type != "DequantizeLinear" or len(d.input) < 2 for d in dequantizers):
            continue
        x, w, b = dequantizers
        groups.append((x.input[1], w.input[1], b.input[0], b.input[1], b.input[2] if len(b.input) > 2 else ""))
    return groups


def rescale_biases(before: onnx.ModelProto, after: onnx.ModelProto) -> list[str]:
    """Re-quantize, in ``after``, the int32 biases whose scale was input × weight scale in
    ``before`` and no longer is; returns their names."""
    old = {t.name: t for t in before.graph.initializer}
    new = {t.name: t for t in after.graph.initializer}
    changed = []
    for x_scale, w_scale, bias, b_scale, b_zero in _bias_groups(after):
        names = (x_scale, w_scale, bias, b_scale)
        if not all(n in old and n in new for n in names) or new[bias].data_type != onnx.TensorProto.INT32:
            continue
        if b_zero and np.any(numpy_helper.to_array(new[b_zero]) != 0):
            continue
        value = {n: numpy_helper.to_array(old[n]).astype(np.float64) for n in names}
        if not np.allclose(value[b_scale].reshape(-1), (value[x_scale] * value[w_scale]).reshape(-1),
                           rtol=_PRODUCT_RTOL, atol=0):
            continue  # not the convention the fused kernels assume: nothing to keep
        product = (numpy_helper.to_array(new[x_scale]).astype(np.float64)
                   * numpy_helper.to_array(new[w_scale]).astype(np.float64))
        current = numpy_helper.to_array(new[b_scale]).astype(np.float64)
        if product.size not in (1, current.size) or np.allclose(current, product.reshape(-1) if current.ndim
                                                                 else product, rtol=_PRODUCT_RTOL, atol=0):
            continue
        scale = np.broadcast_to(product.reshape(-1) if current.ndim else product, current.shape).astype(np.float32)
        bias_value = numpy_helper.to_array(new[bias]).astype(np.float64) * current
        limits = np.iinfo(np.int32)
        integers = np.clip(np.rint(bias_value / scale.astype(np.float64)), limits.min, limits.max).astype(np.int32)
        new[b_scale].CopyFrom(numpy_helper.from_array(scale, b_scale))
        new[bias].CopyFrom(numpy_helper.from_array(integers, bias))
        changed.append(bias)
    return changed
