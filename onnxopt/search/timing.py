"""Per-layer latency gain: each layer alone, original against decomposed, timed on the target.

A single-layer model (the layer at its real input shape) and the same model with the layer
decomposed (the decomposition pass with ``include=`` it), quantized as the final model would
run it (with a quantized consumer after the layer, see :func:`with_quantized_consumer`), are
timed interleaved, fastest runs compared; gain = t_original − t_decomposed. Each method is
first tried at its most aggressive level; only methods that save at least
``min_layer_speedup`` there are measured at the other levels (a rank that does not pay at
the lowest level does not pay at a higher one). Candidates that save no time are declined
without any accuracy measurement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt import irutil
from onnxopt.errors import OnnxoptError
from onnxopt.passbase import PassContext
from onnxopt.registry import PassSpec
from onnxopt.search import measure
from onnxopt.search.cache import digest
from onnxopt.search.clock import OutOfTime
from onnxopt.search.records import Candidate, Layer, QuantBaseline, method_summary
from onnxopt.search.run import Run
from onnxopt.search.specs import decomposition_options


def time_layers(run: Run, layers: list[Layer], baseline: QuantBaseline) -> None:
    """Fill each layer's candidates with their measured latencies (or why not); raises
    :class:`OutOfTime` after marking the layers left unmeasured."""
    total = len(layers)
    for index, layer in enumerate(layers):
        run.progress(f"timing {layer.name} ({layer.describe()})", index, total)
        try:
            run.clock.check("per-layer latency")
        except OutOfTime:
            for rest in layers[index:]:
                rest.reason = rest.reason or "not measured: the time budget ran out"
            raise
        try:
            _time_layer(run, layer, baseline)
        except OnnxoptError as exc:
            layer.reason = f"could not be timed: {exc}"
    run.progress("layers timed", total, total)


def _time_layer(run: Run, layer: Layer, baseline: QuantBaseline) -> None:
    levels = sorted(set(run.options.levels))
    layer.candidates = [Candidate(layer, m, lv) for m in layer.methods for lv in levels]
    by_method = {m: [c for c in layer.candidates if c.method == m] for m in layer.methods}
    tiny = None
    built: dict[int, Any] = {}

    def measure_group(group: list[Candidate]) -> None:
        nonlocal tiny
        todo = []
        for candidate in group:
            hit = run.cache.get("latency", _latency_key(run, candidate, baseline))
            if hit is not None:
                candidate.ranks = hit.get("ranks")
                candidate.reason = hit.get("reason")
                candidate.base_s, candidate.cand_s = hit.get("base_s"), hit.get("cand_s")
                continue
            todo.append(candidate)
        if not todo:
            return
        if tiny is None:
            tiny = single_layer_model(run, layer)
        protos = []
        measured = []
        for candidate in todo:
            proto, ranks = _decompose_single(run, tiny, candidate)
            if proto is None:
                candidate.reason = f"not applicable: {ranks}"
                run.cache.put("latency", _latency_key(run, candidate, baseline), {"reason": candidate.reason})
                continue
            candidate.ranks = ranks
            twin = _same_ranks(candidate)
            if twin is not None:
                candidate.reason = f"same ranks as {twin.label}"
                candidate.base_s, candidate.cand_s = twin.base_s, twin.cand_s
                run.cache.put("latency", _latency_key(run, candidate, baseline), {
                    "ranks": ranks, "reason": candidate.reason, "base_s": twin.base_s, "cand_s": twin.cand_s})
                continue
            protos.append(_as_deployed(run, proto, layer, baseline))
            measured.append(candidate)
        if not measured:
            return
        base = built.get(0)
        if base is None:
            base = built[0] = _as_deployed(run, tiny, layer, baseline)
        times = measure.latency(run, [base, *protos])
        for candidate, seconds in zip(measured, times[1:], strict=True):
            candidate.base_s, candidate.cand_s = times[0], seconds
            run.cache.put("latency", _latency_key(run, candidate, baseline), {
                "ranks": candidate.ranks, "base_s": times[0], "cand_s": seconds})

    # stage 1: each method at its most aggressive level
    measure_group([cands[0] for cands in by_method.values()])
    # stage 2: the other levels of the methods that paid there
    rest = []
    for cands in by_method.values():
        head = cands[0]
        if head.reason and head.reason.startswith("not applicable") and "MACs would not drop" in head.reason:
            for c in cands[1:]:
                c.reason = f"not applicable: MACs do not drop already at {head.label}"
            continue
        if head.speedup is None or head.speedup < run.options.min_layer_speedup:
            for c in cands[1:]:
                c.reason = (f"not measured: {head.label} already does not save time"
                            if head.speedup is not None else f"not measured: {head.label} {head.reason}")
            continue
        rest.extend(cands[1:])
    measure_group(rest)
    threshold = run.options.min_layer_speedup
    for candidate in layer.candidates:
        if candidate.reason is None and (candidate.speedup is None or candidate.speedup < threshold):
            speed = candidate.speedup
            candidate.reason = ("does not run" if speed is None or speed == 0 else
                                f"measured {speed:.2f}× on {run.target} (< {threshold:g}×)" +
                                (" — slower" if speed < 1 else ""))
    if not any(c.reason is None for c in layer.candidates):
        layer.reason = "no method saves time: " + method_summary(layer)


def _same_ranks(candidate: Candidate) -> Candidate | None:
    """An earlier candidate of the layer with the same method and ranks, already timed."""
    for other in candidate.layer.candidates:
        if other is candidate:
            return None
        if other.method == candidate.method and other.ranks == candidate.ranks and other.cand_s is not None:
            return other
    return None


def _latency_key(run: Run, candidate: Candidate, baseline: QuantBaseline) -> str | None:
    if not run.options.cache:
        return None
    domain = run.options.quantize if baseline.quantizes(candidate.layer) else "none"
    return digest("layer-latency", candidate.layer.key, candidate.method, candidate.level, run.rounding,
                  domain, run.target, measure.latency_env(run))


def single_layer_model(run: Run, layer: Layer):
    """The layer alone in a model (ModelProto), at its real input shape."""
    import onnx
    from onnx import helper, numpy_helper

    from onnxopt import io

    node = layer.node
    x = node.inputs[0]
    inits = []
    names = [x.name]
    for value in node.inputs[1:]:
        if value is None:
            names.append("")
            continue
        array = irutil.constant_array(value)
        inits.append(numpy_helper.from_array(array, value.name))
        names.append(value.name)
    out = node.outputs[0].name
    proto = helper.make_node(node.op_type, names, [out], name=layer.name)
    proto.attribute.extend(ir.serde.serialize_attribute(a) for a in node.attributes.values())
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(irutil.constant_array(node.inputs[1]).dtype))
    graph = helper.make_graph(
        [proto], "layer", [helper.make_tensor_value_info(x.name, dtype, list(layer.input_shape))],
        [helper.make_tensor_value_info(out, dtype, list(layer.output_shape) if layer.output_shape else None)],
        inits,
    )
    opset = run.model.opset_imports.get("", None) or run.model.opset_imports.get("ai.onnx", 13)
    tiny = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    tiny.ir_version = max(7, min(run.base.ir_version or 7, onnx.IR_VERSION))
    io.clamp_ir_version(tiny)
    return tiny


def _decompose_single(run: Run, tiny, candidate: Candidate):
    """(decomposed single-layer proto, ranks) or (None, reason)."""
    options = decomposition_options(run.options, run.rounding, candidate, [candidate.layer], tiny=True)
    try:
        proto, reports = measure.build(run, [PassSpec(candidate.method, options)], PassContext(), base=tiny)
    except OnnxoptError as exc:
        return None, f"decomposition failed: {exc}"
    report = reports[0]
    if not report.applied:
        reason = report.skipped[0]["reason"] if report.skipped else (report.skipped_reason or "not applied")
        return None, reason
    return proto, dict(report.applied[0].get("ranks") or {})


def _as_deployed(run: Run, proto, layer: Layer, baseline: QuantBaseline):
    """The single-layer model as the final model would run it (quantized or not)."""
    if not baseline.quantizes(layer):
        return proto
    if run.options.quantize == "int8":
        spec = PassSpec("int8", {"calib": "random", "samples": 2, "preprocess": False})
        proto = with_quantized_consumer(proto)
    else:
        spec = PassSpec(run.options.quantize, {})
    result, reports = measure.build(run, [spec], PassContext(), base=proto)
    if reports[0].skipped_reason:
        raise OnnxoptError(f"{run.options.quantize} of the single-layer model: {reports[0].skipped_reason}")
    return result


def with_quantized_consumer(proto):
    """The single-layer model with its output fed to a cheap op the QDQ quantizer quantizes.

    onnxruntime fuses ``DQ → Conv → Q`` into an integer kernel only when the conv's output
    is quantized, and the quantizer quantizes it only for a quantized consumer: a lone conv
    keeps a float output and runs unfused, slower than float, which makes decompositions
    look several times faster than they are in the whole quantized model. In a real model a
    conv's output always feeds something; a 1×1 MaxPool (4-D) or an Add of the output to
    itself (otherwise) stands in for it, costing the original and the decomposed layer the same."""
    import onnx
    from onnx import helper

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    output = copy.graph.output[0]
    name = output.name
    inner = f"{name}/before_consumer"
    for node in copy.graph.node:
        for index, value in enumerate(node.output):
            if value == name:
                node.output[index] = inner
    rank = len(output.type.tensor_type.shape.dim) if output.type.tensor_type.HasField("shape") else 0
    if rank == 4:
        copy.graph.node.append(helper.make_node("MaxPool", [inner], [name], name="consumer", kernel_shape=[1, 1]))
    else:
        copy.graph.node.append(helper.make_node("Add", [inner, inner], [name], name="consumer"))
    return copy
