"""Tiny one-op models, built in float32 or float16, to find the ops onnxruntime cannot run in float16.

Each probe is one node of the op under test with every float tensor (inputs, weights,
outputs) of the requested type — what the ``fp16`` pass makes of the op when it does not
keep it in float32 — and feeds for one run. Integer inputs stay integer. The float32
build is the control: it must run, or the probe itself is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.helpers import TEST_IR_VERSION


@dataclass(frozen=True)
class Probe:
    op_type: str
    build: Callable[[type], tuple[onnx.ModelProto, dict[str, np.ndarray]]]


def _model(op: str, inputs: list[tuple[str, np.ndarray]], weights: list[tuple[str, np.ndarray]],
           n_outputs: int = 1, opset: int = 17, **attrs) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One ``op`` node reading graph inputs then weights (an empty name is an omitted optional input)."""
    names = [name for name, _ in inputs] + [name for name, _ in weights]
    outputs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outputs, name=op.lower(), **attrs)
    graph = helper.make_graph(
        [node], f"probe_{op}",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in inputs],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outputs],
        [numpy_helper.from_array(a, n) for n, a in weights if n],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = TEST_IR_VERSION
    # Output types from shape inference (the float16 converter writes them too).
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    for output in model.graph.output:  # not inferred (e.g. function ops): the first input's type
        if output.type.tensor_type.elem_type == onnx.TensorProto.UNDEFINED:
            output.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(inputs[0][1].dtype)
    return model, dict(inputs)


def _r(dtype, *shape, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(sum(shape) + len(shape)).standard_normal(shape) * scale).astype(dtype)


def _rnn(op: str, gates: int):
    def build(dtype):
        hidden = 8
        return _model(op, [("x", _r(dtype, 3, 2, 4))],
                      [("w", _r(dtype, 1, gates * hidden, 4, scale=0.3)), ("r", _r(dtype, 1, gates * hidden, hidden, scale=0.3)),
                       ("b", _r(dtype, 1, 2 * gates * hidden, scale=0.1))],
                      n_outputs=2, hidden_size=hidden)
    return build


def _bidirectional_lstm(dtype):
    hidden = 8
    return _model("LSTM", [("x", _r(dtype, 3, 2, 4))],
                  [("w", _r(dtype, 2, 4 * hidden, 4, scale=0.3)), ("r", _r(dtype, 2, 4 * hidden, hidden, scale=0.3)),
                   ("b", _r(dtype, 2, 8 * hidden, scale=0.1))],
                  n_outputs=1, hidden_size=hidden, direction="bidirectional")


def _resize(mode: str, shape, scales, **attrs):
    def build(dtype):
        return _model("Resize", [("x", _r(dtype, *shape))], [("roi", np.zeros(0, np.float32)),
                                                               ("scales", np.array(scales, np.float32))],
                      mode=mode, **attrs)
    return build


def _resize_no_roi(mode: str, shape, scales, **attrs):
    def build(dtype):
        return _model("Resize", [("x", _r(dtype, *shape))], [("", None), ("scales", np.array(scales, np.float32))],
                      opset=18, mode=mode, **attrs)
    return build


def _simple(op: str, inputs, weights=(), n_outputs=1, opset=17, **attrs):
    def build(dtype):
        ins = [(n, _r(dtype, *shape)) for n, shape in inputs]
        ws = [(n, w(dtype) if callable(w) else w) for n, w in weights]
        return _model(op, ins, ws, n_outputs=n_outputs, opset=opset, **attrs)
    return build


def _nms(dtype):
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, 2, 1, 3]]], dtype)
    scores = np.array([[[0.9, 0.8, 0.7]]], dtype)
    return _model("NonMaxSuppression", [("boxes", boxes), ("scores", scores)],
                  [("max_out", np.array([2], np.int64)), ("iou", np.array([0.5], np.float32))])


def _roi_align(dtype):
    rois = np.array([[0, 0, 3, 3], [1, 1, 4, 4]], dtype)
    return _model("RoiAlign", [("x", _r(dtype, 1, 2, 6, 6)), ("rois", rois)],
                  [("idx", np.array([0, 0], np.int64))], output_height=2, output_width=2)


def _grid_sample(dtype):
    grid = (np.random.default_rng(1).random((1, 3, 3, 2)) * 2 - 1).astype(dtype)
    return _model("GridSample", [("x", _r(dtype, 1, 2, 4, 4)), ("grid", grid)], [])


def _topk(dtype):
    return _model("TopK", [("x", _r(dtype, 2, 6))], [("k", np.array([3], np.int64))], n_outputs=2)


def _cumsum(dtype):
    return _model("CumSum", [("x", _r(dtype, 2, 6))], [("axis", np.array(1, np.int64))])


def _range(dtype):
    return _model("Range", [], [("start", np.array(0, dtype)), ("limit", np.array(5, dtype)),
                                ("delta", np.array(1, dtype))])


def _einsum(dtype):
    return _model("Einsum", [("a", _r(dtype, 2, 3, 4)), ("b", _r(dtype, 2, 4, 5))], [], equation="bij,bjk->bik")


