"""Graph facts: parameters, MACs per node, op histogram, and which node a decomposition can
target (:func:`decomposition_target`).

MACs (multiply-accumulates) are counted for Conv, ConvTranspose, Gemm and MatMul, and the
integer forms ``int8-dynamic`` writes (MatMulInteger, ConvInteger: the same MACs in int8).
Shapes come from :func:`onnxopt.analysis.shapes.inferred_shapes` with the dynamic input
dimensions fixed: all of an input's dimensions from ``input_shapes`` where it is given;
otherwise a dynamic first dimension to 1 (one sample) and a dynamic *sequence* dimension to
:data:`DEFAULT_SEQUENCE` (dim 1 of a ``[batch, seq]`` integer or bool input, or a dimension
named like seq, len or token), so that a transformer's MatMuls are counted at that length
(:func:`assumed_dims` says which dimensions were set so). Where another dimension stays
unknown, MACs of the layers that depend on it are ``None`` rather than a guess.
"""
from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.analysis.shapes import constant_shapes, inferred_shapes, known_shape

#: Every counted op takes its weight as input 1 (``check`` relies on it); the integer forms
#: ``int8-dynamic`` writes cost the same MACs in int8.
COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger", "ConvInteger")
#: integer op -> (float op it counts as, input index of A/X, input index of W/B)
_INTEGER_FORMS = {"MatMulInteger": ("MatMul", 0, 1), "ConvInteger": ("Conv", 0, 1)}
#: Sequence length MACs are counted at where an input's sequence dimension is dynamic and
#: not given; the same as :data:`onnxopt.analysis.inputs.DEFAULT_SEQUENCE`.
DEFAULT_SEQUENCE = 128
_SEQUENCE_DIM = re.compile(r"seq|len|token", re.IGNORECASE)  # as onnxopt.analysis.inputs
_INTEGER_TYPES = frozenset({2, 3, 4, 5, 6, 7, 9, 12, 13})  # uint8..int64, bool, uint32, uint64


@dataclass(frozen=True)
class NodeCost:
    name: str
    op_type: str
    macs: int | None
    params: int


SVD_MIN_DIM = 64
"""Smallest side of a weight matrix for which a low-rank (SVD) split is suggested: a rank-r
split only saves work when r < mn / (m + n), which leaves no room on small matrices."""

TARGET_DECOMPOSE = "decompose"
TARGET_SVD = "svd"


def decomposition_target(op_type: str, weight_shape: tuple[int, ...] | None, group: int = 1,
                         kernel: tuple[int, ...] | None = None) -> str | None:
    """Which decomposition family can target a node, from its facts alone.

    :data:`TARGET_DECOMPOSE` for a dense (group 1) Conv with a kernel larger than 1×1
    (spatial, tucker, cp, separable); :data:`TARGET_SVD` for a 1×1 Conv or a Gemm/MatMul
    whose constant weight's smaller side is at least :data:`SVD_MIN_DIM`; ``None``
    otherwise (such a layer can still be quantized). ``weight_shape`` is the constant
    weight's shape (``None`` when the weight is not a constant); ``kernel`` the Conv's
    ``kernel_shape`` attribute when it has one.
    """
    if weight_shape is None or op_type not in ("Conv", "Gemm", "MatMul"):
        return None
    if op_type == "Conv":
        kernel = tuple(kernel or weight_shape[2:])
        if group != 1 or not kernel or len(weight_shape) < 3:
            return None
        if math.prod(kernel) > 1:
            return TARGET_DECOMPOSE
        return TARGET_SVD if min(weight_shape[0], weight_shape[1]) >= SVD_MIN_DIM else None
    return TARGET_SVD if len(weight_shape) == 2 and min(weight_shape) >= SVD_MIN_DIM else None


def _is_dynamic(dim) -> bool:
    return not (dim.HasField("dim_value") and dim.dim_value > 0)


def _sequence_axes(value) -> list[int]:
    """Dynamic sequence dimensions of a graph input (module docstring), dim 0 excluded."""
    tensor = value.type.tensor_type
    dims = tensor.shape.dim
    axes = []
    for axis, dim in enumerate(dims):
        if axis == 0 or not _is_dynamic(dim):
            continue
        named = dim.HasField("dim_param") and _SEQUENCE_DIM.search(dim.dim_param)
        if named or (len(dims) == 2 and axis == 1 and tensor.elem_type in _INTEGER_TYPES):
            axes.append(axis)
    return axes


def _graph_inputs(model: onnx.ModelProto):
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers and v.type.HasField("tensor_type")]


def _named_sizes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """{dim_param: size} from the inputs ``input_shapes`` gives: another input that shares
    the dim's name (``attention_mask``'s ``sequence_length`` with ``input_ids:1x32``) takes
    the same size."""
    sizes: dict[str, int] = {}
    for value in _graph_inputs(model):
        override = input_shapes.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if override is not None and len(override) == len(dims):
            for dim, size in zip(dims, override):
                if dim.HasField("dim_param") and dim.dim_param:
                    sizes.setdefault(dim.dim_param, int(size))
    return sizes


