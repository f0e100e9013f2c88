"""Tests for onnxopt.bench.profile: trace parsing, name mapping, pass-target marks.

Unit tests use tiny models (and synthetic trace events for the mapping rules); the
integration test profiles ResNet-56 from ../shared/models.
"""

from __future__ import annotations

import json
import tempfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.analysis import node_costs
from onnxopt.bench import profile as prof
from onnxopt.bench import trace
from onnxopt.bench.profile import (
    MARK_DECOMPOSE,
    MARK_INT8,
    MARK_SVD,
    UNMATCHED,
    ProfileResult,
    profile_model,
    target_mark,
)
from onnxopt.errors import InputError, UsageError
from tests.helpers import SHARED_MODELS, requires_shared

RNG = np.random.default_rng(0)


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.1, name)


def _cnn(named: bool = True) -> onnx.ModelProto:
    """conv 3×3 (64→64) + Relu, depthwise 3×3, 1×1 (64→64), pool, Gemm 64→10."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], "conv3x3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "wd"], ["c2"], "dw", group=64, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c2", "wp"], ["c3"], "pw"),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"], "pool"),
        helper.make_node("Flatten", ["p"], ["f"], "flat"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], "fc"),
    ]
    if not named:
        for node in nodes:
            node.name = ""
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [
            _weight("w1", 64, 64, 3, 3),
            _weight("wd", 64, 1, 3, 3),
            _weight("wp", 64, 64, 1, 1),
            _weight("wf", 64, 10),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


FEEDS = {"x": RNG.standard_normal((2, 64, 8, 8)).astype(np.float32)}


# --- profile_model on a tiny model -----------------------------------------------------


def test_profile_tiny_model():
    model = _cnn()
    result = profile_model(model, FEEDS, runs=3, warmup=1, threads=1)
    assert isinstance(result, ProfileResult)
    assert result.runs == 3
    assert sum(n.share for n in result.nodes) == pytest.approx(1.0)
    assert sum(o.share for o in result.op_types) == pytest.approx(1.0)
    assert result.unmatched_share == pytest.approx(sum(n.share for n in result.nodes if not n.matched))
    by_name = {n.name: n for n in result.nodes if n.matched}
    # every Conv and the Gemm keep a kernel of their own
    assert {"conv3x3", "dw", "pw", "fc"} <= set(by_name)
    assert by_name["conv3x3"].target == MARK_DECOMPOSE
    assert by_name["dw"].target == MARK_INT8
    assert by_name["pw"].target == MARK_SVD
    assert by_name["fc"].target == MARK_INT8
    costs = node_costs(model, {"x": (2, 64, 8, 8)})
    for name in ("conv3x3", "dw", "pw", "fc"):
        assert by_name[name].macs == costs[name].macs
        assert by_name[name].params == costs[name].params
    assert by_name["conv3x3"].macs == 2 * 64 * 8 * 8 * 64 * 9
    # ranked by time
    times = [n.total_ms for n in result.nodes]
    assert times == sorted(times, reverse=True)
    assert all(n.mean_ms == pytest.approx(n.total_ms / 3) for n in result.nodes)
    # nodes without a kernel of their own are listed, not lost
    assert set(result.not_timed) | {n.name for n in result.nodes if n.matched} >= {
        n.name for n in model.graph.node
    }
    json.dumps(result.to_dict())


def test_profile_op_types_aggregate_nodes():
    result = profile_model(_cnn(), FEEDS, runs=2, warmup=0)
    conv = next(o for o in result.op_types if o.op_type == "Conv")
    conv_nodes = [n for n in result.nodes if n.matched and n.op_type == "Conv"]
    assert conv.nodes == len(conv_nodes)
    assert conv.total_ms == pytest.approx(sum(n.total_ms for n in conv_nodes))
    assert conv.macs == sum(n.macs for n in conv_nodes)
    shares = [o.share for o in result.op_types]
    assert shares == sorted(shares, reverse=True)


def test_profile_unnamed_nodes_use_node_costs_keys():
    model = _cnn(named=False)
    result = profile_model(model, FEEDS, runs=2, warmup=0)
    keys = set(node_costs(model, {"x": (2, 64, 8, 8)}))
    matched = {n.name for n in result.nodes if n.matched}
    assert {"Conv_0", "Conv_2", "Conv_3", "Gemm_6"} <= matched
    assert matched <= keys
    assert all(n.macs is not None for n in result.nodes if n.op_type == "Conv")


def test_profile_accepts_bytes_and_path(tmp_path):
    model = _cnn()
    path = tmp_path / "cnn.onnx"
    onnx.save(model, path)
    for source in (model.SerializeToString(), str(path)):
        result = profile_model(source, FEEDS, runs=1, warmup=0)
        assert any(n.name == "conv3x3" for n in result.nodes)


def test_profile_deletes_its_trace(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(tmp_path)
    profile_model(_cnn(), FEEDS, runs=1, warmup=0)
    assert list(scratch.iterdir()) == []
    assert list(tmp_path.glob("*.json")) == []


def test_profile_errors():
    with pytest.raises(UsageError):
        profile_model(_cnn(), FEEDS, runs=0)
    with pytest.raises(InputError, match="x"):
        profile_model(_cnn(), {"wrong": FEEDS["x"]}, runs=1)
    with pytest.raises(InputError):
        profile_model(b"not a model", FEEDS, runs=1)
    bad_shape = {"x": np.ones((1, 3, 8, 8), np.float32)}
    with pytest.raises(InputError):
        profile_model(_cnn(), bad_shape, runs=1)


@pytest.mark.parametrize(
    ("op", "weight", "output", "attrs", "expected"),
    [
        ("Conv", (64, 32, 3, 3), (2, 64, 8, 8), {}, 2 * 64 * 8 * 8 * 32 * 9),
        # an NCHWc kernel may report padded channels: F comes from the weight
        ("Conv", (3, 16, 3, 3), (1, 8, 4, 4), {}, 1 * 3 * 4 * 4 * 16 * 9),
        ("Conv", (64, 32, 3, 3), None, {}, None),
        ("Conv", None, (2, 64, 8, 8), {}, None),
        ("Gemm", (128, 10), (4, 10), {}, 4 * 10 * 128),
        ("Gemm", (10, 128), (4, 10), {"transB": 1}, 4 * 10 * 128),
        ("MatMul", (128, 10), (2, 7, 10), {}, 2 * 7 * 10 * 128),
        ("MatMul", (3, 128, 10), (3, 7, 10), {}, None),
    ],
)
def test_trace_macs(op, weight, output, attrs, expected):
    node = helper.make_node(op, ["x", "w"], ["y"], "n", **attrs)
    assert trace.trace_macs(node, weight, output) == expected


# --- target marks ----------------------------------------------------------------------


def _node_and_constants(op, weight_shape, **attrs):
    node = helper.make_node(op, ["x", "w"], ["y"], "n", **attrs)
    constants = {"w": weight_shape} if weight_shape is not None else {}
    return node, constants


@pytest.mark.parametrize(
    ("op", "weight", "attrs", "expected"),
    [
        ("Conv", (64, 32, 3, 3), {}, MARK_DECOMPOSE),
        ("Conv", (64, 32, 1, 3), {}, MARK_DECOMPOSE),
        ("Conv", (64, 1, 3, 3), {"group": 64}, MARK_INT8),
        ("Conv", (128, 64, 1, 1), {}, MARK_SVD),
        ("Conv", (128, 16, 1, 1), {}, MARK_INT8),
        ("Conv", (128, 64, 1, 1), {"group": 2}, MARK_INT8),
        ("Conv", None, {"kernel_shape": [3, 3]}, MARK_INT8),  # weight not constant
        ("Gemm", (256, 128), {}, MARK_SVD),
        ("Gemm", (256, 10), {}, MARK_INT8),
        ("MatMul", (512, 512), {}, MARK_SVD),
        ("MatMul", None, {}, MARK_INT8),
        ("Relu", None, {}, None),
        ("ConvTranspose", (64, 64, 3, 3), {}, None),
    ],
)
def test_target_mark(op, weight, attrs, expected):
    node, constants = _node_and_constants(op, weight, **attrs)
    assert target_mark(node, constants) == expected


# --- mapping trace names back to the graph ---------------------------------------------


def _graph(nodes, initializers=()):
    graph = helper.make_graph(nodes, "g", [], [], list(initializers))
    return trace.TraceGraph(helper.make_model(graph))


def _chain_graph():
    """conv2d -> conv2d_relu (Relu) -> bn (BN) -> /Relu (Relu); node == tensor names."""
    return _graph(
        [
            helper.make_node("Conv", ["x", "w"], ["conv2d"], "conv2d"),
            helper.make_node("Relu", ["conv2d"], ["conv2d_relu"], "conv2d_relu"),
            helper.make_node("BatchNormalization", ["conv2d_relu", "s", "b", "m", "v"], ["bn"], "bn"),
            helper.make_node("Conv", ["bn", "w2"], ["/c/Conv_output_0"], "/c/Conv"),
            helper.make_node("Relu", ["/c/Conv_output_0"], ["/Relu_output_0"], "/Relu"),
            helper.make_node("MatMul", ["/Relu_output_0", "wm"], ["mm"], "fc/MatMul"),
            helper.make_node("Gemm", ["mm", "wg"], ["dense"], "dense"),
            helper.make_node("Mul", ["dense", "dense"], ["m43"], "Mul_43"),
            helper.make_node("Transpose", ["m43"], ["t_out"], "t"),
            helper.make_node("Resize", ["t_out", "", "scales"], ["r_out"], "resize"),
        ],
        [_weight("w", 4, 4, 3, 3), _weight("w2", 4, 4, 3, 3)],
    )


@pytest.mark.parametrize(
    ("kernel", "ort_op", "expected"),
    [
        ("conv2d", "FusedConv", "conv2d"),  # fusion keeps the Conv's name
        ("/c/Conv", "Conv", "/c/Conv"),
        ("/Relu_output_0_nchwc", "Conv", "/c/Conv"),  # Conv fused with the Relu
        ("/c/Conv_output_0_nchwc", "Conv", "/c/Conv"),
        ("conv2d_relu_nchwc", "Conv", "conv2d"),  # node and tensor share the name
        ("bn_bn_nchwc", "Conv", "bn"),  # BatchNormalization run as an NCHWc Conv
        ("fused dense", "FusedGemm", "dense"),
        ("fc/MatMul/MatMulAddFusion", "Gemm", "fc/MatMul"),
        ("Mul_43/QuickGeluFusion/", "QuickGelu", "Mul_43"),
        ("ReorderOutput_token_148", "ReorderOutput", None),
        ("ReorderInput", "ReorderInput", None),
        ("Memcpy", "MemcpyToHost", None),
        ("t_out_nchwc", "ReorderInput", None),  # named after a tensor, no such op upstream
        ("t_out", "Transpose", "t"),
        ("t_out_x", "Transpose", None),  # no prefix match at "_": "t" is another node
        ("fc/MatMul/extra", "Gemm", "fc/MatMul"),  # prefix cut at "/"
        ("r_out_nchwc", "Upsample", "resize"),  # Resize run as NCHWc Upsample
    ],
)
def test_resolve_kernel_names(kernel, ort_op, expected):
    assert _chain_graph().resolve(kernel, ort_op, None) == expected


def test_resolve_prefers_unclaimed_and_shape_matching_candidate():
    """Add(conv_a, conv_b) -> Relu fused into one of the Convs: pick by weight shape."""
    graph = _graph(
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], "conv_a"),
            helper.make_node("Conv", ["x", "wb"], ["b"], "conv_b"),
            helper.make_node("Add", ["a", "b"], ["s"], "add"),
            helper.make_node("Relu", ["s"], ["r"], "relu"),
        ],
        [_weight("wa", 8, 4, 3, 3), _weight("wb", 8, 4, 1, 1)],
    )
    assert graph.resolve("r_nchwc", "Conv", (8, 4, 1, 1)) == "conv_b"
    assert graph.resolve("r_nchwc", "Conv", (8, 4, 3, 3)) == "conv_a"
    graph.claimed.add("conv_b")
    assert graph.resolve("r_nchwc", "Conv", None) == "conv_a"
    graph.claimed.add("conv_a")
    # both Convs have their own kernels: the fused kernel is the Relu's
    assert graph.resolve("r_nchwc", "Conv", None) == "relu"


def _event(name, ts, dur, cat="Node", op="Conv"):
    return {"cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_timed_kernels_skip_warmup_runs():
    events = [
        _event("model_run", 0, 100, cat="Session"),
        _event("a_kernel_time", 10, 50),  # warm-up
        _event("model_run", 200, 100, cat="Session"),
        _event("a_fence_before", 205, 1),
        _event("a_kernel_time", 210, 30),
        _event("b_kernel_time", 250, 20, op="ReorderOutput"),
        _event("model_run", 400, 100, cat="Session"),
        _event("a_kernel_time", 410, 40),
        _event("session_initialization", 0, 5, cat="Session"),
    ]
    kernels, run_ms = trace.timed_kernels(events, runs=2)
    assert set(kernels) == {"a", "b"}
    assert kernels["a"].total_us == 70
    assert kernels["b"].total_us == 20
    assert kernels["b"].ort_op == "ReorderOutput"
    assert run_ms == [0.1, 0.1]


def test_timed_kernels_without_runs():
    with pytest.raises(InputError):
        trace.timed_kernels([_event("a_kernel_time", 0, 1)], runs=1)


def test_summarise_reports_unmatched_time():
    graph = _chain_graph()
    kernels = {
        "/c/Conv": trace.Kernel("/c/Conv", "Conv", None, total_us=600.0, first_ts=2),
        "conv2d": trace.Kernel("conv2d", "FusedConv", None, total_us=300.0, first_ts=1),
        "ReorderOutput": trace.Kernel("ReorderOutput", "ReorderOutput", None, total_us=100.0, first_ts=3),
    }
    result = prof._summarise(kernels, [1.0, 1.0], graph, {}, "cpu", 2, 0, None)
    assert [n.name for n in result.nodes] == ["/c/Conv", "conv2d", "ReorderOutput"]
    assert [n.matched for n in result.nodes] == [True, True, False]
    assert result.unmatched_share == pytest.approx(0.1)
    assert result.unmatched_ms == pytest.approx(0.05)
    ops = {o.op_type: o for o in result.op_types}
    assert ops["Conv"].share == pytest.approx(0.9)
    assert ops["Conv"].nodes == 2
    assert ops[UNMATCHED].share == pytest.approx(0.1)
    assert result.kernel_ms == pytest.approx(0.5)
    assert "conv2d_relu" in result.not_timed


# --- integration -----------------------------------------------------------------------


@pytest.mark.shared
@requires_shared("models/resnet56_cifar10.onnx")
def test_profile_resnet56():
    path = SHARED_MODELS / "resnet56_cifar10.onnx"
    feeds = {"input": RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)}
    # Enough runs that a preempted kernel on this shared machine does not decide the ranking.
    result = profile_model(str(path), feeds, runs=10, warmup=2)
    ops = {o.op_type: o for o in result.op_types}
    # "unmatched" is onnxruntime's own layout kernels, not an op type of the model.
    assert [o.op_type for o in result.op_types if o.op_type != "unmatched"][0] == "Conv"
    assert ops["Conv"].share > 0.5
    assert sum(o.share for o in result.op_types) == pytest.approx(1.0, abs=1e-6)
    assert sum(n.share for n in result.nodes) == pytest.approx(1.0, abs=1e-6)
    model = onnx.load(str(path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) >= 55
    layer = {n.name: n for n in result.nodes if n.matched}
    # every conv layer is matched, with its share, MACs and mark
    for name in convs:
        assert name in layer, name
        assert 0 < layer[name].share < 1
        assert layer[name].macs and layer[name].macs > 0
    dense = [layer[c] for c in convs if layer[c].target == MARK_DECOMPOSE]
    assert len(dense) >= 55
    # MACs of every 3x3 conv at batch 1, whether from node_costs or (where its shape
    # inference stops at the computed shortcut pads) from the trace: 16x32x32 input conv,
    # stride-2 convs, and the rest.
    expected = {16 * 32 * 32 * 3 * 9, 32 * 16 * 16 * 16 * 9, 64 * 8 * 8 * 32 * 9, 16 * 32 * 32 * 16 * 9}
    assert {layer[c].macs for c in convs} == expected
    assert {layer[c].macs_source for c in convs} <= {"static", "trace"}
