"""int8: a Concat of unlike ranges (a detector head's boxes and scores) stays float."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt.passbase import PassContext
from onnxopt.passes._int8_scope import mixed_range_nodes
from tests.helpers import run_ort


def detector_head() -> onnx.ModelProto:
    """x [1, 8, 8, 8] → boxes (Conv, range ~±3) and scores (Conv → Sigmoid → ×0.02, range 0..0.02)
    → Concat on channels → Reshape [1, 5, 64] → Transpose → [1, 64, 5], as YOLO heads are."""
    rng = np.random.default_rng(0)
    weights = {
        "wb": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.5,
        "ws": rng.standard_normal((1, 8, 1, 1)).astype(np.float32) * 0.5,
        "tiny": np.array(0.02, np.float32), "shape": np.array([1, 5, 64], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wb"], ["boxes"], name="box_conv"),
        helper.make_node("Conv", ["x", "ws"], ["logit"], name="score_conv"),
        helper.make_node("Sigmoid", ["logit"], ["p"], name="sigmoid"),
        helper.make_node("Mul", ["p", "tiny"], ["scores"], name="scale"),
        helper.make_node("Concat", ["boxes", "scores"], ["joined"], name="join", axis=1),
        helper.make_node("Reshape", ["joined", "shape"], ["flat"], name="flatten"),
        helper.make_node("Transpose", ["flat"], ["out"], name="to_boxes", perm=[0, 2, 1]),
    ]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 64, 5])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def samples(count=16, seed=1):
    def stream():
        rng = np.random.default_rng(seed)
        for _ in range(count):
            yield {"x": rng.standard_normal((1, 8, 8, 8)).astype(np.float32)}
    return stream


def score_cosine(model, quantized) -> float:
    a = np.concatenate([run_ort(model, f)[0][..., 4].ravel() for f in samples(4, seed=9)()])
    b = np.concatenate([run_ort(quantized, f)[0][..., 4].ravel() for f in samples(4, seed=9)()])
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))  # all-zero scores: 0


def test_a_concat_of_boxes_and_scores_stays_float_and_keeps_the_scores():
    model = detector_head()
    quantized, report = onnxopt.optimize(model, "int8:library_check=false:bias_correction=false",
                                         context=PassContext(calibration=samples()))
    assert score_cosine(model, quantized) > 0.99  # one shared 8-bit grid gave the scores ~3 levels
    ops = {n.name: n.op_type for n in quantized.graph.node}
    assert ops.get("join") == "Concat" and ops.get("box_conv") == "Conv"
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)  # the convs still quantized
    producers = {o: n for n in quantized.graph.node for o in n.output}
    assert all(producers[i].op_type != "DequantizeLinear" for i in next(
        n for n in quantized.graph.node if n.name == "flatten").input[:1])  # Reshape reads the float Concat


def test_the_rule_follows_the_ranges_and_the_data_movement_after_them():
    model = detector_head()
    widths = {"boxes": 6.0, "scores": 0.02}
    found = mixed_range_nodes(model, widths.get, ["Concat", "Reshape", "Transpose", "Conv"])
    assert sorted(found) == ["flatten", "join", "to_boxes"] and "300×" in found["join"]
    assert mixed_range_nodes(model, {"boxes": 6.0, "scores": 1.0}.get, ["Concat", "Reshape"]) == {}
    assert mixed_range_nodes(model, {"boxes": 6.0}.get, ["Concat"]) == {}  # a range unknown: no verdict
    assert sorted(mixed_range_nodes(model, widths.get, ["Reshape"])) == ["flatten"]  # only quantized op types


def test_a_model_newer_than_onnxruntime_loads_is_quantized():
    """The pass's calibration files are loaded by this onnxruntime: their IR version is clamped."""
    from onnxopt.runtime.ir_version import max_runtime_ir_version

    model = detector_head()
    model.ir_version = max_runtime_ir_version() + 1
    quantized, _ = onnxopt.optimize(model, "int8:library_check=false:bias_correction=false",
                                    context=PassContext(calibration=samples()))
    assert quantized.ir_version <= max_runtime_ir_version()
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
