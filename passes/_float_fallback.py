"""``keep_float=N``: leave in float the activations whose 8-bit rounding costs most at the outputs.

In a QDQ model each quantized activation ``t`` is ``DequantizeLinear(QuantizeLinear(t))``.
Keeping ``t`` in float replaces that pair by a Clip to the pair's range (the pair may stand
for a ReLU the quantizer removed): its readers read the clipped float ``t``. onnxruntime then
runs ``t``'s readers as float ops, with their weights still rounded to 8 bits, and a Conv
producing ``t`` too (it fuses ``DQ → Conv → Q`` into an integer kernel only with the output
pair); a MatMul or Gemm producer keeps an integer kernel with a float output
(MatMulIntegerToFloat, QGemm).

Sensitivity is measured, not guessed: each activation's pair is removed alone and the model
is scored against the float model on calibration samples: the squared error of the outputs
relative to their spread (:meth:`._output_similarity.FloatReference.relative_error`). The
candidates are then tried most helpful first, each kept only where the model with it (and
the ones kept before it) has a smaller error than without — the gains of single removals do
not add up (rounding errors partly cancel) — until ``N`` are kept or ``TRIALS_PER_KEPT × N``
were tried. Which activations matter depends
on the model: the normalized image that the stem reads (its uint8 grid does not line up
with the photo's pixel grid), a residual stream without ReLU, a detector head.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ._int8_scope import constant_values
from ._output_similarity import FloatReference

#: the scan scores on at least this many samples, however short its time
MIN_SAMPLES = 4
#: the greedy step tries at most this many candidates per activation asked for
TRIALS_PER_KEPT = 3
#: producers that keep an integer kernel when their output pair goes (float output)
_INTEGER_TO_FLOAT = ("MatMul", "Gemm")

_QUANTIZE = "QuantizeLinear"
_DEQUANTIZE = "DequantizeLinear"


@dataclass
class Fallback:
    """What ``keep_float`` did: the activations kept float, with the output error before and after."""

    kept: list[str] = field(default_factory=list)  # activation tensor names, most helpful first
    before: float = 0.0  # relative output error on the calibration samples
    after: float = 0.0
    candidates: int = 0
    samples: int = 0  # calibration samples the scores were measured on
    float_nodes: list[str] = field(default_factory=list)  # producers and readers now running in float


def activation_quantizers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Activation tensor name -> its QuantizeLinear, for every activation (not a stored
    weight) quantized by exactly one QuantizeLinear, per tensor (a stored one-element scale
    and zero point: the range a Clip can keep), neither it nor its dequantized copies being
    graph outputs."""
    single = {t.name for t in model.graph.initializer if int(np.prod(t.dims)) == 1}
    constants = constant_values(model)
    outputs = {o.name for o in model.graph.output}
    dequantized = {}  # a QuantizeLinear's output -> the DequantizeLinear nodes reading it
    quantizers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type == _DEQUANTIZE:
            dequantized.setdefault(node.input[0], []).append(node)
        elif node.op_type == _QUANTIZE and node.input[0] not in constants:
            quantizers.setdefault(node.input[0], []).append(node)
    found = {}
    for tensor, nodes in quantizers.items():
        node = nodes[0]
        per_tensor = all(name in single for name in node.input[1:] if name)
        readers = dequantized.get(node.output[0], [])
        if (len(nodes) == 1 and per_tensor and readers and node.output[0] not in outputs
                and not any(dq.output[0] in outputs for dq in readers)):
            found[tensor] = node
    return found