def _conv_transpose(dtype):
    return _model("ConvTranspose", [("x", _r(dtype, 1, 3, 5, 5))], [("w", _r(dtype, 3, 4, 3, 3, scale=0.3)),
                                                                   ("b", _r(dtype, 4, scale=0.1))], strides=[2, 2])


def _instance_norm(dtype):
    return _model("InstanceNormalization", [("x", _r(dtype, 2, 3, 4, 4))],
                  [("s", _r(dtype, 3)), ("b", _r(dtype, 3))])


def _layer_norm(dtype):
    return _model("LayerNormalization", [("x", _r(dtype, 2, 3, 8))], [("s", _r(dtype, 8)), ("b", _r(dtype, 8))], axis=-1)


def _group_norm(dtype):
    return _model("GroupNormalization", [("x", _r(dtype, 2, 4, 3, 3))], [("s", _r(dtype, 4)), ("b", _r(dtype, 4))],
                  opset=21, num_groups=2)


def _batch_norm(dtype):
    return _model("BatchNormalization", [("x", _r(dtype, 2, 3, 4, 4))],
                  [("s", _r(dtype, 3)), ("b", _r(dtype, 3)), ("m", _r(dtype, 3)), ("v", np.abs(_r(dtype, 3)) + 1)])


def _conv(dtype):
    return _model("Conv", [("x", _r(dtype, 1, 3, 8, 8))], [("w", _r(dtype, 4, 3, 3, 3, scale=0.3)),
                                                          ("b", _r(dtype, 4, scale=0.1))], pads=[1, 1, 1, 1])


def _matmul(dtype):
    return _model("MatMul", [("a", _r(dtype, 2, 3, 4))], [("b", _r(dtype, 4, 5))])


def _gemm(dtype):
    return _model("Gemm", [("a", _r(dtype, 2, 4))], [("b", _r(dtype, 5, 4)), ("c", _r(dtype, 5))], transB=1)


def _upsample(dtype):
    model, feeds = _model("Upsample", [("x", _r(dtype, 1, 2, 3, 3))], [("scales", np.array([1, 1, 2, 2], np.float32))],
                          opset=9, mode="linear")
    return model, feeds


def _pool(op: str, **attrs):
    return _simple(op, [("x", (1, 2, 6, 6))], **attrs)


def _attention_softmax(dtype):
    return _model("Softmax", [("x", _r(dtype, 2, 3, 8))], [], axis=-1)


def _scatter_nd(dtype):
    return _model("ScatterND", [("x", _r(dtype, 4, 3))], [("i", np.array([[1], [3]], np.int64)), ("u", _r(dtype, 2, 3))])


def _pad_reflect(dtype):
    return _model("Pad", [("x", _r(dtype, 1, 2, 4, 4))], [("p", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))],
                  mode="reflect")


def _where(dtype):
    return _model("Where", [("c", np.array([[True, False, True]])), ("a", _r(dtype, 2, 3)), ("b", _r(dtype, 2, 3))], [])


def _gather(dtype):
    return _model("Gather", [("x", _r(dtype, 5, 3))], [("i", np.array([0, 2, 4], np.int64))])


def _clip(dtype):
    return _model("Clip", [("x", _r(dtype, 2, 6))], [("lo", np.array(-0.5, dtype)), ("hi", np.array(0.5, dtype))])


def _prelu(dtype):
    return _model("PRelu", [("x", _r(dtype, 1, 3, 4, 4))], [("slope", np.full((3, 1, 1), 0.1, dtype))])


def _pow(dtype):
    return _model("Pow", [("x", np.abs(_r(dtype, 2, 6)))], [("e", np.array(2.0, dtype))])


