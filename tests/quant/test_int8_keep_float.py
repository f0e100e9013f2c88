"""int8 keep_float=N: the activations whose rounding costs most stay float, chosen by measurement."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt.passbase import PassContext
from onnxopt.passes._float_fallback import activation_quantizers, without_rounding
from tests.helpers import run_ort


def two_scale_model() -> onnx.ModelProto:
    """x [1, 2, 8, 8] → Conv → t: channel 0 is 100·x₀ (range ~0..1000), channel 1 is 0.01·x₁
    (~0..0.1) → Conv reading t's channel 1 × 100 → y. One per-tensor 8-bit grid for t (a step
    of ~4) wipes channel 1 out: rounding t is what costs, not rounding x."""
    w1 = np.zeros((2, 2, 1, 1), np.float32)
    w1[0, 0], w1[1, 1] = 100.0, 0.01
    w2 = np.zeros((1, 2, 1, 1), np.float32)
    w2[0, 1] = 100.0
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["t"], name="spread"),
        helper.make_node("Conv", ["t", "w2"], ["y"], name="pick"),
    ]
    graph = helper.make_graph(
        nodes, "two_scales", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def samples(count=16, seed=1):
    def stream():
        rng = np.random.default_rng(seed)
        for _ in range(count):
            yield {"x": np.abs(rng.standard_normal((1, 2, 8, 8))).astype(np.float32) * 3}
    return stream


def relative_error(model, candidate, feeds=None) -> float:
    """Squared output error relative to the float outputs' spread (default: 4 fresh samples)."""
    feeds = feeds or list(samples(4, seed=9)())
    ref = np.concatenate([run_ort(model, f)[0].ravel() for f in feeds])
    out = np.concatenate([run_ort(candidate, f)[0].ravel() for f in feeds])
    return float(np.sum((out - ref) ** 2) / np.sum((ref - ref.mean()) ** 2))


SPEC = "int8:library_check=false:bias_correction=false"


def test_the_activation_whose_rounding_costs_most_stays_float():
    model = two_scale_model()
    plain, _ = onnxopt.optimize(model, SPEC, context=PassContext(calibration=samples()))
    kept, report = onnxopt.optimize(model, SPEC + ":keep_float=1", context=PassContext(calibration=samples()))
    assert relative_error(model, plain) > 0.1  # channel 1 lost in t's grid
    assert relative_error(model, kept) < 0.01
    figure = report.passes[0].figures["keep_float"]
    assert figure.startswith("1 of ") and "(t)" in figure
    # the stem's input and the rest stay quantized: only t lost its pair
    assert "t" not in activation_quantizers(kept) and "x" in activation_quantizers(kept)
    assert "2 ops reading or writing them run in float" in figure  # t's producer and its reader


def test_without_rounding_removes_the_pair_and_reads_the_float_tensor():
    model = two_scale_model()
    quantized, _ = onnxopt.optimize(model, SPEC, context=PassContext(calibration=samples()))
    candidates = activation_quantizers(quantized)
    assert {"x", "t"} <= set(candidates)
    bypassed = without_rounding(quantized, {"t"})
    ops = [n.op_type for n in bypassed.graph.node]
    assert ops.count("QuantizeLinear") == sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node) - 1
    readers = {n.name: n for n in bypassed.graph.node if "t" in n.input}
    assert [n.op_type for n in readers.values()] == ["Clip"]  # to the pair's range, no rounding
    clipped = next(iter(readers.values())).output[0]
    assert [n.name for n in bypassed.graph.node if clipped in n.input] == ["pick"]
    onnx.checker.check_model(bypassed)
    assert "t" in activation_quantizers(quantized)  # the model given is not changed


def test_keep_float_must_not_be_negative():
    with pytest.raises(Exception, match="keep_float"):
        onnxopt.optimize(two_scale_model(), "int8:keep_float=-1", context=PassContext(calibration=samples()))


