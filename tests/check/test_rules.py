"""Rules one by one (in process, fast): warnings, budgets, reference, hints, options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt import check
from onnxopt.check import CheckConfig, Finding, check_model_file, failed, parse_count, parse_size
from onnxopt.check.rules import model_format
from onnxopt.errors import UsageError
from onnxopt.validate.tolerances import Tolerances
from tests.check.corpus import _add_model, _external
from tests.helpers import run_ort, tiny_conv_model


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _rules(findings, level=None):
    return [f.rule for f in findings if level is None or f.level == level]


def test_good_models_have_no_finding(tmp_path):
    assert check_model_file(_save(tmp_path, _add_model())) == []
    findings = check_model_file(_save(tmp_path, tiny_conv_model(), "conv.onnx"))
    assert _rules(findings) == ["node-names"]  # the text-format model has an unnamed node
    assert _rules(findings, "error") == []


def test_good_external_data_is_fine(tmp_path):
    path = _external(tmp_path, "ok", "weights.bin", Path("weights.bin"))
    assert _rules(check_model_file(path), "error") == []


def test_node_names_warning(tmp_path):
    findings = check_model_file(_save(tmp_path, tiny_conv_model()))
    assert findings[0].level == "warning" and "1 of 1 nodes have no name" in findings[0].message


def test_input_shadowed_warning_only_from_ir4(tmp_path):
    model = _add_model()
    model.graph.input.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [1, 4]))
    findings = check_model_file(_save(tmp_path, model))
    assert _rules(findings) == ["input-shadowed"] and "'w'" in findings[0].message
    model.ir_version = 3  # IR 3 requires initializers to be inputs
    model.opset_import[0].version = 9
    assert "input-shadowed" not in _rules(check_model_file(_save(tmp_path, model)))


def test_unused_initializer_and_constant_warning(tmp_path):
    model = _add_model()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "spare"))
    model.graph.node.insert(0, helper.make_node("Constant", [], ["dead"], name="dead_const",
                                                value=numpy_helper.from_array(np.ones(2, np.float32))))
    findings = check_model_file(_save(tmp_path, model))
    assert _rules(findings) == ["unused-initializer"]
    assert "'spare'" in findings[0].message and "'dead_const'" in findings[0].message


def test_initializer_read_only_by_a_subgraph_is_used(tmp_path):
    then_graph = helper.make_graph([helper.make_node("Identity", ["outer"], ["t"], name="t")], "then", [],
                                   [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2])])
    else_graph = helper.make_graph([helper.make_node("Identity", ["outer"], ["e"], name="e")], "else", [],
                                   [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_graph, else_branch=else_graph)], "g",
        [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "outer")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert check_model_file(_save(tmp_path, model)) == []


def test_disable_skips_a_rule_and_lifts_its_skips(tmp_path):
    model = _add_model()
    model.graph.node.reverse()  # fails the checker; onnxruntime sorts it and loads it
    path = _save(tmp_path, model)
    assert _rules(check_model_file(path)) == ["checker"]  # shape inference skipped: same cause
    assert _rules(check_model_file(path, CheckConfig(disabled=frozenset({"checker"})))) == ["shape-inference"]
    assert check_model_file(path, CheckConfig(disabled=frozenset({"checker", "shape-inference"}))) == []


def test_unknown_rule_is_a_usage_error():
    with pytest.raises(UsageError, match="did you mean 'checker'"):
        CheckConfig(disabled=frozenset({"checkr"}))


def test_disabled_external_data_skips_the_file_silently(tmp_path):
    path = _external(tmp_path, "missing", "weights.bin", None)
    assert check_model_file(path, CheckConfig(disabled=frozenset({"external-data"}))) == []


def test_failed_and_strict():
    warning = Finding("m", "warning", "node-names", "x")
    error = Finding("m", "error", "checker", "x")
    assert not failed([warning]) and failed([warning], strict=True)
    assert failed([error]) and not failed([]) and not failed([], strict=True)


@pytest.mark.parametrize("text, expected", [
    ("50MB", 50_000_000), ("50 MiB", 50 * 2**20), ("1.5GB", 1_500_000_000), ("800k", 800_000),
    ("2e9", 2_000_000_000), (1024, 1024), ("100", 100), ("1GiB", 2**30),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, expected", [("2e9", 2 * 10**9), ("2G", 2 * 10**9), ("5M", 5 * 10**6),
                                            ("300k", 300_000), (5000000, 5_000_000), ("1.5M", 1_500_000)])
def test_parse_count(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize("bad", ["", "MB", "5XB", "-5MB", "1e999", True, "five"])
def test_bad_sizes_are_usage_errors(bad):
    with pytest.raises(UsageError):
        parse_size(bad)


def test_budgets(tmp_path):
    path = _save(tmp_path, tiny_conv_model())  # 108 parameters, 4·8·8·27 = 6912 MACs
    size = path.stat().st_size
    loose = CheckConfig(max_size=size, max_params=108, max_macs=6912, opset_min=17, opset_max=17)
    assert _rules(check_model_file(path, loose), "error") == []
    tight = CheckConfig(max_size=size - 1, max_params=107, max_macs=6911, opset_min=18)
    findings = check_model_file(path, tight)
    assert _rules(findings, "error") == ["max-size", "max-params", "max-macs", "opset-range"]
    assert "6912" in findings[-2].message and "17" in findings[-1].message
    assert _rules(check_model_file(path, CheckConfig(opset_max=16)), "error") == ["opset-range"]


def test_mac_budget_with_unknown_shapes_warns(tmp_path):
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3,H,W] x) => (float[N,4,H,W] y) {
          y = Conv <pads = [1, 1, 1, 1]> (x, w)
        }"""
    )
    model.graph.initializer.append(numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w"))
    model.graph.node[0].name = "conv"
    findings = check_model_file(_save(tmp_path, model), CheckConfig(max_macs=10**9))
    assert [(f.rule, f.level) for f in findings] == [("max-macs", "warning")]
    assert "unknown shapes" in findings[0].message


def test_opset_min_above_max_is_a_usage_error():
    with pytest.raises(UsageError):
        CheckConfig(opset_min=18, opset_max=13)


def _reference(tmp_path, model, scale=1.0, name="ref.npz", **extra):
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    (y,) = run_ort(model, {"x": x})
    arrays = {"input:x": x, "output:y": y * scale, **extra}
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_reference_pass_and_fail(tmp_path):
    model = tiny_conv_model()
    path = _save(tmp_path, model)
    good = _reference(tmp_path, model)
    findings = check_model_file(path, CheckConfig(reference=good, disabled=frozenset({"node-names"})))
    assert findings == []
    off = _reference(tmp_path, model, scale=1.001, name="off.npz")  # relative error 1e-3
    findings = check_model_file(path, CheckConfig(reference=off))
    assert _rules(findings, "error") == ["reference"]
    assert "relative L2 error" in findings[-1].message and "off.npz" in findings[-1].message
    loose = CheckConfig(reference=off, tolerances=Tolerances(max_rel_error=1e-2))
    assert _rules(check_model_file(path, loose), "error") == []
    cosine = CheckConfig(reference=off, tolerances=Tolerances(min_cosine=0.999))
    assert _rules(check_model_file(path, cosine), "error") == []


def test_reference_names_must_match(tmp_path):
    model = tiny_conv_model()
    path = _save(tmp_path, model)
    ref = _reference(tmp_path, model, **{"input:extra": np.zeros(1), "output:nope": np.zeros(1)})
    messages = [f.message for f in check_model_file(path, CheckConfig(reference=ref)) if f.rule == "reference"]
    assert any("'extra'" in m for m in messages) and any("'nope'" in m for m in messages)
    no_inputs = tmp_path / "noinput.npz"
    np.savez(no_inputs, **{"output:y": np.zeros((2, 4, 8, 8), np.float32)})
    messages = [f.message for f in check_model_file(path, CheckConfig(reference=no_inputs))]
    assert any("lacks model input(s) 'x'" in m for m in messages)


def test_reference_float64_inputs_are_cast(tmp_path):
    model = tiny_conv_model()
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8))
    (y,) = run_ort(model, {"x": x.astype(np.float32)})
    ref = tmp_path / "ref64.npz"
    np.savez(ref, **{"input:x": x, "output:y": y})
    findings = check_model_file(_save(tmp_path, model), CheckConfig(reference=ref))
    assert _rules(findings, "error") == []