def without_rounding(model: onnx.ModelProto, tensors: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` where ``tensors`` are read in float: each QuantizeLinear →
    DequantizeLinear pair becomes a Clip to the pair's range, which the readers of the
    dequantized copies read. The clip stays because the pair may be all that is left of a
    ReLU: onnxruntime's quantizer deletes a Relu/Clip whose output range the pair enforces."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    constants = {t.name: t for t in graph.initializer}
    clips: dict[str, onnx.NodeProto] = {}  # QuantizeLinear output -> the Clip that replaces its pair
    for node in graph.node:
        if node.op_type == _QUANTIZE and node.input[0] in tensors:
            clipped = _clipped(node.input[0])
            low, high = _pair_range(node, constants)
            names = (f"{clipped}_min", f"{clipped}_max")
            graph.initializer.extend([numpy_helper.from_array(np.array(low, np.float32), names[0]),
                                      numpy_helper.from_array(np.array(high, np.float32), names[1])])
            clips[node.output[0]] = onnx.helper.make_node("Clip", [node.input[0], *names], [clipped], name=clipped)
    replaced = {n.output[0]: clips[n.input[0]].output[0] for n in graph.node
                if n.op_type == _DEQUANTIZE and n.input[0] in clips}
    # a QuantizeLinear whose output also feeds something else than a DequantizeLinear stays
    other_readers = {i for n in graph.node if n.op_type != _DEQUANTIZE for i in n.input}
    kept = []
    for node in graph.node:
        if node.op_type == _DEQUANTIZE and node.output[0] in replaced:
            continue
        if node.op_type == _QUANTIZE and node.output[0] in clips:
            if node.output[0] in other_readers:
                kept.append(node)
            kept.append(clips[node.output[0]])  # where the QuantizeLinear stood: before every reader
            continue
        for k, name in enumerate(node.input):
            if name in replaced:
                node.input[k] = replaced[name]
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return copy


def _pair_range(quantize: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> tuple[float, float]:
    """The float range a per-tensor QuantizeLinear → DequantizeLinear pair can represent."""
    scale = float(numpy_helper.to_array(constants[quantize.input[1]]).reshape(-1)[0])
    if len(quantize.input) > 2 and quantize.input[2] in constants:
        zero = numpy_helper.to_array(constants[quantize.input[2]])
        info = np.iinfo(zero.dtype)
        point = float(zero.reshape(-1)[0])
    else:  # no zero point: uint8, 0
        info, point = np.iinfo(np.uint8), 0.0
    return (info.min - point) * scale, (info.max - point) * scale


def _clipped(tensor: str) -> str:
    """The name of ``tensor`` clipped to its former Q/DQ pair's range."""
    return f"{tensor}_float_clipped"


def float_nodes(model: onnx.ModelProto, tensors: set[str]) -> list[str]:
    """The readers of ``tensors``' clipped copies in a model :func:`without_rounding` made,
    and their producers but MatMul/Gemm: the ops that run in float once those tensors are."""
    clipped = {_clipped(t) for t in tensors}
    names = []
    for node in model.graph.node:
        if node.op_type in (_QUANTIZE, _DEQUANTIZE) or set(node.output) & clipped:
            continue  # the pairs that remain, and the clips themselves
        produces = tensors & set(node.output) and node.op_type not in _INTEGER_TO_FLOAT
        if produces or clipped & set(node.input):
            names.append(node.name)
    return names


def keep_sensitive_float(reference: FloatReference, quantized: onnx.ModelProto, count: int,
                         progress: Callable[[int, int], None] | None = None,
                         seconds: float | None = None) -> tuple[onnx.ModelProto, Fallback]:
    """(the model with up to ``count`` activations kept float, what was done). Scores each
    activation's removal alone, then keeps the helpful ones greedily (see the module).
    ``seconds``: where scoring every candidate on all of ``reference``'s samples would take
    longer (estimated from the first score), fewer samples are used (at least MIN_SAMPLES)."""
    candidates = sorted(activation_quantizers(quantized))
    result = Fallback(candidates=len(candidates))
    started = time.perf_counter()
    result.before = result.after = reference.relative_error(quantized)
    each = time.perf_counter() - started
    if count >= 1 and candidates and seconds and each * len(candidates) > seconds:
        fewer = max(MIN_SAMPLES, int(len(reference.samples) * seconds / (each * len(candidates))))
        if fewer < len(reference.samples):
            reference = reference.first(fewer)
            result.before = result.after = reference.relative_error(quantized)
    result.samples = len(reference.samples)
    if count < 1 or not candidates:
        return quantized, result
    gains = []
    for done, tensor in enumerate(candidates):
        error = reference.relative_error(without_rounding(quantized, {tensor}))
        gains.append((result.before - error, tensor))
        if progress is not None:
            progress(done + 1, len(candidates))
    best = quantized
    ranked = [tensor for gain, tensor in sorted(gains, key=lambda g: (-g[0], g[1])) if gain > 0]
    for tensor in ranked[:TRIALS_PER_KEPT * count]:
        if len(result.kept) >= count:
            break
        trial = without_rounding(quantized, {*result.kept, tensor})
        error = reference.relative_error(trial)
        if error < result.after:
            result.kept.append(tensor)
            best, result.after = trial, error
    result.float_nodes = float_nodes(best, set(result.kept))
    return best, result