def _transpose_matmul(perm: tuple[int, ...], side: str = "A"):
    """Transpose(x, perm) feeding MatMul's input ``side`` (the other one a constant weight)."""
    def build(dtype):
        sizes = [2, 3, 4, 5][: len(perm)]
        moved = [sizes[p] for p in perm]
        x = _r(dtype, *sizes)
        if side == "A":
            weight, inputs = _r(dtype, moved[-1], 6, scale=0.3), ["xt", "w"]
        else:
            weight, inputs = _r(dtype, 6, moved[-2], scale=0.3), ["w", "xt"]
        nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=list(perm), name="transpose"),
                 helper.make_node("MatMul", inputs, ["y"], name="matmul")]
        type_ = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        graph = helper.make_graph(nodes, "probe_transpose_matmul",
                                  [helper.make_tensor_value_info("x", type_, [None] * len(perm))],
                                  [helper.make_tensor_value_info("y", type_, [None] * len(perm))],
                                  [numpy_helper.from_array(weight, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = TEST_IR_VERSION
        return model, {"x": x}
    return build


PROBES: dict[str, Probe] = {
    # recurrent
    "LSTM": Probe("LSTM", _rnn("LSTM", 4)),
    "LSTM bidirectional": Probe("LSTM", _bidirectional_lstm),
    "GRU": Probe("GRU", _rnn("GRU", 3)),
    "RNN": Probe("RNN", _rnn("RNN", 1)),
    # resampling
    "Resize cubic NCHW": Probe("Resize", _resize("cubic", (1, 2, 6, 6), [1, 1, 2, 2])),
    "Resize cubic NCHW antialias": Probe("Resize", _resize_no_roi("cubic", (1, 2, 6, 6), [1, 1, 0.5, 0.5], antialias=1)),
    "Resize cubic NHWC": Probe("Resize", _resize("cubic", (1, 6, 6, 2), [1, 2, 2, 1])),
    "Resize cubic 2-D": Probe("Resize", _resize("cubic", (6, 6), [2, 2])),
    "Resize linear": Probe("Resize", _resize("linear", (1, 2, 6, 6), [1, 1, 2, 2])),
    "Resize nearest": Probe("Resize", _resize("nearest", (1, 2, 6, 6), [1, 1, 2, 2])),
    "Upsample linear (opset 9)": Probe("Upsample", _upsample),
    "GridSample": Probe("GridSample", _grid_sample),
    "RoiAlign": Probe("RoiAlign", _roi_align),
    # detection / sorting / scans
    "NonMaxSuppression": Probe("NonMaxSuppression", _nms),
    "TopK": Probe("TopK", _topk),
    "CumSum": Probe("CumSum", _cumsum),
    "Range": Probe("Range", _range),
    # linear algebra and convolutions
    "Einsum": Probe("Einsum", _einsum),
    "ConvTranspose": Probe("ConvTranspose", _conv_transpose),
    "Conv": Probe("Conv", _conv),
    "MatMul": Probe("MatMul", _matmul),
    "Gemm": Probe("Gemm", _gemm),
    # normalizations
    "InstanceNormalization": Probe("InstanceNormalization", _instance_norm),
    "LayerNormalization": Probe("LayerNormalization", _layer_norm),
    "GroupNormalization": Probe("GroupNormalization", _group_norm),
    "BatchNormalization": Probe("BatchNormalization", _batch_norm),
    "LpNormalization": Probe("LpNormalization", _simple("LpNormalization", [("x", (2, 6))])),
    "MeanVarianceNormalization": Probe("MeanVarianceNormalization",
                                       _simple("MeanVarianceNormalization", [("x", (1, 2, 4, 4))])),
    # pooling
    "MaxPool": Probe("MaxPool", _pool("MaxPool", kernel_shape=[2, 2])),
    "AveragePool": Probe("AveragePool", _pool("AveragePool", kernel_shape=[2, 2])),
    "GlobalAveragePool": Probe("GlobalAveragePool", _pool("GlobalAveragePool")),
    "LpPool": Probe("LpPool", _pool("LpPool", kernel_shape=[2, 2])),
    # element-wise and others
    "Softmax": Probe("Softmax", _attention_softmax),
    "Erf": Probe("Erf", _simple("Erf", [("x", (2, 6))])),
    "Pow": Probe("Pow", _pow),
    "Clip": Probe("Clip", _clip),
    "PRelu": Probe("PRelu", _prelu),
    "HardSwish": Probe("HardSwish", _simple("HardSwish", [("x", (2, 6))])),
    "Where": Probe("Where", _where),
    "Gather": Probe("Gather", _gather),
    "ScatterND": Probe("ScatterND", _scatter_nd),
    "Pad reflect": Probe("Pad", _pad_reflect),
    "ReduceMean": Probe("ReduceMean", _simple("ReduceMean", [("x", (2, 6))], keepdims=1)),
    "Max": Probe("Max", _simple("Max", [("a", (2, 6)), ("b", (2, 6))])),
    # patterns: onnxruntime 1.31's MatmulTransposeFusion folds a Transpose that moves the
    # batch axis into FusedMatMul (transBatch); in float16 on CPU it crashes creating the session
    "Transpose [1,0,2] -> MatMul": Probe("Transpose", _transpose_matmul((1, 0, 2))),
    "Transpose [1,2,0] -> MatMul B": Probe("Transpose", _transpose_matmul((1, 2, 0), "B")),
    "Transpose [1,2,0,3] -> MatMul": Probe("Transpose", _transpose_matmul((1, 2, 0, 3))),
    "Transpose [1,2,3,0] -> MatMul B": Probe("Transpose", _transpose_matmul((1, 2, 3, 0), "B")),
    "Transpose [0,2,1] -> MatMul": Probe("Transpose", _transpose_matmul((0, 2, 1))),
    "Transpose [0,2,1,3] -> MatMul": Probe("Transpose", _transpose_matmul((0, 2, 1, 3))),
    "Transpose [0,1,3,2] -> MatMul B": Probe("Transpose", _transpose_matmul((0, 1, 3, 2), "B")),
    "Transpose [1,0] -> MatMul": Probe("Transpose", _transpose_matmul((1, 0))),
    "Min": Probe("Min", _simple("Min", [("a", (2, 6)), ("b", (2, 6))])),
}