@pytest.mark.parametrize("content", [b"not a zip", None])
def test_bad_reference_file_is_a_usage_error(tmp_path, content):
    ref = tmp_path / "bad.npz"
    if content is not None:
        ref.write_bytes(content)
    with pytest.raises(UsageError):
        check.load_reference(ref)
    wrong_keys = tmp_path / "keys.npz"
    np.savez(wrong_keys, x=np.zeros(1))
    with pytest.raises(UsageError, match="input:<name>"):
        check.load_reference(wrong_keys)


def test_tucker2_ratio_formula():
    # C = F = 64, 3×3, ranks 32/32: (64·32 + 32·32·9 + 32·64) / (64·64·9)
    assert check.tucker2_mac_ratio(64, 64, 9) == pytest.approx((2048 + 9216 + 2048) / 36864)
    assert check.tucker2_mac_ratio(64, 64, 9, stride_area=4) > check.tucker2_mac_ratio(64, 64, 9)


def test_hints(tmp_path):
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,64,32,32] x) => (float[1,10] y) {
          a = Conv <pads = [1, 1, 1, 1]> (x, w1)
          b = Conv (a, w2)
          d = ReduceMean <axes = [2, 3], keepdims = 0> (b)
          y = Gemm (d, w3)
        }"""
    )
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (64, 64, 3, 3)), ("w2", (64, 64, 1, 1)), ("w3", (64, 10))):
        model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    for index, node in enumerate(model.graph.node):
        node.name = f"n{index}"
    path = _save(tmp_path, model)
    assert "hints" not in _rules(check_model_file(path))
    findings = [f for f in check_model_file(path, CheckConfig(hints=True)) if f.rule == "hints"]
    assert all(f.level == "warning" for f in findings)
    # the 3×3 conv (37.7M MACs) gets a Tucker-2 hint; the 1×1 conv does not
    assert len(findings) == 2, findings
    assert "'n0'" in findings[0].message and "~64%" in findings[0].message
    assert "INT8" in findings[1].message and "3 Conv/Gemm/MatMul" in findings[1].message
    assert not failed(findings) and failed(findings, strict=True)


def test_size_warning_near_the_limit(tmp_path, monkeypatch):
    path = _save(tmp_path, tiny_conv_model())
    monkeypatch.setattr(model_format, "SIZE_WARNING_BYTES", 100)
    findings = check_model_file(path)
    assert ("size", "warning") in [(f.rule, f.level) for f in findings]


def test_models_over_the_protobuf_limit_are_checked_by_path(tmp_path, monkeypatch):
    """Models over 2 GB (with external data) cannot be serialised: checker and shape inference
    then read the file. Exercised with a small model and a lowered limit."""
    from onnxopt import io

    path = _external(tmp_path, "big", "weights.bin", Path("weights.bin"))
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 300)
    findings = check_model_file(path)
    assert _rules(findings, "error") == [], findings


def test_every_rule_is_documented():
    docs = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for rule in check.RULES:
        assert f"`{rule}`" in docs, rule
        assert rule in check.__doc__, rule


def test_disabled_load_error_skips_the_file_silently(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert check_model_file(path, CheckConfig(disabled=frozenset({"load-error"}))) == []
