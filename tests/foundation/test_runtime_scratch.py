"""Shape inference never leaves files in the user's folder (onnxruntime's symbolic
inference, when incomplete, saves sym_shape_infer_temp.onnx and a <uuid>.data there)."""

from __future__ import annotations

import os
import tempfile

from onnx import TensorProto, helper

from onnxopt import analysis
from onnxopt.runtime.scratch import symbolic_shape_inference


def _unknown_op_model():
    """An op from an unknown domain: symbolic inference stays incomplete, saves the model
    into the working directory and raises."""
    graph = helper.make_graph(
        [helper.make_node("Foo", ["x"], ["f"], domain="com.example"), helper.make_node("Relu", ["f"], ["y"])],
        "unknown_op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


def test_symbolic_shape_inference_leaves_the_working_directory_empty(tmp_path, monkeypatch):
    work, temp = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert symbolic_shape_inference(_unknown_op_model()) is None
    assert os.listdir(work) == [] and os.listdir(temp) == []
    assert os.getcwd() == str(work) and tempfile.tempdir == str(temp)


def test_mac_counting_leaves_the_working_directory_empty(tmp_path, monkeypatch):
    from onnxopt.runtime import scratch

    calls = []
    real = scratch.symbolic_shape_inference
    monkeypatch.setattr(scratch, "symbolic_shape_inference", lambda model: calls.append(1) or real(model))
    model = _unknown_op_model()
    model.graph.node[1].CopyFrom(helper.make_node("MatMul", ["f", "w"], ["y"]))  # a counted op of unknown shape
    model.graph.initializer.append(helper.make_tensor("w", TensorProto.FLOAT, [8, 4], [0.0] * 32))
    monkeypatch.chdir(tmp_path)
    analysis.node_costs(model)
    assert calls  # symbolic inference ran where ONNX's stopped
    assert os.listdir(tmp_path) == []
