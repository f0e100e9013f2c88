"""What recovery trains and matches: the layers the pipeline changed, and their weights.

The decomposition passes mark every node they create with ``metadata_props``
``onnxopt.decomposed`` (the method) and ``onnxopt.decomposed_from`` (the original node's
name), and the last node of each chain keeps the original output value's name. So a
changed layer is a group of marked nodes with one source; its outputs are the values
the group produces for the rest of the graph, and the teacher (the model before the
pipeline) has values of the same names. Trainable tensors are the float32 initializers
read at weight positions (:data:`WEIGHT_INPUTS`) of the changed nodes (``scope="changed"``)
or of every node (``scope="all"``, tensors of one element left out: such constants are
usually part of the formula, e.g. GELU's 0.5). Pure onnx; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

MARK = "onnxopt.decomposed"
SOURCE = "onnxopt.decomposed_from"

#: op type -> the input positions that hold learnable weights (BatchNorm's running stats excluded)
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "Add": (0, 1), "Sub": (0, 1), "Mul": (0, 1), "Div": (0, 1), "PRelu": (1,),
    "BatchNormalization": (1, 2), "LayerNormalization": (1, 2),
}


@dataclass
class ChangedLayer:
    source: str  # the original node's name
    nodes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # values the group hands to the rest of the graph


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
    return list(groups.values())


def changed_nodes(model: onnx.ModelProto, outputs: list[str] = ()) -> set[str]:
    """Names of the marked nodes plus the nodes producing ``outputs``."""
    wanted = set(outputs)
    return {n.name for n in model.graph.node if MARK in _metadata(n) or wanted.intersection(n.output)}


def trainable_initializers(model: onnx.ModelProto, scope: str, nodes: set[str]) -> list[str]:
    """Float32 initializers at weight positions of ``nodes`` (scope "changed") or of all nodes ("all")."""
    if scope not in ("changed", "all"):
        raise ValueError(f"scope must be 'changed' or 'all', got {scope!r}")
    floats = {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    chosen: list[str] = []
    for node in model.graph.node:
        if scope == "changed" and node.name not in nodes:
            continue
        for position in WEIGHT_INPUTS.get(node.op_type, ()):
            if position >= len(node.input) or node.input[position] not in floats:
                continue
            name = node.input[position]
            size = 1
            for dim in floats[name].dims:
                size *= dim
            if name not in chosen and (scope == "changed" or size > 1):
                chosen.append(name)
    return chosen
