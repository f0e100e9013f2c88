"""One trip through optimize: the spec parsed once into a Pipeline, and ``api.run`` deciding
write-or-not as the CLI does (written only when the gate passed, unless force; input untouched)."""

from __future__ import annotations

import json

import pytest

import onnxopt
from onnxopt import api, pipeline, registry
from onnxopt.errors import UsageError
from onnxopt.pipeline import Pipeline
from onnxopt.validate.tolerances import Tolerances
from tests.foundation.test_gate import _ScaleWeights  # noqa: F401  (registers test-scale-weights)
from tests.helpers import tiny_conv_model

STRICT = Tolerances(max_rel_error=0.01)


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_conv_model().SerializeToString())
    return path


def test_a_pipeline_is_checked_whole_and_typed():
    parsed = Pipeline.parse("simplify,fold-constants:min_elements=4")
    assert [step.pass_class.name for step in parsed.steps] == ["simplify", "fold-constants"]
    assert parsed.steps[1].options.min_elements == 4
    assert str(parsed) == "simplify,fold-constants:min_elements=4"
    assert Pipeline.parse(parsed) is parsed
    with pytest.raises(UsageError, match="unknown option 'nope'"):
        Pipeline.parse("simplify,fold-constants:nope=1")
    with pytest.raises(UsageError, match="either --passes or --config"):
        Pipeline.parse("simplify", config="pipeline.yaml")


def test_run_parses_the_spec_once(tmp_path, model_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline, "parse_spec", lambda text: calls.append(text) or registry.parse_spec(text))
    result = api.run(model_path, "simplify,fold-constants", output=tmp_path / "out.onnx")
    assert calls == ["simplify,fold-constants"]
    assert result.passed is True and result.written


def test_run_writes_nothing_when_the_gate_fails_unless_forced(tmp_path, model_path):
    before = model_path.read_bytes()
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    result = api.run(model_path, "test-scale-weights:factor=1.05", output=out, tolerances=STRICT,
                     report_path=report_path)
    assert result.passed is False and not result.written and not out.exists()
    assert json.loads(report_path.read_text())["written"] is False
    forced = onnxopt.run(model_path, "test-scale-weights:factor=1.05", output=out, tolerances=STRICT, force=True)
    assert forced.passed is False and forced.written and out.exists()
    assert model_path.read_bytes() == before


def test_run_refuses_to_write_onto_its_input(model_path):
    with pytest.raises(UsageError, match="is the input model"):
        api.run(model_path, "simplify", output=model_path)
    with pytest.raises(UsageError, match="part of validation"):
        api.run(model_path, "simplify", validate=False, bench=True)


def test_run_without_validation_says_why(model_path):
    result = api.run(model_path, "simplify", validate=False, skip_reason="--no-validate")
    assert result.passed is None and not result.written  # no output given
    assert result.report.validation == {"skipped": True, "passed": None, "reason": "--no-validate"}
