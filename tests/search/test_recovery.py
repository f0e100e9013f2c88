"""``auto`` recovers its final candidates that decompose (the ``recover`` pass, then quantization).

The fake evaluator scores a model by its structure, so recovery (which changes only weight
values) leaves its score as it was, except with :class:`RecoveryAwareEvaluator`: a model whose
weights differ from the first model of the same graph it scored (the search scores each
candidate before its recovered twin) is recovered and gains ``gain``; a decomposed and
quantized model that is not loses ``stack_penalty`` (the stack breaks what each alone keeps).
"""

from __future__ import annotations

import types

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

import onnxopt.passes.auto  # noqa: F401  (registers "auto")
import onnxopt.recover
import onnxopt.search.clock as clock_module
from onnxopt.errors import UsageError
from onnxopt.passbase import PassContext
from onnxopt.pipeline import run_passes
from onnxopt.registry import PassSpec, build_passes
from onnxopt.search import measure, recovery, run_search
from onnxopt.search.cache import digest
from tests.search.fakes import FakeClock, FakeEvaluator, FakeTime, calibration, conv_net

CONVS = {"conv1", "conv2", "conv3"}


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return conv_net()


class RecoveryAwareEvaluator(FakeEvaluator):
    gain: float = 0.0
    stack_penalty: float = 0.0

    def _value(self, model: onnx.ModelProto) -> float:
        structure = tuple(node.name for node in model.graph.node)
        weights = digest(*(numpy_helper.to_array(t) for t in model.graph.initializer))
        first = self.__dict__.setdefault("first_weights", {}).setdefault(structure, weights)
        if weights != first:
            return super()._value(model) + self.gain
        stacked = any("/" in name for name in structure) and any(n.op_type == "DequantizeLinear"
                                                                 for n in model.graph.node)
        return super()._value(model) - (self.stack_penalty if stacked else 0.0)


def run_auto(model, evaluator, *, calibrated: bool = True, context: dict | None = None, **options):
    options.setdefault("cache", False)
    options.setdefault("min_macs", 0)
    options.setdefault("margin", 0.0)
    options.setdefault("methods", ("tucker",))
    options.setdefault("levels", (0.9,))
    ctx = PassContext(evaluator=evaluator, calibration=calibration(model) if calibrated else None, search=run_search,
                      **(context or {}))
    result, reports = run_passes(ir.from_proto(model), build_passes([PassSpec("auto", options)], ctx))
    return ir.to_proto(result), reports[0]


def fake_distill(calls: list):
    """Stands in for onnxopt.recover.distill: nudges the new factors' weights, records its inputs."""

    def distill(teacher, student, changed_outputs, batches, options, progress=None):
        calls.append({"teacher": teacher, "student": student, "options": options})
        known = {t.name for t in teacher.graph.initializer}
        trained = onnx.ModelProto()
        trained.CopyFrom(student)
        names = []
        for tensor in trained.graph.initializer:
            if tensor.name not in known and tensor.data_type == onnx.TensorProto.FLOAT:
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(1.01), tensor.name))
                names.append(tensor.name)
        return types.SimpleNamespace(model=trained, loss_before=1.0, loss_after=0.5, steps=options.steps, lr=1e-4, scale_lr=None,
                                     seconds=0.01, trainable=names, written=names, targets=list(changed_outputs), lr_trials={},
                                     notes=[], reason=None)

    return distill


def spec_names(report) -> list[str]:
    return [spec.split(":")[0] for spec in report.figures["pipeline"]]


def test_recover_false_never_appends_recover(model, monkeypatch):
    built = []
    real_build = measure.build
    monkeypatch.setattr(measure, "build", lambda run, specs, *a, **k: built.append(specs) or real_build(
        run, specs, *a, **k))
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), quant_error_default=0.001)
    _, report = run_auto(model, evaluator, quantize="int8", recover=False)
    assert report.modified and built
    assert not any(spec.name == "recover" for specs in built for spec in specs)
    assert "recover" not in spec_names(report)
    assert not any("recovery" in final for final in report.figures["final_candidates"])
    assert report.figures["recovery"] == "off (recover=false)"


