"""``int8`` bias correction: the output-mean shift that rounding the weights causes is removed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.passbase import PassContext
from tests.helpers import make_model, run_ort
from tests.quant.models import conv_stack
from tests.quant.test_int8 import context, run_int8


def biased_rounding_conv() -> onnx.ModelProto:
    """Conv(3→4, 3×3) whose weights all sit 0.45 of an 8-bit step above a level (and so
    round down together), except the largest, which fixes the symmetric per-channel scale."""
    rng = np.random.default_rng(0)
    step = 0.01
    levels = rng.integers(5, 60, size=(4, 3, 3, 3)).astype(np.float64)
    weight = (levels + 0.45) * step
    weight[:, 0, 0, 0] = 127 * step
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], "biased",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])], inits)
    return make_model(graph)


def channel_mean_error(model, quantized) -> np.ndarray:
    x = np.random.default_rng(9).random((64, 3, 8, 8), dtype=np.float32)  # the calibration distribution
    diff = run_ort(quantized, {"x": x})[0].astype(np.float64) - run_ort(model, {"x": x})[0]
    return np.abs(diff.mean(axis=(0, 2, 3)))


def test_bias_correction_removes_the_mean_shift_of_rounded_weights():
    model = biased_rounding_conv()
    # 8-bit weights so that the construction's rounding is the one the quantizer does
    plain, _ = run_int8(model, context(), bias_correction=False, reduce_range=False)
    corrected, report = run_int8(model, context(), bias_correction=True, reduce_range=False)
    before, after = channel_mean_error(model, plain), channel_mean_error(model, corrected)
    assert before.min() > 0.05  # 27 weights × −0.45 step × E[x] = 0.5: a real shift
    assert after.max() < 0.2 * before.min()
    assert report.figures["bias_correction"].startswith("1 layers, mean |shift|")
    assert report.figures["bias_correction"].endswith("32 samples")


def test_bias_correction_changes_only_biases():
    plain, _ = run_int8(conv_stack(), context(), bias_correction=False)
    corrected, report = run_int8(conv_stack(), context())
    assert report.figures["bias_correction"].startswith("3 layers")  # conv1, conv2, fc (the MatMul has no bias)
    before = {t.name: numpy_helper.to_array(t) for t in plain.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in corrected.graph.initializer}
    assert before.keys() == after.keys()
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    assert changed and all(after[name].dtype == np.int32 and after[name].ndim == 1 for name in changed)
    assert [n.op_type for n in plain.graph.node] == [n.op_type for n in corrected.graph.node]


def test_a_model_without_biases_is_reported():
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")])
    batches = lambda: iter([{"x": rng.random((8, 8), dtype=np.float32)}])  # noqa: E731
    quantized, report = run_int8(make_model(graph), PassContext(calibration=batches))
    assert report.skipped_reason is None
    assert report.figures["bias_correction"] == "no layer with a quantized bias"


def test_a_failing_correction_keeps_the_quantized_model_and_warns(monkeypatch):
    from onnxopt.passes import _bias_correction as bias_correction

    def broken(*args, **kwargs):
        raise RuntimeError("cannot run the error model")

    monkeypatch.setattr(bias_correction, "correct_bias", broken)
    quantized, report = run_int8(conv_stack(), context())
    assert report.skipped_reason is None and report.figures["bias_correction"] == "failed"
    assert any("bias correction failed (cannot run the error model)" in w for w in report.warnings)
    assert "QuantizeLinear" in {n.op_type for n in quantized.graph.node}


def biased_rounding_gemm(trans_b: int, alpha: float) -> onnx.ModelProto:
    """Gemm(x[N,16], B, C) with B's weights sitting 0.45 of a step above a level, as above;
    every output column's largest weight is 127 steps, so per-tensor and per-channel
    scales agree."""
    rng = np.random.default_rng(1)
    step = 0.01
    weight = (rng.integers(5, 60, size=(16, 8)) + 0.45) * step  # [K, N]
    weight[0, :] = 127 * step
    b = weight.T if trans_b else weight
    inits = [numpy_helper.from_array(b.astype(np.float32), "B"), numpy_helper.from_array(np.zeros(8, np.float32), "C")]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="fc", transB=trans_b, alpha=alpha)], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    return make_model(graph)


@pytest.mark.parametrize("trans_b, alpha", [(0, 0.5), (1, 2.0)])
def test_bias_correction_of_a_gemm(trans_b, alpha):
    model = biased_rounding_gemm(trans_b, alpha)

    def batches():
        rng = np.random.default_rng(5)
        for _ in range(4):
            yield {"x": rng.random((8, 16), dtype=np.float32)}

    data = PassContext(calibration=batches)
    plain, _ = run_int8(model, data, bias_correction=False, reduce_range=False)
    corrected, report = run_int8(model, data, reduce_range=False)
    assert report.figures["bias_correction"].startswith("1 layers")
    x = np.random.default_rng(9).random((64, 16), dtype=np.float32)
    reference = run_ort(model, {"x": x})[0].astype(np.float64)
    before = np.abs((run_ort(plain, {"x": x})[0] - reference).mean(0))
    after = np.abs((run_ort(corrected, {"x": x})[0] - reference).mean(0))
    assert before.min() > 0.01
    assert after.max() < 0.3 * before.min()
