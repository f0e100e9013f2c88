"""Static shapes of a model's values: the one shape-inference path for MAC figures
(:func:`onnxopt.analysis.node_costs`) and layer sizes (the decomposition passes).

:func:`inferred_shapes` takes a protobuf whose dynamic input dimensions the caller has
fixed: ONNX shape inference with data propagation first; where a wanted value is still not
fully known (e.g. after a ``Pad`` whose pads are computed) and every input shape is known,
onnxruntime's symbolic shape inference, which propagates more data, fills the gaps.
Constants (initializers, ``Constant`` outputs) carry their own dims. Best effort: a
dimension that stays unknown is ``None``, never a guess. :func:`static_shapes` does the
same for an ``onnx_ir`` model with a dynamic leading (batch) dimension fixed to 1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import onnx_ir as ir

logger = logging.getLogger(__name__)

Shape = tuple[int | None, ...]


def static_shapes(model: ir.Model, wanted: list[str] | None = None) -> dict[str, Shape]:
    """Value name → shape of ``model``, with a dynamic leading (batch) dimension of each
    graph input fixed to 1 (see :func:`inferred_shapes` for ``wanted``)."""
    try:
        proto = ir.to_proto(model)
        for tensor in proto.graph.initializer:
            if len(tensor.raw_data) > 4096:  # shapes need dims, not the weights themselves
                tensor.ClearField("raw_data")
        for value in proto.graph.input:
            dims = value.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):
                dims[0].Clear()
                dims[0].dim_value = 1
    except Exception as exc:
        logger.info("cannot serialise the model for shape inference (%s)", exc)
        return {}
    return inferred_shapes(proto, wanted)


def inferred_shapes(proto, wanted: Iterable[str] | None = None) -> dict[str, Shape]:
    """Value name → shape of the ``onnx.ModelProto`` ``proto`` (not modified). The slower
    symbolic inference runs only when every graph input's shape is known and some
    ``wanted`` value (any value when ``wanted`` is None) is not."""
    import onnx

    shapes: dict[str, Shape] = {}
    try:
        collect_shapes(onnx.shape_inference.infer_shapes(proto, data_prop=True), shapes)
    except Exception as exc:
        logger.info("ONNX shape inference failed (%s)", exc)
        collect_shapes(proto, shapes)  # the declared shapes at least
    shapes.update(constant_shapes(proto))
    initializers = {t.name for t in proto.graph.initializer}
    static_inputs = all(known_shape(shapes.get(v.name)) for v in proto.graph.input if v.name not in initializers)
    wanted = None if wanted is None else list(wanted)
    if static_inputs and (wanted is None or any(not known_shape(shapes.get(name)) for name in wanted)):
        from onnxopt.runtime.scratch import symbolic_shape_inference

        symbolic = symbolic_shape_inference(proto)
        if symbolic is not None:
            found: dict[str, Shape] = {}
            collect_shapes(symbolic, found)
            for name, shape in found.items():
                if known_shape(shape) and not known_shape(shapes.get(name)):
                    shapes[name] = shape
    return shapes


def collect_shapes(proto, shapes: dict[str, Shape]) -> None:
    """Add the shapes ``proto``'s graph declares (inputs, value_info, outputs) to ``shapes``;
    a dimension that is not a positive number becomes ``None``."""
    graph = proto.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor_type.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                       for d in tensor_type.shape.dim)


def constant_shapes(proto) -> dict[str, tuple[int, ...]]:
    """Dims of the initializers and ``Constant`` node outputs of ``proto``'s main graph."""
    import onnx

    shapes = {tensor.name: tuple(tensor.dims) for tensor in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    shapes[node.output[0]] = tuple(attr.t.dims)
    return shapes


def known_shape(shape: Shape | None, rank: int | None = None) -> bool:
    """Whether every dimension of ``shape`` is a positive number (and it has ``rank`` dims)."""
    return (shape is not None and (rank is None or len(shape) == rank)
            and all(isinstance(d, int) and d > 0 for d in shape))
