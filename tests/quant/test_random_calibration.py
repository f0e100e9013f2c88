"""``int8:calib=random`` calibrates on inputs the model can take (issue 12, items 0 and 3).

Before, the pass drew its own noise: token ids and attention masks as random small
integers at sequence length 1 (a mean pooling then divided 0 by 0: "autodetected range
of [nan, nan]"), and a Paddle export's ``-1`` dims reached numpy ("negative dimensions
are not allowed"). The API now hands passes the validation module's graph-derived inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt.passes import _quant_common as qc


def _sentence_encoder(vocab: int = 300, width: int = 16) -> onnx.ModelProto:
    """ids, attention_mask [N, L] -> embedding -> mask-weighted mean -> projection."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((vocab, width)).astype(np.float32), "table"),
        numpy_helper.from_array((rng.standard_normal((width, width)) / 4).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Div", ["total", "count"], ["mean"]),
        helper.make_node("MatMul", ["mean", "w"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _paddle_style_conv() -> onnx.ModelProto:
    """A conv whose input declares its dynamic dims as -1, as Paddle exports do."""
    weight = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "paddle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 8, -1, -1])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_random_calibration_of_a_sentence_encoder_feeds_tokens_and_full_masks(monkeypatch):
    seen = []
    original = qc.random_samples

    def spy(context, specs, count):
        feeds = list(original(context, specs, count))
        seen.extend(feeds)
        return iter(feeds)

    monkeypatch.setattr(qc, "random_samples", spy)
    model, report = onnxopt.optimize(_sentence_encoder(vocab=300), "int8:calib=random:samples=8")
    (int8,) = report.passes
    assert int8.status == "modified", int8.skipped_reason
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    assert len(seen) == 8
    for feeds in seen:
        assert feeds["attention_mask"].shape == (1, 128) and feeds["attention_mask"].all()
        assert 0 <= feeds["input_ids"].min() and feeds["input_ids"].max() < 300
        assert len(np.unique(feeds["input_ids"])) > 10  # the whole table, not [0, 10)


def test_random_calibration_of_minus_one_dims():
    model, report = onnxopt.optimize(_paddle_style_conv(), "int8:calib=random:samples=2")
    assert report.passes[0].status == "modified", report.passes[0].skipped_reason


def test_int8_validated_on_cuda_warns_that_it_is_a_cpu_optimization():
    """On an H200, MobileNetV2's QDQ model ran 0.5x FP32 on the CUDA provider
    (benchmarks/cuda_check.py): the report must say so wherever the run targets CUDA."""
    from onnxopt.passbase import PassContext
    from tests.quant.models import conv_stack
    from tests.quant.test_int8 import context, run_int8

    on_cuda = context()
    on_cuda.providers = ("cpu", "cuda")
    _, report = run_int8(conv_stack(), on_cuda)
    assert any("INT8 is a CPU optimization" in w for w in report.warnings)
    _, report = run_int8(conv_stack(), context())
    assert not any("CUDA" in w for w in report.warnings)
    assert PassContext().providers == ("cpu",)
