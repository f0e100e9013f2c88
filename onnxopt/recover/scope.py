"""What recovery trains and matches: the layers the pipeline changed, and their weights.

Decomposition passes mark the nodes they create (``metadata_props`` ``onnxopt.decomposed``,
``onnxopt.decomposed_from`` = the original node) and keep the original output names: a
changed layer is the group of marked nodes of one source, its outputs the values it hands
to the rest of the graph, which the teacher has under the same names. In a QDQ model
(``int8``) a Conv, ConvTranspose, Gemm or MatMul whose weight is a ``DequantizeLinear`` of
an integer initializer is a changed layer too (outputs: its own). Trainable: initializers
at weight positions (:data:`WEIGHT_INPUTS`) of the changed nodes (``scope="changed"``) or of
all nodes (``"all"``, one-element constants left out): float32 ones, and integer ones behind
a DequantizeLinear (int32 biases ≥ 2²² in magnitude stay fixed: float32 steps past 1 there).
:func:`channel_axis`: the axis the objective normalises per channel. Scales
(:func:`quantization_scales`): the activations' QuantizeLinear scales and the
changed layers' weight scales (int32 bias scales follow from them, :mod:`.requantize`).
:func:`student_value`: the student value to compare with teacher value v, the
``DequantizeLinear(QuantizeLinear(v))`` the next layers read if any, else v. Pure onnx.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

MARK = "onnxopt.decomposed"
SOURCE = "onnxopt.decomposed_from"

#: op type -> the input positions that hold learnable weights (BatchNorm's running stats excluded)
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "Add": (0, 1), "Sub": (0, 1), "Mul": (0, 1), "Div": (0, 1), "PRelu": (1,),
    "BatchNormalization": (1, 2), "LayerNormalization": (1, 2),
}
QUANTIZED_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_INTEGERS = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32}
_EXACT_IN_FLOAT32 = 2 ** 22


@dataclass
class ChangedLayer:
    source: str  # the original node's name
    nodes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # values the group hands to the rest of the graph
    kind: str = "decomposed"  # or "quantized": a layer with a DequantizeLinear weight


def _metadata(node: onnx.NodeProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in node.metadata_props}


def changed_layers(model: onnx.ModelProto) -> list[ChangedLayer]:
    """The marked node groups of the main graph, in graph order."""
    groups: dict[str, ChangedLayer] = {}
    members: dict[str, str] = {}  # node name -> source
    for index, node in enumerate(model.graph.node):
        metadata = _metadata(node)
        if MARK not in metadata:
            continue
        source = metadata.get(SOURCE) or node.name or f"node_{index}"
        layer = groups.setdefault(source, ChangedLayer(source))
        layer.nodes.append(node.name)
        members[node.name] = source
    produced_by: dict[str, str] = {}
    for node in model.graph.node:
        if node.name in members:
            produced_by.update({o: members[node.name] for o in node.output if o})
    handed_over: set[str] = {v.name for v in model.graph.output if v.name in produced_by}
    for node in model.graph.node:
        for name in node.input:
            if name in produced_by and members.get(node.name) != produced_by[name]:
                handed_over.add(name)
    for node in model.graph.node:
        if node.name in members:
            groups[members[node.name]].outputs.extend(o for o in node.output if o in handed_over)
    quantized = quantized_initializers(model)
    for index, node in enumerate(model.graph.node):
        if node.op_type in QUANTIZED_LAYERS and node.name not in members and any(
                name in quantized for name in _weight_inputs(node)):
            name = node.name or f"node_{index}"
            groups.setdefault(name, ChangedLayer(name, [name], [o for o in node.output if o], "quantized"))
    return list(groups.values())


def quantized_initializers(model: onnx.ModelProto) -> dict[str, str]:
    """DequantizeLinear output -> the integer initializer it reads (a quantized weight or bias)."""
    integers = {t.name for t in model.graph.initializer if t.data_type in _INTEGERS}
    return {n.output[0]: n.input[0] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.domain in ("", "ai.onnx") and n.input[0] in integers}


def student_value(model: onnx.ModelProto, name: str) -> str:
    """The output of ``DequantizeLinear(QuantizeLinear(name))`` in ``model`` if any, else ``name``."""
    quantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and quantized.get(node.input[0]) == name:
            return node.output[0]
    return name


def quantization_scales(model: onnx.ModelProto, nodes: set[str]) -> list[str]:
    """Float initializers that are the scale of an activation's QuantizeLinear, or of the
    DequantizeLinear of an 8- or 16-bit weight read by one of ``nodes``; graph order."""
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    narrow = {t.name for t in model.graph.initializer if t.data_type in _INTEGERS - {onnx.TensorProto.INT32}}
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.name)
    chosen: list[str] = []
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in floats or node.domain not in ("", "ai.onnx"):
            continue
        activation = node.op_type == "QuantizeLinear"
        weight = (node.op_type == "DequantizeLinear" and node.input[0] in narrow
                  and bool(readers.get(node.output[0], set()) & nodes))
        if (activation or weight) and node.input[1] not in chosen:
            chosen.append(node.input[1])
    return chosen


#: ops whose output keeps the channel layout of their first input
_LAYOUT_KEEPING = {"Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "PRelu", "HardSigmoid", "HardSwish", "Elu",
                   "Selu", "Mul", "Add", "Sub", "Div", "BatchNormalization", "QuantizeLinear", "DequantizeLinear",
                   "Identity", "Dropout", "Softplus", "Mish", "Gelu", "Erf"}
_CONVOLUTIONS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"}


def channel_axis(model: onnx.ModelProto, name: str, rank: int) -> int:
    """The channel axis of value ``name`` (of ``rank``): 1 for [N, C, …] feature maps and
    [N, C] vectors; the last axis of a rank-3 value that no convolution wrote — [N, tokens,
    hidden] of a transformer, [N, boxes, attributes] of a detector's head."""
    if rank != 3:
        return 1
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(name)
    while node is not None and node.op_type in _LAYOUT_KEEPING and node.input:
        node = producer.get(node.input[0])
    return 1 if node is not None and node.op_type in _CONVOLUTIONS else 2


