"""Walking a protobuf model: every graph, the names read, the stored tensors."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

_FLOAT_TYPE_NAMES = ("FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16", "COMPLEX64", "COMPLEX128", "FLOAT8E4M3FN",
                     "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1")


@functools.cache
def float_types() -> frozenset[int]:
    """The TensorProto data types that hold floating-point values."""
    from onnx import TensorProto

    return frozenset(getattr(TensorProto, n) for n in _FLOAT_TYPE_NAMES if hasattr(TensorProto, n))


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    from onnx import AttributeProto

    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


def names_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by the graph's nodes, its subgraphs (outer-scope reads) and outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(i for i in node.input if i)
        for sub in subgraphs(node):
            names |= names_read(sub)
    return names


def constant_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """(description, tensor) for every stored tensor: initializers, sparse ones, tensor attributes."""
    from onnx import AttributeProto

    nodes: list[onnx.NodeProto] = []
    for graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            yield f"initializer '{tensor.name}'", tensor
        for sparse in graph.sparse_initializer:
            yield f"sparse initializer '{sparse.values.name}'", sparse.values
        nodes.extend(graph.node)
    for function in model.functions:
        nodes.extend(function.node)
    for node in nodes:
        label = f"{node.op_type} node '{node.name or (node.output[0] if node.output else '?')}'"
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield f"{label} attribute '{attr.name}'", attr.t
            elif attr.type == AttributeProto.TENSORS:
                for tensor in attr.tensors:
                    yield f"{label} attribute '{attr.name}'", tensor
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                yield f"{label} attribute '{attr.name}'", attr.sparse_tensor.values


def constant_float_attrs(model: onnx.ModelProto) -> Iterator[tuple[str, list[float]]]:
    """(description, values) of the ``value_float(s)`` attributes of Constant nodes."""
    for graph in all_graphs(model.graph):
        for node in graph.node:
            if node.op_type != "Constant":
                continue
            for attr in node.attribute:
                if attr.name == "value_float":
                    yield f"Constant node '{node.name or node.output[0]}'", [attr.f]
                elif attr.name == "value_floats":
                    yield f"Constant node '{node.name or node.output[0]}'", list(attr.floats)


def initializer_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    """name -> (shape, data type) of initializers and Constant outputs of the main graph."""
    shapes = {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t is not None:
                    shapes[node.output[0]] = (tuple(attr.t.dims), attr.t.data_type)
    return shapes