def _fill(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Fix ``model``'s dynamic input dims in place (module docstring); the sequence dims
    set to :data:`DEFAULT_SEQUENCE`, as ``"input_ids dim 1 (sequence_length)"``."""
    named = _named_sizes(model, input_shapes)
    assumed: list[str] = []
    for value in _graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        override = input_shapes.get(value.name)
        if override is not None and len(override) == len(dims):
            for dim, size in zip(dims, override):
                dim.Clear()
                dim.dim_value = int(size)
            continue
        sequence = set(_sequence_axes(value))
        for axis, dim in enumerate(dims):
            if not _is_dynamic(dim):
                continue
            param = dim.dim_param if dim.HasField("dim_param") else ""
            if param in named:
                size = named[param]
            elif axis == 0:
                size = 1
            elif axis in sequence:
                size = DEFAULT_SEQUENCE
                assumed.append(f"{value.name} dim {axis}" + (f" ({param})" if param else ""))
            else:
                continue
            dim.Clear()
            dim.dim_value = size
    return assumed


def assumed_dims(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> list[str]:
    """The dynamic sequence dimensions MACs are counted at :data:`DEFAULT_SEQUENCE` for,
    e.g. ``["input_ids dim 1 (sequence_length)"]``; empty when ``input_shapes`` sets them."""
    copy = onnx.ModelProto()
    copy.graph.input.extend(model.graph.input)
    copy.graph.initializer.extend(onnx.TensorProto(name=t.name) for t in model.graph.initializer)
    return _fill(copy, dict(input_shapes or {}))


def _with_fixed_inputs(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    _fill(fixed, input_shapes)
    return fixed


def _constant_sizes(model: onnx.ModelProto) -> dict[str, int]:
    return {name: int(np.prod(dims, dtype=np.int64)) for name, dims in constant_shapes(model).items()}


def attribute(node: onnx.NodeProto, name: str, default):
    """A protobuf node's attribute value, or ``default`` where it is absent."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _node_macs(node: onnx.NodeProto, shapes: dict) -> int | None:
    op_type, first, second = _INTEGER_FORMS.get(node.op_type, (node.op_type, 0, 1))
    positions = {0: first, 1: second}

    def get(i: int):
        index = positions.get(i, i)
        return shapes.get(node.input[index]) if len(node.input) > index and node.input[index] else None

    out = shapes.get(node.output[0]) if node.output else None
    if op_type == "Conv":
        weight = get(1)
        if not (known_shape(weight) and known_shape(out)):
            return None
        # out = [N, F, *spatial]; each output element costs (C/group)·prod(kernel) MACs.
        return math.prod(out) * math.prod(weight[1:])
    if op_type == "ConvTranspose":
        weight, x = get(1), get(0)
        if not (known_shape(weight) and known_shape(x)):
            return None
        # Each input element is scattered through (F/group)·prod(kernel) weights.
        return math.prod(x) * math.prod(weight[1:])
    if op_type == "Gemm":
        a, b = get(0), get(1)
        if not (known_shape(a) and known_shape(b)):
            return None
        m = a[1] if attribute(node, "transA", 0) else a[0]
        k = a[0] if attribute(node, "transA", 0) else a[1]
        n = b[0] if attribute(node, "transB", 0) else b[1]
        return m * k * n
    if op_type == "MatMul":
        a, b = get(0), get(1)
        if not (known_shape(a) and known_shape(b)) or not a or not b:
            return None
        if len(b) == 1:
            return math.prod(a)
        if len(a) == 1:
            return math.prod(b)
        # out = batch · M · N, each element costs K MACs.
        return math.prod(out) * a[-1] if known_shape(out) else None
    return None


def node_costs(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, NodeCost]:
    """MACs and parameter count of every node of the main graph, keyed by node name.

    Nodes without a name are keyed ``<op_type>_<index>``. Parameters are the elements of
    the node's constant inputs (initializers or ``Constant`` outputs).
    """
    counted_outputs = [n.output[0] for n in model.graph.node if n.op_type in COUNTED_OPS and n.output]
    shapes = inferred_shapes(_with_fixed_inputs(model, input_shapes or {}), wanted=counted_outputs)
    constants = _constant_sizes(model)
    costs: dict[str, NodeCost] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Constant":
            continue
        name = node.name or f"{node.op_type}_{index}"
        if name in costs:  # duplicate node names (invalid for onnxruntime, but seen): keep both
            name = f"{name}#{index}"
        params = sum(constants.get(i, 0) for i in node.input if i)
        macs = _node_macs(node, shapes) if node.op_type in COUNTED_OPS else 0
        costs[name] = NodeCost(name=name, op_type=node.op_type, macs=macs, params=params)
    return costs


@dataclass(frozen=True)
class ModelStats:
    nodes: int
    parameters: int
    macs: int | None  # None when some counted layer has unknown shapes
    op_histogram: dict[str, int]
    size_bytes: int

    def to_dict(self) -> dict:
        return {
            "nodes": self.nodes,
            "parameters": self.parameters,
            "macs": self.macs,
            "op_histogram": self.op_histogram,
            "size_bytes": self.size_bytes,
        }


def parameter_count(model: onnx.ModelProto) -> int:
    return sum(_constant_sizes(model).values())


def model_stats(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None, costs: dict[str, NodeCost] | None = None) -> ModelStats:
    from onnxopt.io import model_size_bytes

    costs = costs if costs is not None else node_costs(model, input_shapes)
    counted = [c.macs for c in costs.values() if c.op_type in COUNTED_OPS]
    macs = None if any(m is None for m in counted) else int(sum(counted))
    histogram = collections.Counter(node.op_type for node in model.graph.node)
    return ModelStats(
        nodes=len(model.graph.node),
        parameters=parameter_count(model),
        macs=macs,
        op_histogram=dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        size_bytes=model_size_bytes(model),
    )
