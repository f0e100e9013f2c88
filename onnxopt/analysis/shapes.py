"""Static shapes of a model's values, for MAC figures and layer sizes.

ONNX shape inference (with data propagation) first, with a dynamic leading (batch)
dimension of each graph input fixed to 1; where a wanted value is still not fully known
(e.g. after a ``Pad`` whose pads are computed), onnxruntime's symbolic shape inference,
which propagates more data. Best effort: a shape that stays unknown is ``None`` in a
dimension, never a guess.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

logger = logging.getLogger(__name__)


def static_shapes(model: ir.Model, wanted: list[str] | None = None) -> dict[str, tuple[int | None, ...]]:
    """Value name → shape, with a dynamic leading (batch) dimension of each graph input
    fixed to 1. ONNX shape inference first; where a ``wanted`` value is still not fully
    known (e.g. after a ``Pad`` whose pads are computed), onnxruntime's symbolic shape
    inference, which propagates more data. Best effort: shapes only refine MAC figures."""
    import onnx

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
    shapes: dict[str, tuple[int | None, ...]] = {}
    try:
        collect_shapes(onnx.shape_inference.infer_shapes(proto, data_prop=True), shapes)
    except Exception as exc:
        logger.info("ONNX shape inference failed (%s)", exc)
    initializers = {t.name for t in proto.graph.initializer}
    static_inputs = all(known_shape(shapes.get(v.name)) for v in proto.graph.input if v.name not in initializers)
    # symbolic inference cannot resolve dynamic spatial sizes; only try it when it can help
    if static_inputs and (wanted is None or any(not known_shape(shapes.get(name)) for name in wanted)):
        from onnxopt.runtime.scratch import symbolic_shape_inference

        symbolic = symbolic_shape_inference(proto)
        if symbolic is not None:
            found: dict[str, tuple[int | None, ...]] = {}
            collect_shapes(symbolic, found)
            for name, shape in found.items():
                if known_shape(shape) and not known_shape(shapes.get(name)):
                    shapes[name] = shape
    return shapes


def collect_shapes(proto, shapes: dict[str, tuple[int | None, ...]]) -> None:
    graph = proto.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor_type.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                       for d in tensor_type.shape.dim)


def known_shape(shape: tuple[int | None, ...] | None, rank: int | None = None) -> bool:
    return (shape is not None and (rank is None or len(shape) == rank)
            and all(isinstance(d, int) and d > 0 for d in shape))
