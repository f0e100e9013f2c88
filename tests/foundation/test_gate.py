"""The validation gate of optimize: failures exit 1 and write nothing unless --force."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import pytest

import onnxopt
from onnxopt.cli.main import main
from onnxopt.passbase import OptimizerPass, option
from onnxopt.registry import _PASSES, register
from onnxopt.validate.gate import FP16_TOLERANCES, LOSSLESS_TOLERANCES, LOSSY_TOLERANCES, default_tolerances
from tests.helpers import tiny_conv_model


@dataclass(frozen=True)
class _ScaleOptions:
    factor: float = option(1.01, "multiply every initializer by this")


class _ScaleWeights(OptimizerPass, ir.passes.InPlacePass):
    """Test-only lossy pass: perturbs the weights by a known factor."""

    name = "test-scale-weights"
    Options = _ScaleOptions

    def call(self, model):
        for value in model.graph.initializers.values():
            array = value.const_value.numpy() * self.options.factor
            value.const_value = ir.tensor(array.astype(np.float32), name=value.name)
        return ir.passes.PassResult(model, True)


if _ScaleWeights.name not in _PASSES:
    register(_ScaleWeights)


def run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_conv_model().SerializeToString())
    return path


def test_gate_failure_exits_1_and_writes_nothing(tmp_path, model_path, capsys):
    out = tmp_path / "out.onnx"
    code, _, err = run(["optimize", str(model_path), "--passes", "test-scale-weights:factor=1.05",
                        "-o", str(out), "--min-cosine", "0.9", "--max-rel-error", "0.01"], capsys)
    assert code == 1
    assert "validation failed: output 'y'" in err and "nothing written" in err
    assert not out.exists()


def test_force_writes_but_still_exits_1(tmp_path, model_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, _ = run(["optimize", str(model_path), "--passes", "test-scale-weights:factor=1.05",
                           "-o", str(out), "--max-rel-error", "0.01", "--force", "--json"], capsys)
    assert code == 1
    assert out.exists()
    report = json.loads(stdout)
    assert report["validation"]["passed"] is False and report["written"] is True


def test_gate_passes_within_tolerance(tmp_path, model_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, _ = run(["optimize", str(model_path), "--passes", "test-scale-weights:factor=1.001",
                           "-o", str(out), "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    # A lossy pipeline without flags is held to the documented lossy default.
    assert report["validation"]["tolerances"]["min_cosine"] == LOSSY_TOLERANCES.min_cosine
    assert report["validation"]["passed"] is True


def test_no_validate_is_reported(tmp_path, model_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, _ = run(["optimize", str(model_path), "--passes", "test-scale-weights:factor=2",
                           "-o", str(out), "--no-validate", "--json"], capsys)
    assert code == 0
    assert json.loads(stdout)["validation"] == {"skipped": True, "passed": None, "reason": "--no-validate"}


def test_min_speedup_fails_the_gate(tmp_path, model_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, err = run(["optimize", str(model_path), "--passes", "fold-constants", "-o", str(out),
                             "--min-speedup", "1000", "--json"], capsys)
    assert code == 1
    report = json.loads(stdout)
    assert report["benchmark"]["speedup"] > 0
    assert any(f.startswith("latency: speedup") for f in report["validation"]["failures"])
    assert not out.exists()


def test_default_tolerances_by_pipeline():
    simplify, fold = onnxopt.registry.get("simplify"), onnxopt.registry.get("fold-constants")
    assert default_tolerances([simplify, fold])[0] == LOSSLESS_TOLERANCES

    class Fp16:
        name, lossless = "fp16", False

    class Tucker:
        name, lossless = "tucker", False

    assert default_tolerances([simplify, Fp16])[0] == FP16_TOLERANCES
    assert default_tolerances([Fp16, Tucker])[0] == LOSSY_TOLERANCES


def test_data_needing_pass_gets_disjoint_calibration(tmp_path, capsys):
    """Calibration takes the first samples of --data; evaluation the rest (reported)."""
    seen = []

    class _Recorder(OptimizerPass, ir.passes.InPlacePass):
        name = "test-record-calibration"
        needs_data = True

        def call(self, model):
            for feeds in self.context.calibration_batches():
                seen.append(feeds["x"].copy())
            return ir.passes.PassResult(model, False)

    if _Recorder.name not in _PASSES:
        register(_Recorder)
    data = np.arange(10 * 3 * 8 * 8, dtype=np.float32).reshape(10, 3, 8, 8)
    npz = tmp_path / "data.npz"
    np.savez(npz, x=data)
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_conv_model().SerializeToString())
    code, stdout, _ = run(["optimize", str(model), "--passes", "test-record-calibration", "-o",
                           str(tmp_path / "o.onnx"), "--data", str(npz), "--calibration-samples", "3",
                           "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert np.array_equal(np.concatenate(seen), data[:3])
    assert report["validation"]["samples"] == 7
    assert any("calibration: 3" in note for note in report["notes"])