def test_auto_recovers_the_finals_that_decompose_and_reports_before_and_after(model, monkeypatch):
    """Real recovery (a few steps); the teacher is the search's input model."""
    teachers = []
    real_distill = onnxopt.recover.distill
    monkeypatch.setattr(onnxopt.recover, "distill",
                        lambda teacher, *a, **k: teachers.append(teacher) or real_distill(teacher, *a, **k))
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), quant_error_default=0.001)
    proto, report = run_auto(model, evaluator, quantize="int8", recover_steps=5)
    figures = report.figures
    assert figures["recovery"].startswith("on (torch ")
    # decomposition → recover → int8
    assert spec_names(report) == ["tucker", "recover", "int8"]
    assert figures["result"] == "decomposition (3 layers) + recover + int8"
    finals = {f["label"]: f for f in figures["final_candidates"]}
    assert "recovery" not in finals["int8 alone"] and "recovery" not in finals["original"]
    recovered = [f for f in figures["final_candidates"] if f["label"].startswith("decomposition")]
    assert len(recovered) == 2
    for final in recovered:
        entry = final["recovery"]
        assert {"metric_before", "metric_after", "passed_before", "passed_after", "seconds", "steps"} <= set(entry)
        assert entry["recovered"] and "+ recover" in final["label"] and entry["steps"] <= 5
    assert {r["setting"] for r in figures["pareto"]} >= {"decomposition", "decomposition (3 layers) + int8"}
    assert any(s["phase"] == "recovery" for s in figures["steps"])
    assert figures["seconds_by_phase"]["recovery"] > 0
    assert len(teachers) == 2
    for teacher in teachers:
        assert [n.name for n in teacher.graph.node] == [n.name for n in model.graph.node]
    assert evaluator._value(proto) >= evaluator.threshold


def test_recovery_lifts_a_final_that_broke_the_budget(model, monkeypatch):
    calls = []
    monkeypatch.setattr(onnxopt.recover, "distill", fake_distill(calls))
    # each alone meets the budget; stacked they break it unless recovered
    evaluator = RecoveryAwareEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), quant_error_default=0.001)
    evaluator.stack_penalty = 0.01
    proto, report = run_auto(model, evaluator, quantize="int8")
    finals = {f["label"]: f for f in report.figures["final_candidates"]}
    lifted = finals["decomposition (3 layers) + recover + int8"]
    assert not lifted["recovery"]["passed_before"] and lifted["recovery"]["passed_after"]
    assert lifted["recovery"]["metric_after"] > lifted["recovery"]["metric_before"]
    assert report.figures["result"] == "decomposition (3 layers) + recover + int8"
    assert all(call["options"].steps == 200 for call in calls)


def test_a_recovery_that_scores_lower_is_not_kept(model, monkeypatch):
    monkeypatch.setattr(onnxopt.recover, "distill", fake_distill([]))
    evaluator = RecoveryAwareEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002))
    evaluator.gain = -0.001
    _, report = run_auto(model, evaluator)
    final = next(f for f in report.figures["final_candidates"] if f["label"].startswith("decomposition"))
    assert final["label"] == "decomposition" and not final["recovery"]["recovered"]
    assert "lower" in final["recovery"]["reason"]
    assert "recover" not in spec_names(report)


def test_recover_true_without_torch_is_a_usage_error(model, monkeypatch):
    monkeypatch.setattr(onnxopt.recover, "available",
                        lambda: (False, "recovery needs PyTorch; install it with: " + onnxopt.recover.INSTALL))
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002))
    with pytest.raises(UsageError, match=r'pip install "onnxopt\[recover\]"'):
        run_auto(model, evaluator, recover=True)
    assert evaluator.calls["score"] == 0  # refused before any work
    # auto: searches without it and says why
    _, report = run_auto(model, evaluator)
    assert report.modified and "recover" not in spec_names(report)
    assert report.figures["recovery"].startswith("not used: recovery needs PyTorch")
    assert any("PyTorch" in note for note in report.figures["notes"])


def test_without_calibration_data_recovery_is_not_used_with_a_note(model):
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002))
    _, report = run_auto(model, evaluator, calibrated=False)
    assert report.modified and "recover" not in spec_names(report)
    assert "no calibration data" in report.figures["recovery"]
    assert any("no calibration data" in note for note in report.figures["notes"])
    with pytest.raises(UsageError, match="needs --data"):
        run_auto(model, evaluator, calibrated=False, recover=True)


def test_recovery_time_comes_from_the_search_budget(model, monkeypatch):
    calls = []
    monkeypatch.setattr(onnxopt.recover, "distill", fake_distill(calls))

    def run(budget):
        clock = FakeClock()
        monkeypatch.setattr(clock_module, "time", FakeTime(clock))
        evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), clock=clock,
                                  score_seconds=1, latency_seconds=0.1)
        _, report = run_auto(model, evaluator, context={"time_budget": budget})
        return clock, report

    clock, report = run(400)
    assert len(calls) == 1
    seconds = calls[0]["options"].time_budget
    assert recovery.MIN_RECOVERY_SECONDS <= seconds <= 400 and clock.now <= 400
    # too little time for a recovery: the search goes on without it and says why
    calls.clear()
    monkeypatch.setattr(recovery, "MIN_RECOVERY_SECONDS", 1e6)
    _, report = run(400)
    assert not calls and report.figures["result"] == "decomposition"
    final = next(f for f in report.figures["final_candidates"] if f["label"] == "decomposition")
    assert "no time left" in final["recovery"]["reason"]