def relu_model() -> onnx.ModelProto:
    """x → Conv → Relu → r → Conv → y, with signed Conv outputs: the quantizer deletes the
    Relu and lets r's uint8 Q/DQ pair (zero point 0) clamp the negatives instead."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="first"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="second"),
    ]
    graph = helper.make_graph(
        nodes, "relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
        [numpy_helper.from_array(rng.standard_normal((4, 2, 1, 1)).astype(np.float32), "w1"),
         numpy_helper.from_array(rng.standard_normal((3, 4, 1, 1)).astype(np.float32), "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_pair_that_stands_for_a_deleted_relu_still_clamps_in_float():
    model = relu_model()

    def signed():
        rng = np.random.default_rng(2)
        for _ in range(16):
            yield {"x": rng.standard_normal((1, 2, 8, 8)).astype(np.float32)}

    quantized, _ = onnxopt.optimize(model, SPEC, context=PassContext(calibration=signed))
    assert "Relu" not in [n.op_type for n in quantized.graph.node]  # what makes the clamp necessary
    tensor = next(t for t in activation_quantizers(quantized) if t != "x")
    bypassed = without_rounding(quantized, {tensor})
    feeds = {"x": np.random.default_rng(8).standard_normal((1, 2, 8, 8)).astype(np.float32)}

    def error(candidate):
        return relative_error(model, candidate, [feeds])

    assert error(bypassed) < error(quantized) < 0.05  # without the clamp the negatives leak: error ~0.5


def test_a_short_scan_budget_scores_on_fewer_samples():
    from onnxopt.passes._float_fallback import MIN_SAMPLES, keep_sensitive_float
    from onnxopt.passes._output_similarity import FloatReference

    model = two_scale_model()
    quantized, _ = onnxopt.optimize(model, SPEC, context=PassContext(calibration=samples()))
    reference = FloatReference(model, list(samples(16)()))
    _, full = keep_sensitive_float(reference, quantized, 1)
    _, short = keep_sensitive_float(reference, quantized, 1, seconds=1e-9)
    assert full.samples == 16 and short.samples == MIN_SAMPLES
    assert short.kept == ["t"]  # the decisive activation is found on fewer samples too


class _StubReference:
    """A FloatReference whose error is a table over the set of activations kept float."""

    samples = [None] * 8

    def __init__(self, errors: dict[frozenset, float]):
        self.errors, self.scored = errors, []

    def relative_error(self, model) -> float:
        removed = frozenset(t for t in ("x", "t") if t not in activation_quantizers(model))
        self.scored.append(removed)
        return self.errors[removed]


def test_greedy_keeps_a_removal_only_where_it_helps_with_those_kept_before():
    from onnxopt.passes._float_fallback import keep_sensitive_float

    quantized, _ = onnxopt.optimize(two_scale_model(), SPEC, context=PassContext(calibration=samples()))
    # each removal helps alone; together they are worse than t alone: only t is kept
    both_worse = _StubReference({frozenset(): 1.0, frozenset({"t"}): 0.2, frozenset({"x"}): 0.5,
                                 frozenset({"x", "t"}): 0.3})
    _, result = keep_sensitive_float(both_worse, quantized, 2)
    assert result.kept == ["t"] and result.after == 0.2
    # a removal that does not help alone is never tried in combination
    x_useless = _StubReference({frozenset(): 1.0, frozenset({"t"}): 0.2, frozenset({"x"}): 1.0,
                                frozenset({"x", "t"}): 0.1})
    _, result = keep_sensitive_float(x_useless, quantized, 2)
    assert result.kept == ["t"] and frozenset({"x", "t"}) not in x_useless.scored


def test_a_tensor_with_two_quantizers_or_a_quantized_graph_output_is_no_candidate():
    quantized, _ = onnxopt.optimize(two_scale_model(), SPEC, context=PassContext(calibration=samples()))
    q = next(n for n in quantized.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "t")
    twice = onnx.ModelProto()
    twice.CopyFrom(quantized)
    extra = onnx.NodeProto()
    extra.CopyFrom(q)
    extra.name, extra.output[0] = "second_q", "t_second_q"
    twice.graph.node.append(extra)
    assert "t" not in activation_quantizers(twice)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(quantized)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info(q.output[0], TensorProto.UINT8, None))
    assert "t" not in activation_quantizers(exposed)
