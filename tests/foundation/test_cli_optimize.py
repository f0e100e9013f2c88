"""optimize end to end: reports, JSON, stdout pipelines, determinism, preserved model fields."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

import onnxopt
from onnxopt.errors import PassFailed
from onnxopt.passbase import OptimizerPass
from onnxopt.registry import register
from tests.helpers import assert_models_close, cli, tiny_conv_model


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_conv_model().SerializeToString())
    return path


def test_optimize_writes_model_and_json_report(tmp_path, model_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = cli("optimize", str(model_path), "--passes", "simplify,fold-constants", "-o", str(out),
                 "--report", str(report), "--json")
    assert result.returncode == 0, result.stderr.decode()
    printed = json.loads(result.stdout)
    written = json.loads(report.read_text())
    assert printed == written
    assert [p["name"] for p in printed["passes"]] == ["simplify", "fold-constants"]
    assert printed["before"]["macs"] == 4 * 8 * 8 * 3 * 9
    assert printed["written"] is True
    assert_models_close(tiny_conv_model(), onnx.load(out))


def test_model_fields_are_kept(tmp_path, model_path):
    out = tmp_path / "out.onnx"
    assert cli("optimize", str(model_path), "--passes", "simplify", "-o", str(out)).returncode == 0
    original, optimized = tiny_conv_model(), onnx.load(out)
    assert optimized.ir_version == original.ir_version == 8
    assert optimized.doc_string == "tiny conv"
    assert {p.key: p.value for p in optimized.metadata_props} == {"author": "tests"}
    assert [(o.domain, o.version) for o in optimized.opset_import] == [("", 17)]


def test_ir_version_clamped_to_what_onnxruntime_loads(tmp_path):
    model = tiny_conv_model()
    model.ir_version = onnx.IR_VERSION  # 14 with onnx 1.23: newer than onnxruntime 1.31 loads
    path, out = tmp_path / "new.onnx", tmp_path / "out.onnx"
    path.write_bytes(model.SerializeToString())
    result = cli("optimize", str(path), "--passes", "fold-constants", "-o", str(out))
    assert result.returncode == 0, result.stderr.decode()
    from onnxopt.runtime.ir_version import max_runtime_ir_version

    assert onnx.load(out).ir_version == min(onnx.IR_VERSION, max_runtime_ir_version())
    import onnxruntime as ort

    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def test_same_command_twice_gives_identical_bytes(tmp_path, model_path):
    outs = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for out in outs:
        assert cli("optimize", str(model_path), "--passes", "simplify,fold-constants", "-o", str(out)).returncode == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_shell_pipeline_stdout_carries_only_the_model(tmp_path, model_path):
    out = tmp_path / "piped.onnx"
    script = f"cat {model_path} | {sys.executable} -m onnxopt optimize - --passes simplify -o - > {out}"
    result = subprocess.run(script, shell=True, capture_output=True, executable="/bin/bash")
    assert result.returncode == 0, result.stderr.decode()
    direct = tmp_path / "direct.onnx"
    assert cli("optimize", str(model_path), "--passes", "simplify", "-o", str(direct)).returncode == 0
    assert out.read_bytes() == direct.read_bytes()
    onnx.checker.check_model(onnx.load(out))


def test_json_with_stdout_model_is_a_usage_error(model_path):
    result = cli("optimize", str(model_path), "--passes", "simplify", "-o", "-", "--json")
    assert result.returncode == 2
    assert result.stdout == b""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--passes", "simplfy"], "did you mean 'simplify'"),
        (["--passes", "simplify:optimise=1"], "did you mean 'optimize'"),
        (["--passes", "fold-constants:min_elements=zero"], "expected an integer"),
        ([], "give --passes or --config"),
    ],
)
def test_usage_errors_exit_2_before_work(tmp_path, model_path, args, message):
    out = tmp_path / "out.onnx"
    result = cli("optimize", str(model_path), *args, "-o", str(out))
    assert result.returncode == 2
    assert message in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    assert not out.exists()


def test_config_file(tmp_path, model_path):
    config = tmp_path / "p.yaml"
    config.write_text("passes:\n  - simplify\n  - name: fold-constants\n    min_elements: 4\n")
    out = tmp_path / "out.onnx"
    result = cli("optimize", str(model_path), "--config", str(config), "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["passes"][1]["options"] == {"min_elements": 4}


class _Exploding(OptimizerPass):
    name = "test-exploding"

    def __call__(self, model):
        raise RuntimeError("boom while rewriting")


def test_a_pass_that_raises_stops_the_run_with_its_name():
    if "test-exploding" not in onnxopt.registry._PASSES:
        register(_Exploding)
    with pytest.raises(PassFailed, match="pass 'test-exploding' failed: RuntimeError: boom"):
        onnxopt.optimize(tiny_conv_model(), "simplify,test-exploding")


def test_python_api_does_not_modify_its_input():
    original = tiny_conv_model()
    before = original.SerializeToString()
    optimized, report = onnxopt.optimize(original, "simplify,fold-constants")
    assert original.SerializeToString() == before
    assert isinstance(optimized, onnx.ModelProto)
    assert report.after["parameters"] == 4 * 3 * 9


def test_python_m_and_version():
    result = cli("--version")
    assert result.returncode == 0 and onnxopt.__version__ in result.stdout.decode()


def test_passes_json_lists_builtin_passes():
    result = cli("passes", "--json")
    names = {row["name"] for row in json.loads(result.stdout)}
    assert {"simplify", "fold-constants"} <= names


def test_inspect_json(model_path):
    result = cli("inspect", str(model_path), "--json")
    info = json.loads(result.stdout)
    assert info["inputs"] == [{"name": "x", "dtype": "float", "shape": ["N", 3, 8, 8]}]
    assert info["layers"][0]["macs"] == 4 * 8 * 8 * 27
    assert info["parameters"] == 108
