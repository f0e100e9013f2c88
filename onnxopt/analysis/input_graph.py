"""Graph walks behind :func:`onnxopt.analysis.inputs.model_inputs`: which inputs are
recurrent state, and which integer inputs index a constant table (and how many rows it has).

Both follow an input's values through :data:`VALUE_OPS` (ops whose output carries values of
their input 0, or of any input for Concat): an index or a state passed through a Cast,
Reshape or Concat is still an index or a state.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

#: A declared dimension: an int (fixed, > 0), a string (named dynamic dim) or None (unnamed
#: dynamic dim; a declared ``dim_value`` of 0 or less, as Paddle writes -1, is dynamic too).
Dim = int | str | None

#: Names that make an input state when an output has its shape (a state in/out pair).
_STATE_NAME = re.compile(r"[hc]|[hc]0|[hc]x|states?|initial_[hc]|init_[hc]")
#: Recurrent ops and their state inputs (initial_h, initial_c).
_RECURRENT_STATE_SLOTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}
#: Ops whose output carries (some of) the values of input 0 (any input for Concat): an
#: index input followed through them still ends up as indices.
VALUE_OPS = frozenset({"Cast", "CastLike", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand",
                       "Transpose", "Slice", "Tile", "Concat", "Split", "Gather"})


def is_dynamic(dim: Dim) -> bool:
    return not (isinstance(dim, int) and dim > 0)


def base_name(name: str) -> str:
    """Lower case, without a TensorFlow ``:0`` suffix."""
    return re.sub(r":\d+$", "", name).lower()


def _subgraphs(node) -> Iterator:
    import onnx

    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def state_inputs(model: onnx.ModelProto, shapes: Mapping[str, tuple[Dim, ...] | None]) -> set[str]:
    """Names of the inputs (of ``shapes``: name → declared shape) that are recurrent state:
    those reaching an LSTM, GRU or RNN's ``initial_h``/``initial_c`` (directly, in a
    subgraph, or through the value ops of :data:`VALUE_OPS`), and those named like state
    (h, c, h0, c0, hx, cx, state, states, initial_h/c, init_h/c) that an output of the
    same shape pairs with (dims dynamic in either match; Silero's h → hn)."""
    consumers: dict[str, list[tuple[object, int]]] = defaultdict(list)
    carried: dict[str, list[str]] = defaultdict(list)  # an If branch's output → the If's output

    def scan(graph) -> None:
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            for position, name in enumerate(node.input):
                if name:
                    consumers[name].append((node, position))
            for sub in _subgraphs(node):
                if node.op_type == "If":
                    for out, parent in zip(sub.output, node.output, strict=False):
                        carried[out.name].append(parent)
                scan(sub)

    scan(model.graph)
    states: set[str] = set()
    for input_name in shapes:
        seen, todo = {input_name}, [input_name]
        while todo and input_name not in states:
            name = todo.pop()
            following = list(carried.get(name, ()))
            for node, position in consumers.get(name, ()):
                if position in _RECURRENT_STATE_SLOTS.get(node.op_type, ()):
                    states.add(input_name)
                elif node.op_type in VALUE_OPS and (position == 0 or node.op_type == "Concat"):
                    following.extend(node.output)
            for out in following:
                if out and out not in seen:
                    seen.add(out)
                    todo.append(out)
    named = {name: shape for name, shape in shapes.items()
             if name not in states and shape and _STATE_NAME.fullmatch(base_name(name))}
    if named:
        outputs = _output_shapes(model.graph)
        if any(shape is None for shape in outputs) and not all(
                any(_pairs(shape, o) for o in outputs if o) for shape in named.values()):
            outputs = _output_shapes(_inferred_graph(model)) or outputs
        states.update(name for name, shape in named.items() if any(_pairs(shape, o) for o in outputs if o))
    return states


def _output_shapes(graph) -> list[tuple[Dim, ...] | None]:
    """Declared shape of every graph output (dims as in :data:`Dim`), None where unknown."""
    if graph is None:
        return []
    shapes: list[tuple[Dim, ...] | None] = []
    for value in graph.output:
        tensor = value.type.tensor_type if value.type.WhichOneof("value") == "tensor_type" else None
        if tensor is None or not tensor.HasField("shape"):
            shapes.append(None)
            continue
        shapes.append(tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                            for d in tensor.shape.dim))
    return shapes


def _inferred_graph(model: onnx.ModelProto):
    """The graph with output shapes filled in by ONNX shape inference; None if it fails."""
    import onnx.shape_inference

    try:
        return onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - inference is a best effort (e.g. over 2 GB, unknown ops)
        return None


def _pairs(state: tuple[Dim, ...], output: tuple[Dim, ...]) -> bool:
    """An output of the same shape as a state input: same rank, every dim equal or dynamic
    in either, and at least one dim fixed in both."""
    if len(state) != len(output):
        return False
    both = [(a, b) for a, b in zip(state, output, strict=True) if not is_dynamic(a) and not is_dynamic(b)]
    return bool(both) and all(a == b for a, b in both)


def index_bounds(graph, names: Iterable[str]) -> dict[str, int]:
    """{input: rows of the smallest constant table it reaches as ``Gather`` indices}: the
    table's dim on the Gather axis, the table an initializer or a ``Constant``, the input
    reaching the indices directly or through :data:`VALUE_OPS`."""
    import onnx

    tables: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in graph.initializer}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    tables[node.output[0]] = tuple(attr.t.dims)
        for position, name in enumerate(node.input):
            if name:
                consumers[name].append((node, position))
    bounds: dict[str, int] = {}
    for start in names:
        rows: list[int] = []
        seen, todo = {start}, [start]
        while todo:
            for node, position in consumers.get(todo.pop(), ()):
                if node.op_type == "Gather" and position == 1:
                    dims = tables.get(node.input[0])
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if dims and -len(dims) <= axis < len(dims) and dims[axis] > 0:
                        rows.append(int(dims[axis]))
                elif node.op_type in VALUE_OPS and (position == 0 or node.op_type == "Concat"):
                    for out in node.output:
                        if out and out not in seen:
                            seen.add(out)
                            todo.append(out)
        if rows:
            bounds[start] = min(rows)
    return bounds