def _weight_inputs(node: onnx.NodeProto) -> list[str]:
    return [node.input[i] for i in WEIGHT_INPUTS.get(node.op_type, ()) if i < len(node.input)]


def changed_nodes(model: onnx.ModelProto, outputs: list[str] = ()) -> set[str]:
    """Names of the marked nodes, the quantized layers, and the nodes producing ``outputs``."""
    wanted = set(outputs)
    quantized = quantized_initializers(model)
    return {n.name for n in model.graph.node if MARK in _metadata(n) or wanted.intersection(n.output)
            or (n.op_type in QUANTIZED_LAYERS and any(i in quantized for i in _weight_inputs(n)))}


def trainable_initializers(model: onnx.ModelProto, scope: str, nodes: set[str]) -> list[str]:
    """Initializers at weight positions of ``nodes`` (scope "changed") or of all nodes ("all"):
    float32 ones, and integer ones read through a DequantizeLinear there."""
    if scope not in ("changed", "all"):
        raise ValueError(f"scope must be 'changed' or 'all', got {scope!r}")
    tensors = {t.name: t for t in model.graph.initializer}
    floats = {name for name, t in tensors.items() if t.data_type == onnx.TensorProto.FLOAT}
    behind = {value: name for value, name in quantized_initializers(model).items() if _trainable_integer(tensors[name])}
    chosen: list[str] = []
    for node in model.graph.node:
        if scope == "changed" and node.name not in nodes:
            continue
        for value in _weight_inputs(node):
            name = value if value in floats else behind.get(value)
            if name is None:
                continue
            size = int(np.prod(tensors[name].dims))
            if name not in chosen and (scope == "changed" or size > 1):
                chosen.append(name)
    return chosen


def _trainable_integer(tensor: onnx.TensorProto) -> bool:
    if tensor.data_type != onnx.TensorProto.INT32:
        return True
    return bool(np.all(np.abs(numpy_helper.to_array(tensor).astype(np.int64)) < _EXACT_IN_FLOAT32))
