"""Bias correction of quantized weights (Nagel et al. 2019, "Data-Free Quantization", §4.2,
empirical variant), for the ``int8`` pass.

Rounding the weights of a layer shifts the *mean* of its output: with ``W̃ = W + ΔW``,
``E[y̌] − E[y] = E[op(x, ΔW)]`` per output channel, which is not zero for a finite number of
weights, and a deep network accumulates these shifts layer after layer. The shift is
measured exactly (padding, strides, groups included) by running the float model with one
extra node per Conv/Gemm, ``op(x, ΔW)`` on the layer's own float input ``x``, averaged over
the calibration samples, batch and spatial positions; it is subtracted from the layer's
quantized int32 bias (scale ``s_x·s_w``). Float inputs, not quantized ones, keep each
layer's correction independent of the others (correcting by the total shift double-counts).

Memory: samples are streamed (one sample's activations plus one running sum per output
channel); the error model, a second copy of the float model with a float32 ΔW per layer, is
about three times the weights at the peak (over 2 GB it fails to serialize: the pass warns).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxopt.analysis import attribute
from onnxopt.passbase import Feeds

from . import _quant_common as qc

_OPS = ("Conv", "Gemm")
_SUFFIX = "_onnxopt_weight_error"


@dataclass
class _Layer:
    output: str  # the extra output conv(x, ΔW) in the error model
    bias: onnx.TensorProto  # the quantized model's int32 bias initializer, corrected in place
    bias_scale: np.ndarray


@dataclass
class Correction:
    layers: int  # layers whose bias was corrected
    mean_abs_shift: float  # mean |E[conv(x, ΔW)]| removed, in output units
    max_abs_shift: float
    samples: int


def correct_bias(float_model: onnx.ModelProto, quantized: onnx.ModelProto,
                 samples: Callable[[], Iterable[Feeds]], progress: Callable[[int], None] | None = None
                 ) -> Correction | None:
    """Correct ``quantized``'s int32 biases in place; None when no layer qualifies (or no sample)."""
    layers, error_model = _error_model(float_model, quantized)
    if not layers:
        return None
    means, count = _channel_means(error_model, [layer.output for layer in layers], samples, progress)
    if count == 0:
        return None
    shifts = []
    for layer, mean in zip(layers, means):
        bias = numpy_helper.to_array(layer.bias).astype(np.int64)
        steps = np.round(mean / layer.bias_scale).astype(np.int64)
        info = np.iinfo(np.int32)
        corrected = np.clip(bias - steps, info.min, info.max).astype(np.int32)
        layer.bias.CopyFrom(numpy_helper.from_array(corrected.reshape(bias.shape), layer.bias.name))
        shifts.append(np.abs(mean))
    flat = np.concatenate(shifts)
    return Correction(len(layers), float(flat.mean()), float(flat.max()), count)


def _error_model(float_model: onnx.ModelProto, quantized: onnx.ModelProto) -> tuple[list[_Layer], onnx.ModelProto]:
    """The float model plus, for every quantized Conv/Gemm with a quantized bias, a copy of
    the node that computes ``op(x, ΔW)`` (no bias) as an extra graph output."""
    q_inits = {t.name: t for t in quantized.graph.initializer}
    q_producer = {o: n for n in quantized.graph.node for o in n.output}
    q_nodes = {n.name: n for n in quantized.graph.node if n.name}
    uses: dict[str, int] = {}
    for node in quantized.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    f_inits = {t.name: t for t in float_model.graph.initializer}

    error = onnx.ModelProto()
    error.CopyFrom(float_model)
    layers = []
    for node in float_model.graph.node:
        q_node = q_nodes.get(node.name)
        if node.op_type not in _OPS or q_node is None or q_node.op_type != node.op_type or len(q_node.input) < 3:
            continue
        if len(node.input) < 2 or node.input[1] not in f_inits:
            continue
        weight = _dequantized(q_node.input[1], q_producer, q_inits)
        bias = _quantized_bias(q_node.input[2], q_producer, q_inits, uses)
        if weight is None or bias is None:
            continue
        float_weight = numpy_helper.to_array(f_inits[node.input[1]]).astype(np.float64)
        if weight.shape != float_weight.shape:
            continue
        delta_name, output = node.name + _SUFFIX + "_dw", node.name + _SUFFIX
        error.graph.initializer.append(numpy_helper.from_array((weight - float_weight).astype(np.float32), delta_name))
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "beta"}
        error.graph.node.append(helper.make_node(node.op_type, [node.input[0], delta_name], [output],
                                                 name=node.name + _SUFFIX, **attributes))
        error.graph.output.append(helper.make_empty_tensor_value_info(output))
        layers.append(_Layer(output, bias[0], bias[1]))
    return layers, error


def _dequantized(name: str, producer: dict, inits: dict) -> np.ndarray | None:
    """The float value of a constant ``DequantizeLinear`` output, else None."""
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or any(i and i not in inits for i in dq.input):
        return None
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    if scale.size > 1:  # per-channel along ``axis``
        axis = attribute(dq, "axis", 1)
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) else zero
    return (q - zero) * scale


def _quantized_bias(name: str, producer: dict, inits: dict, uses: dict) -> tuple[onnx.TensorProto, np.ndarray] | None:
    """The int32 initializer behind a bias ``DequantizeLinear`` (zero point 0) and its scale."""
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
        return None
    bias = inits[dq.input[0]]
    if bias.data_type != onnx.TensorProto.INT32 or uses.get(dq.input[0], 0) != 1 or uses.get(name, 0) != 1:
        return None  # only a bias of its own, in the int32 form the integer kernels read
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64).reshape(-1)
    return bias, scale


def _channel_means(model: onnx.ModelProto, outputs: list[str], samples: Callable[[], Iterable[Feeds]],
                   progress: Callable[[int], None] | None) -> tuple[list[np.ndarray], int]:
    """Per output, the mean over every axis but 1 (channels), accumulated over the samples."""
    session = qc.ort_session(model)
    sums: list[np.ndarray] | None = None
    counts = np.zeros(len(outputs))
    used = 0
    for feeds in samples():
        values = session.run(outputs, feeds)
        if sums is None:
            sums = [np.zeros(v.shape[1]) for v in values]
        for i, value in enumerate(values):
            axes = tuple(a for a in range(value.ndim) if a != 1)
            sums[i] += value.astype(np.float64).sum(axis=axes)
            counts[i] += value.size / value.shape[1]
        used += 1
        del feeds, values  # before the next sample arrives: hold one at a time
        if progress is not None:
            progress(used)
    if sums is None:
        return [np.zeros(0) for _ in outputs], 0
    return [s / c for s, c in zip(sums, counts)], used
