"""The layers the search can decompose, at the shapes every score and timing runs at.

Candidates: dense k×k ``Conv`` (group 1, k > 1), 1×1 ``Conv`` and ``Gemm``/``MatMul`` with a
constant float weight whose both dimensions reach ``min_pointwise_channels``, at or above
``min_macs`` (MACs = F·C·kh·kw·H_out·W_out·N for a conv, rows·K·N for a matrix), with a
unique node name (``include=`` addresses it); largest first, at most ``max_layers``. Input
shapes: ONNX shape inference with the graph inputs fixed at the shapes of the evaluator's
first batch (``latency_feeds()``), else at ``context.input_shapes`` (``--input-shape``);
values inference cannot size (computed ``Resize`` sizes, ...) are read off one run of the
model. Without any concrete input shape a dynamic batch is fixed to 1, and a layer whose
input stays dynamic is skipped with how to fix it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt import irutil
from onnxopt.analysis import TARGET_DECOMPOSE, decomposition_target
from onnxopt.passes.auto import CONV_METHODS, MATRIX_METHODS, AutoOptions
from onnxopt.runtime import first_line
from onnxopt.search.cache import digest
from onnxopt.search.records import Layer
from onnxopt.search.run import Run

logger = logging.getLogger(__name__)

_ORT_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


@dataclass
class LayerSet:
    layers: list[Layer]  # the candidates, most MACs first (at most max_layers)
    rest: list[Layer]  # beyond max_layers, each with its reason
    skipped: list[tuple[str, str, str]]  # (node name, reason, op) of the nodes that are not candidates
    shapes: dict[str, Any] | None  # the report's "layer_shapes" figure (None: no Conv/Gemm/MatMul at all)


def enumerate_layers(run: Run) -> LayerSet:
    graph = run.model.graph
    nodes = [n for n in graph if n.op_type in ("Conv", "Gemm", "MatMul") and n.domain in ("", "ai.onnx")]
    names: dict[str, int] = {}
    for node in nodes:
        name = _node_name(node)
        names[name] = names.get(name, 0) + 1
    wanted = [n.inputs[0].name for n in nodes if n.inputs and n.inputs[0] is not None]
    shapes, fixed, figure = layer_shapes(run, wanted) if nodes else ({}, False, None)
    layers, skipped = [], []
    for node in nodes:
        name = _node_name(node)
        result = _candidate(run.options, node, name, shapes, names, fixed)
        if isinstance(result, str):
            skipped.append((name, result, node.op_type))
        else:
            layers.append(result)
    layers.sort(key=lambda layer: -layer.macs)
    limit = run.options.max_layers
    rest: list[Layer] = []
    if limit and len(layers) > limit:
        layers, rest = layers[:limit], layers[limit:]
        for layer in rest:
            layer.reason = f"not among the {limit} layers with the most MACs (max_layers)"
    return LayerSet(layers, rest, skipped, figure)


def _node_name(node: ir.Node) -> str:
    return node.name or (node.outputs[0].name if node.outputs else "")


def _candidate(options: AutoOptions, node: ir.Node, name: str, shapes: dict, names: dict[str, int],
               shapes_fixed: bool) -> Layer | str:
    """The node as a candidate layer, or why it is not one."""
    if not irutil.selected(name, options.include, ()):
        return "excluded by pattern (matches no include glob)"
    if not irutil.selected(name, (), options.exclude):
        return "excluded by pattern (matches an exclude glob)"
    if not name or names.get(name, 0) > 1:
        return "node name is empty or not unique (include= cannot address it)"
    if node.metadata_props.get("onnxopt.decomposed"):
        return "already decomposed"
    if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return "weight is not constant"
    weight = irutil.constant_array(node.inputs[1])
    if weight is None:
        return "weight is not constant"
    if not np.issubdtype(weight.dtype, np.floating):
        return f"weight dtype {weight.dtype} is not float"
    if irutil.use_count(node.inputs[1]) > 1:
        return "weight is shared with another node"
    if node.op_type == "Conv":
        if weight.ndim != 4:
            return f"{weight.ndim - 2}-D convolutions are not supported"
        attrs = irutil.conv_attributes(node, weight.shape)
        if attrs.group != 1:
            return f"group={attrs.group} (grouped/depthwise convs are not decomposed)"
    elif weight.ndim != 2:
        return f"weight is {weight.ndim}-D (only 2-D weights)"
    x_shape = shapes.get(node.inputs[0].name)
    if x_shape is None or not all(isinstance(d, int) and d > 0 for d in x_shape):
        if shapes_fixed:
            return ("input shape unknown: neither shape inference nor a run of the model at the data's "
                    "shapes gave it; a single-layer model cannot be timed")
        return ("input shape unknown (dynamic): a single-layer model cannot be timed; give the input's "
                "shape (--input-shape NAME:DIMS) or data")
    y_shape = shapes.get(node.outputs[0].name)
    if y_shape is not None and not all(isinstance(d, int) and d > 0 for d in y_shape):
        y_shape = None
    if node.op_type == "Conv":
        F, C, kh, kw = weight.shape
        if y_shape is not None and len(y_shape) == 4:
            out_hw = (y_shape[2], y_shape[3])
        else:
            from onnxopt.passes._decompose import conv_out_hw

            out_hw = conv_out_hw(attrs, (x_shape[2], x_shape[3])) if len(x_shape) == 4 else None
            if out_hw is None:
                return "output shape unknown"
        macs = float(F * C * kh * kw * out_hw[0] * out_hw[1] * x_shape[0])
        if decomposition_target("Conv", weight.shape, attrs.group) == TARGET_DECOMPOSE:
            kind, methods = "kxk", tuple(m for m in options.methods if m in CONV_METHODS)
        else:  # 1×1: a matrix product per pixel
            if min(F, C) < options.min_pointwise_channels:
                return f"1×1 conv {C}→{F}: below min_pointwise_channels={options.min_pointwise_channels}"
            kind, methods = "pointwise", tuple(m for m in options.methods if m in MATRIX_METHODS)
    else:
        K, N = weight.shape
        if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
            N, K = weight.shape
        if min(K, N) < options.min_pointwise_channels:
            return f"{node.op_type} {K}→{N}: below min_pointwise_channels={options.min_pointwise_channels}"
        rows = math.prod(x_shape[:-1]) if len(x_shape) > 1 else 1
        if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
            rows = x_shape[-1]
        macs = float(rows * K * N)
        kind, methods = "matrix", tuple(m for m in options.methods if m in MATRIX_METHODS)
    if not methods:
        return f"no method among methods={'|'.join(options.methods)} applies to a {kind} layer"
    if macs < options.min_macs:
        return f"below min_macs ({macs:.3g} < {options.min_macs:.3g})"
    bias = irutil.constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    attributes = {"attrs": {k: str(v) for k, v in sorted(node.attributes.items())}}
    key = digest("layer", node.op_type, weight, bias if bias is not None else b"", tuple(x_shape), attributes)
    return Layer(name, node.op_type, kind, node, tuple(int(d) for d in x_shape),
                 tuple(int(d) for d in y_shape) if y_shape else None, tuple(weight.shape), macs, key, methods)


def input_shapes(run: Run) -> tuple[dict[str, tuple[int, ...]], dict[str, np.ndarray] | None, dict[str, Any]]:
    """Concrete shapes of the graph inputs to time layers at, the feeds they come from, and
    the report's figure (inputs and where each shape came from).

    The evaluator's first batch (``latency_feeds()``) is what every score and timing runs
    on, so its shapes come first; inputs it lacks take the user's ``--input-shape``
    (``context.input_shapes``)."""
    graph_inputs = {v.name: v for v in run.model.graph.inputs if not v.const_value}
    given = {k: tuple(int(d) for d in v) for k, v in (getattr(run.context, "input_shapes", None) or {}).items()
             if k in graph_inputs}
    feeds = None
    getter = getattr(run.evaluator, "latency_feeds", None)
    if callable(getter):
        try:
            feeds = {k: np.asarray(v) for k, v in dict(getter()).items() if k in graph_inputs}
        except Exception as exc:  # the data may not decode: then shapes come from --input-shape alone
            run.journal.notes.append(f"layer shapes: the evaluator's first batch is not available ({first_line(exc)})")
    shapes = dict(given)
    origin = {name: "--input-shape" for name in given}
    for name, array in (feeds or {}).items():
        shape = tuple(int(d) for d in array.shape)
        if name in given and given[name] != shape:
            run.journal.notes.append(
                f"layer shapes: input '{name}' is {'×'.join(map(str, shape))} in the data and "
                f"{'×'.join(map(str, given[name]))} in --input-shape; layers are timed at the "
                "data's shape (what the search scores and times)")
        shapes[name] = shape
        origin[name] = "data (first batch)"
    figure = {"inputs": {name: list(shape) for name, shape in shapes.items()},
              "from": {name: origin[name] for name in shapes}}
    return shapes, feeds, figure


def layer_shapes(run: Run, wanted: list[str]) -> tuple[dict[str, tuple[int | None, ...]], bool, dict[str, Any]]:
    """Value name → shape, whether the graph inputs had concrete shapes, and the report's figure.

    ONNX shape inference (with data propagation) with the inputs fixed at the data's or the
    user's shapes, and for values still unknown one run of the model on the first batch with
    those values as extra outputs. Without concrete input shapes: the dynamic batch fixed to
    1, other dynamic dimensions unknown."""
    import onnx

    from onnxopt.analysis.shapes import collect_shapes, known_shape, static_shapes

    fixed, feeds, figure = input_shapes(run)
    if not fixed:
        figure["inferred_by"] = "shape inference (dynamic batch fixed to 1)"
        return static_shapes(run.model, wanted), False, figure
    light = onnx.ModelProto()
    light.CopyFrom(run.base)
    for tensor in light.graph.initializer:
        if len(tensor.raw_data) > 4096:  # shapes need dims, not the weights themselves
            tensor.ClearField("raw_data")
    fix_input_dims(light, fixed)
    del light.graph.value_info[:]  # stale shapes from the export would contradict the fixed ones
    shapes: dict[str, tuple[int | None, ...]] = {}
    how = ["ONNX shape inference"]
    try:
        collect_shapes(onnx.shape_inference.infer_shapes(light, data_prop=True), shapes)
    except Exception as exc:
        logger.info("auto: ONNX shape inference failed (%s)", exc)
    # what ONNX shape inference leaves unknown comes from one run of the model (exact, and
    # cheaper than onnxruntime's symbolic inference on the models that need it)
    missing = [name for name in dict.fromkeys(wanted) if not known_shape(shapes.get(name))]
    if missing:
        ran = _run_for_shapes(run, missing, fixed, feeds)
        if ran:
            shapes.update(ran)
            how.append(f"one run of the model ({len(ran)} values)")
    figure["inferred_by"] = " + ".join(how)
    return shapes, True, figure


def _run_for_shapes(run: Run, names: list[str], fixed: dict[str, tuple[int, ...]],
                    feeds: dict[str, np.ndarray] | None) -> dict[str, tuple[int, ...]]:
    """Shapes of ``names`` read off one onnxruntime run of the model (CPU, optimizations
    off) on the first batch, or seeded random inputs at the fixed shapes."""
    import onnx

    from onnxopt.runtime import create_session

    run.progress("running the model once to read its layers' shapes")
    full = onnx.ModelProto()
    full.CopyFrom(run.base)
    fix_input_dims(full, fixed)
    outputs = {o.name for o in full.graph.output}
    full.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in outputs)
    try:
        session = create_session(full, "cpu", threads=getattr(run.evaluator, "threads", None) or 1,
                                 optimization="disable")
        rng = np.random.default_rng(0)
        ready = {}
        for value in session.get_inputs():
            dtype = np.dtype(_ORT_NUMPY.get(value.type, np.float32))
            if feeds is not None and value.name in feeds:
                ready[value.name] = feeds[value.name].astype(dtype, copy=False)
            elif value.name in fixed:
                ready[value.name] = (rng.standard_normal(fixed[value.name]) if dtype.kind == "f" else
                                     np.zeros(fixed[value.name])).astype(dtype)
            else:
                return {}
        values = session.run(names, ready)
    except Exception as exc:  # onnxruntime raises several unrelated types
        message = first_line(exc.__cause__ or exc)
        run.journal.notes.append(f"layer shapes: the model did not run at the given shapes ({message})")
        return {}
    return {name: tuple(int(d) for d in np.shape(value)) for name, value in zip(names, values, strict=True)}


def fix_input_dims(proto, fixed: dict[str, tuple[int, ...]]) -> None:
    """Set the graph inputs' dimensions to ``fixed`` (same rank only); a dynamic leading
    dimension of any other input becomes 1."""
    initializers = {t.name for t in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shape = fixed.get(value.name)
        if shape is not None and len(shape) == len(dims):
            for dim, size in zip(dims, shape, strict=True):
                dim.Clear()
                dim.dim_value = int(size)
        elif dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            dims[0].Clear()
            dims[0].dim_value = 1
