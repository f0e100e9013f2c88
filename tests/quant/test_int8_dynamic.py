"""``int8-dynamic``: MatMul/Gemm/LSTM weights in int8, activations quantized at run time."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt.passes.quantize_dynamic import QuantizeDynamicOptions, QuantizeDynamicPass
from tests.helpers import make_model, run_ort, shared_model
from tests.quant.models import conv_stack, cosine, op_types

INTEGER_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"}


def run_dynamic(model: onnx.ModelProto, **options):
    opt_pass = QuantizeDynamicPass(QuantizeDynamicOptions(**options))
    result = opt_pass(ir.from_proto(model))
    return ir.to_proto(result.model), opt_pass.report


def mlp(gemm_attrs: dict | None = None) -> onnx.ModelProto:
    """MatMul(32→64) → Relu → Gemm(64→16) → MatMul(16→8)."""
    rng = np.random.default_rng(0)
    attrs = gemm_attrs if gemm_attrs is not None else {"transB": 1, "alpha": 0.5, "beta": 2.0}
    fc_w = rng.standard_normal((16, 64) if attrs.get("transB") else (64, 16)).astype(np.float32) * 0.2
    inits = [
        numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32) * 0.2, "w1"),
        numpy_helper.from_array(fc_w, "fc_w"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "fc_b"),
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32) * 0.2, "w3"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "fc_w", "fc_b"], ["g"], name="fc", **attrs),
        helper.make_node("MatMul", ["g", "w3"], ["y"], name="mm3"),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    return make_model(graph)


def lstm_model(kind: str = "LSTM") -> onnx.ModelProto:
    """A bidirectional LSTM (or GRU), hidden 16, over [seq, batch, 8], then a MatMul head."""
    rng = np.random.default_rng(1)
    gates = 4 if kind == "LSTM" else 3
    hidden = 16
    inits = [
        numpy_helper.from_array((rng.standard_normal((2, gates * hidden, 8)) * 0.3).astype(np.float32), "W"),
        numpy_helper.from_array((rng.standard_normal((2, gates * hidden, hidden)) * 0.3).astype(np.float32), "R"),
        numpy_helper.from_array((rng.standard_normal((2, 2 * gates * hidden)) * 0.1).astype(np.float32), "B"),
        numpy_helper.from_array((rng.standard_normal((2 * hidden, 5)) * 0.3).astype(np.float32), "head_w"),
        numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node(kind, ["x", "W", "R", "B"], ["seq_out"], name="rnn", hidden_size=hidden, direction="bidirectional"),
        helper.make_node("Transpose", ["seq_out"], ["t"], name="transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["t", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "head_w"], ["y"], name="head"),
    ]
    graph = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 2, 5])], inits)
    return make_model(graph)


def test_matmul_and_gemm_are_quantized_and_close():
    model = mlp()
    quantized, report = run_dynamic(model)
    assert report.skipped_reason is None
    assert report.figures["gemm_rewritten"] == 1
    assert report.figures["quantized_nodes"] == 3
    assert set(op_types(quantized)) & INTEGER_OPS
    assert "Gemm" not in op_types(quantized)
    x = np.random.default_rng(3).standard_normal((16, 32)).astype(np.float32)
    assert cosine(run_ort(model, {"x": x})[0], run_ort(quantized, {"x": x})[0]) > 0.99


@pytest.mark.parametrize("attrs", [{}, {"transB": 1}, {"alpha": 2.0, "beta": 0.5}])
def test_gemm_rewrite_is_exact(attrs, monkeypatch):
    """Gemm → MatMul + Add before quantization changes nothing numerically."""
    model = mlp(attrs)
    opt_pass = QuantizeDynamicPass(QuantizeDynamicOptions(op_types=("Gemm",)))
    work = ir.from_proto(model)
    assert opt_pass._rewrite_gemms(work, {}) == {"fc"}
    x = np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)
    np.testing.assert_allclose(run_ort(ir.to_proto(work), {"x": x})[0], run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_lstm_is_quantized():
    model = lstm_model()
    quantized, report = run_dynamic(model)
    assert report.skipped_reason is None
    assert "DynamicQuantizeLSTM" in op_types(quantized)
    x = np.random.default_rng(4).standard_normal((6, 2, 8)).astype(np.float32)
    assert cosine(run_ort(model, {"x": x})[0].reshape(12, 5), run_ort(quantized, {"x": x})[0].reshape(12, 5)) > 0.99


def test_gru_is_reported_and_left_float():
    quantized, report = run_dynamic(lstm_model("GRU"))
    reasons = {s["node"]: s["reason"] for s in report.skipped}
    assert "no dynamically quantized GRU" in reasons["rnn"]
    assert "GRU" in op_types(quantized)
    assert report.figures["quantized_nodes"] == 1  # the MatMul head


def test_convolutions_are_left_float_by_default_and_warned_about_when_asked():
    quantized, report = run_dynamic(conv_stack())
    reasons = {s["node"]: s["reason"] for s in report.skipped}
    assert "ConvInteger is usually slow on CPU" in reasons["conv1"]
    assert "ConvInteger" not in op_types(quantized)
    with_conv, conv_report = run_dynamic(conv_stack(), op_types=("MatMul", "Conv"))
    assert "ConvInteger" in op_types(with_conv)
    assert any("ConvInteger" in w and "slower" in w for w in conv_report.warnings)


def test_exclude_and_per_channel():
    quantized, report = run_dynamic(mlp(), exclude=("mm3",), per_channel=True)
    assert {s["node"]: s["reason"] for s in report.skipped}["mm3"] == "excluded by exclude=mm3"
    assert report.figures["weights"] == "int8 per-channel"
    mm3 = next(n for n in quantized.graph.node if n.name == "mm3")
    assert mm3.op_type == "MatMul" and mm3.input[1] == "w3"


def test_nothing_to_quantize_skips():
    model = conv_stack()
    _, report = run_dynamic(model, op_types=("LSTM",))
    assert report.skipped_reason == "no LSTM nodes to quantize"


def test_already_quantized_is_skipped():
    quantized, _ = run_dynamic(mlp())
    _, report = run_dynamic(quantized)
    assert "already quantized" in report.skipped_reason


def test_int8_dynamic_through_the_pipeline():
    quantized, report = onnxopt.optimize(mlp(), "int8-dynamic")
    assert report.passes[0].status == "modified"
    x = np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)
    assert cosine(run_ort(mlp(), {"x": x})[0], run_ort(quantized, {"x": x})[0]) > 0.99


def test_easyocr_bilstm_recognizer():
    path = shared_model("easyocr_en_g2_rec.onnx")
    model = onnx.load(str(path))
    quantized, report = run_dynamic(model)
    assert report.skipped_reason is None
    assert op_types(quantized).count("DynamicQuantizeLSTM") == 2
    x = np.random.default_rng(0).standard_normal((1, 1, 64, 128)).astype(np.float32)
    reference, candidate = run_ort(model, {"input": x})[0], run_ort(quantized, {"input": x})[0]
    assert cosine(reference.reshape(1, -1), candidate.reshape(1, -1)) > 0.99


def test_weights_are_per_channel_by_default_so_small_output_channels_survive():
    """One scale per tensor rounds the weights of a small-valued output channel to zero
    (paraphrase-MiniLM's sentence ranking: Spearman 0.9775 per tensor, 0.9974 per channel)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((32, 4)).astype(np.float32)
    weight[:, 0] *= 1e-3  # an output channel three orders of magnitude smaller than the rest
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = make_model(graph)
    assert QuantizeDynamicOptions().per_channel is True
    quantized, report = run_dynamic(model)
    assert "per-channel" in report.figures["weights"]
    x = rng.standard_normal((64, 32)).astype(np.float32)
    (reference,) = run_ort(model, {"x": x})
    (result,) = run_ort(quantized, {"x": x})
    small = np.linalg.norm(result[:, 0] - reference[:, 0]) / np.linalg.norm(reference[:, 0])
    assert small < 0.05
