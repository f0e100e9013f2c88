"""duplicate-names: every "onnxruntime refuses" claim is onnxruntime's own verdict.

onnxruntime 1.31 refuses two nodes of one graph with one name ("two nodes with same node
name") — except ``Constant`` nodes, which it folds into initializers when it loads a graph
(a Silero VAD export with two nodes named ``F0::anon`` loads and runs). Tensors defined
twice stay errors.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxopt.check import CheckConfig, check_model_file, failed
from tests.helpers import TEST_IR_VERSION

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])


def _model(nodes, initializers=()) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", [X], [Y], list(initializers)),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = TEST_IR_VERSION
    return model


def _constant(name: str, output: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [output], name=name,
                            value=numpy_helper.from_array(np.full((1, 4), value, np.float32)))


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _loads(model: onnx.ModelProto) -> bool:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.run(None, {"x": np.ones((1, 4), np.float32)})
    except Exception:  # onnxruntime raises several unrelated types
        return False
    return True


def _silero_like() -> onnx.ModelProto:
    """Two Constant nodes named 'F0::anon', as in a Silero VAD export."""
    return _model([_constant("F0::anon", "c", 1.0), _constant("F0::anon", "d", 2.0),
                   helper.make_node("Sum", ["x", "c", "d"], ["y"], name="sum")])


def test_constant_nodes_sharing_a_name_are_a_warning(tmp_path):
    model = _silero_like()
    assert _loads(model)  # what the finding must agree with
    findings = check_model_file(_save(tmp_path, model))
    assert [(f.rule, f.level) for f in findings] == [("duplicate-names", "warning")], findings
    assert "'F0::anon'" in findings[0].message and "loads the model (checked)" in findings[0].message
    assert "refuses" not in findings[0].message
    assert not failed(findings)


def test_refused_duplicate_node_names_are_one_error_with_onnxruntimes_reason(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["a"], name="F0::anon"),
                    helper.make_node("Neg", ["a"], ["y"], name="F0::anon")])
    assert not _loads(model)
    findings = check_model_file(_save(tmp_path, model))
    assert [(f.rule, f.level) for f in findings] == [("duplicate-names", "error")], findings
    assert "refuses the model: two nodes with same node name (F0::anon)" in findings[0].message


def test_a_constant_and_another_node_sharing_a_name_load(tmp_path):
    model = _model([_constant("n", "c", 1.0), helper.make_node("Add", ["x", "c"], ["y"], name="n")])
    assert _loads(model)
    findings = check_model_file(_save(tmp_path, model))
    assert [(f.rule, f.level) for f in findings] == [("duplicate-names", "warning")], findings


def test_duplicate_constant_names_in_a_subgraph_are_a_warning(tmp_path):
    branch_out = helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])
    then_graph = helper.make_graph([_constant("k", "t1", 1.0), _constant("k", "t2", 2.0),
                                    helper.make_node("Sum", ["x", "t1", "t2"], ["t"], name="s")], "then", [],
                                   [branch_out])
    else_graph = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="e")], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    model = _model([helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_graph,
                                     else_branch=else_graph)],
                   [numpy_helper.from_array(np.array(True), "c")])
    assert _loads(model)
    findings = check_model_file(_save(tmp_path, model))
    assert [(f.rule, f.level) for f in findings] == [("duplicate-names", "warning")], findings
    assert "in subgraph 'then'" in findings[0].message


def test_without_a_session_the_level_is_predicted_and_says_so(tmp_path):
    no_session = CheckConfig(disabled=frozenset({"ort-session"}))
    constants = check_model_file(_save(tmp_path, _silero_like()), no_session)
    assert [(f.rule, f.level) for f in constants] == [("duplicate-names", "warning")]
    assert "not verified" in constants[0].message
    others = _model([helper.make_node("Relu", ["x"], ["a"], name="n"), helper.make_node("Neg", ["a"], ["y"], name="n")])
    findings = check_model_file(_save(tmp_path, others, "o.onnx"), no_session)
    assert [(f.rule, f.level) for f in findings] == [("duplicate-names", "error")]
    assert "not verified" in findings[0].message


def test_a_tensor_defined_twice_is_still_an_error(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="a"), helper.make_node("Neg", ["x"], ["y"], name="b")])
    assert not _loads(model)
    findings = check_model_file(_save(tmp_path, model), CheckConfig(disabled=frozenset({"checker"})))
    assert ("duplicate-names", "error") in [(f.rule, f.level) for f in findings]
    assert failed(findings)


def test_disabling_the_rule_leaves_onnxruntimes_own_finding(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["a"], name="n"), helper.make_node("Neg", ["a"], ["y"], name="n")])
    findings = check_model_file(_save(tmp_path, model), CheckConfig(disabled=frozenset({"duplicate-names"})))
    assert [(f.rule, f.level) for f in findings] == [("ort-session", "error")]
