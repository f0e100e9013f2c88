"""``auto`` on models with dynamic inputs, and where its time goes (issue 12, item 7).

A model whose H and W are dynamic (PP-OCR, CRAFT) must have its layers timed at the shapes
the data (or ``--input-shape``) fixes — not skipped as "input shape unknown (dynamic)" —
and the report must say how many seconds each phase took.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import onnxopt.passes.auto  # noqa: F401  (registers "auto")
import onnxopt.search.clock as clock_module
import onnxopt.search.measure as measure_module
from onnxopt import api
from onnxopt.passbase import PassContext
from onnxopt.pipeline import run_passes
from onnxopt.registry import PassSpec, build_passes
from onnxopt.search import run_search
from onnxopt.validate.tolerances import Tolerances
from tests.helpers import SHARED_IMAGES, SHARED_MODELS
from tests.search.fakes import FakeClock, FakeTime, conv_net
from tests.search.fakes import FakeEvaluator as _FakeEvaluator

CONVS = {"conv1", "conv2", "conv3"}
SHAPE = (1, 32, 16, 16)


def dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """``conv_net`` with its input [N, C, H, W] dynamic in N, H and W."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    dims = copy.graph.input[0].type.tensor_type.shape.dim
    for index, name in ((0, "N"), (2, "H"), (3, "W")):
        dims[index].Clear()
        dims[index].dim_param = name
    out = copy.graph.output[0].type.tensor_type.shape.dim
    out[0].Clear()
    out[0].dim_param = "N"
    onnx.checker.check_model(copy)
    return copy


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return dynamic(conv_net())


def FakeEvaluator(model, **kwargs):  # noqa: N802
    """The fake, costing the dynamic model at SHAPE (as the real evaluator times it at the data's shape)."""
    return _FakeEvaluator(model, input_shapes={"x": SHAPE}, **kwargs)


def timed_layers(report) -> set[str]:
    """Layers whose single-layer model was timed (some candidate has a measured speedup)."""
    out = set()
    for entry in [*report.applied, *report.skipped]:
        if any("layer_speedup" in tried for tried in entry.get("tried") or []):
            out.add(entry["node"])
    return out


def shape_skips(report) -> list[str]:
    return [entry["reason"] for entry in report.skipped if "input shape unknown" in entry["reason"]]


def run_fake(model, evaluator, context: dict | None = None, **options):
    options.setdefault("cache", False)
    options.setdefault("min_macs", 0)
    options.setdefault("margin", 0.0)
    options.setdefault("recover", False)  # recovery of the finals: tests/search/test_recovery.py
    batches = [{"x": np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32)} for i in range(4)]
    ctx = PassContext(evaluator=evaluator, calibration=lambda: iter(batches), search=run_search, **(context or {}))
    result, reports = run_passes(ir.from_proto(model), build_passes([PassSpec("auto", options)], ctx))
    return ir.to_proto(result), reports[0]


# ---------------------------------------------------------------------------- shapes


def test_dynamic_input_layers_are_timed_at_the_data_shapes(model, tmp_path):
    """The real evaluator on random data at --input-shape: every conv is timed at 16×16.

    Before issue 12 every layer was skipped: "input shape unknown (dynamic)"."""
    shapes = {"x": SHAPE}
    data = api.data_source(model, input_shapes=shapes, samples=8)
    spec = f"auto:cache_dir={tmp_path / 'cache'}:methods=tucker:levels=0.9:min_macs=0:latency_runs=3:per_layer=1"
    context, _, _ = api.prepare_context(model, spec, data, has_data=False, calibration_samples=4,
                                        tolerances=Tolerances(min_cosine=0.9))
    _, report = api.optimize(model, spec, context=context, input_shapes=shapes)
    auto = report.passes[0]
    assert not shape_skips(auto), shape_skips(auto)
    assert timed_layers(auto) == CONVS
    figures = auto.figures
    assert figures["layer_shapes"]["inputs"] == {"x": list(SHAPE)}
    assert figures["candidate_layers"] == 3
    described = {entry["node"]: entry["shape"] for entry in [*auto.applied, *auto.skipped] if entry["node"] in CONVS}
    assert all(shape.endswith("at input 1×32×16×16") or shape.endswith("at input 1×64×16×16")
               for shape in described.values()), described
    for phase in ("layer shapes", "original", "layer timing", "layer sensitivity", "final candidates"):
        assert phase in figures["seconds_by_phase"]


def test_user_input_shapes_reach_the_pass_through_the_context(model):
    """Without data feeds (an evaluator lacking latency_feeds), --input-shape fixes the shapes."""
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002))
    _, report = run_fake(model, evaluator, context={"input_shapes": {"x": SHAPE}}, methods=("tucker",))
    assert not shape_skips(report)
    assert timed_layers(report) == CONVS
    assert report.figures["layer_shapes"]["from"] == {"x": "--input-shape"}


def test_without_any_shape_the_skip_says_how_to_fix_it(model):
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002))
    _, report = run_fake(model, evaluator, methods=("tucker",))
    reasons = shape_skips(report)
    assert len(reasons) == 3 and all("--input-shape" in r for r in reasons)


def test_shapes_inference_cannot_give_come_from_one_run(model, monkeypatch):
    """Where shape inference fails (shapes computed at run time), one run of the model gives them."""

    def fail(*args, **kwargs):
        raise RuntimeError("no inference here")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fail)
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002))
    evaluator.cost = lambda proto: 1e-3 * sum(n.op_type == "Conv" for n in proto.graph.node)  # no inference
    evaluator.latency_feeds = lambda: {"x": np.zeros(SHAPE, np.float32)}
    _, report = run_fake(model, evaluator, methods=("tucker",))
    assert "one run of the model" in report.figures["layer_shapes"]["inferred_by"]
    assert timed_layers(report) == CONVS


# ---------------------------------------------------------------------------- time by phase


def test_the_report_says_where_the_time_went(model, monkeypatch):
    """With a fake clock (10 s per score, 1 s per timed model) the phase table adds up."""
    clock = FakeClock()
    monkeypatch.setattr(clock_module, "time", FakeTime(clock))
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), quant_error_default=0.001,
                              clock=clock, score_seconds=10, latency_seconds=1)
    _, report = run_fake(model, evaluator, context={"input_shapes": {"x": SHAPE}}, methods=("tucker",),
                         quantize="int8")
    figures = report.figures
    seconds = figures["seconds_by_phase"]
    for phase in ("layer shapes", "original", "quantization baseline", "layer timing", "layer sensitivity",
                  "search", "final candidates", "final timing", "holdout verification", "other"):
        assert phase in seconds, seconds
    assert sum(seconds.values()) == pytest.approx(figures["seconds"], abs=0.2)
    rows = {row["phase"]: row for row in figures["phases"]}
    holdout = [s for s in evaluator.scored if s["split"] == "holdout"]
    assert rows["holdout verification"]["scores"] == len(holdout) >= 1
    assert seconds["holdout verification"] == pytest.approx(10 * len(holdout))
    sensitivity = rows["layer sensitivity"]
    assert sensitivity["scores"] >= 3 and sensitivity["scores_s"] == pytest.approx(10 * sensitivity["scores"])
    assert rows["layer timing"]["models_timed"] >= 6 and rows["layer timing"]["scores"] == 0
    assert rows["layer timing"]["seconds"] == pytest.approx(rows["layer timing"]["models_timed"])
    assert rows["quantization baseline"]["builds"] == 1 and rows["quantization baseline"]["scores"] in (1, 2)
    assert sum(row["scores"] for row in figures["phases"]) == evaluator.calls["score"]
    assert sum(row["models_timed"] for row in figures["phases"]) == evaluator.calls["latency_models"]


def test_quantization_attempts_that_fail_are_screened_on_a_few_samples(model, monkeypatch):
    """int8 breaks the budget until every weight layer is excluded; once a whole-split score
    is known to be slow, further attempts are scored on 16 samples first and those that
    fail there are not scored on the whole split."""
    clock = FakeClock()
    monkeypatch.setattr(clock_module, "time", FakeTime(clock))
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), quant_error={"conv2": 0.02},
                              clock=clock, score_seconds=10, latency_seconds=0.01, ns_per_mac=0.01)
    _, report = run_fake(model, evaluator, context={"input_shapes": {"x": SHAPE}}, methods=("tucker",),
                         quantize="int8")
    steps = [s for s in report.figures["steps"] if s["phase"] == "quantization"]
    screened = [s for s in steps if "first 16 samples" in s["tried"]]
    assert screened and all("not scored on the whole split" in s["note"] for s in screened)
    whole = [s for s in steps if "samples" not in s["tried"] and "latency" not in s["tried"]]
    assert [s["tried"] for s in whole] == ["int8 alone", "int8 excluding 4 layers"]
    assert whole[-1]["passed"]


def test_whole_model_timing_rounds_shrink_for_a_slow_model(model, monkeypatch):
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), ns_per_mac=100)  # ~2.4 s a run
    runs = []
    latency = evaluator.latency
    monkeypatch.setattr(evaluator, "latency", lambda models, n=None, **kw: (runs.append(n), latency(models, n, **kw))[1])
    _, report = run_fake(model, evaluator, context={"input_shapes": {"x": SHAPE}}, methods=("tucker",))
    assert report.figures["whole_model_timing_runs"] == measure_module.WHOLE_MODEL_MIN_RUNS
    assert runs[0] == measure_module.LATENCY_PROBE_RUNS and 20 not in runs[:2]


# ---------------------------------------------------------------------------- a real detector


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_MODELS / "ppocrv4_det_mobile.onnx").exists() or not (SHARED_IMAGES / "imagenet").exists(),
                    reason="needs ../shared/models/ppocrv4_det_mobile.onnx and ../shared/images/imagenet")
def test_ppocr_detector_with_dynamic_hw_is_searched_at_the_given_shape(tmp_path, monkeypatch):
    """PP-OCRv4's input is [N, 3, H, W] dynamic; at --input-shape x:1x3x64x64 with a few photos,
    auto must time its layers (not skip them as dynamic) and say where its time went."""
    import json

    from onnxopt.cli.main import main

    # int8's quant_pre_process: onnxruntime's incomplete symbolic shape inference on PP-OCR dumps
    # sym_shape_infer_temp.onnx and a .data file into the working directory
    monkeypatch.chdir(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((SHARED_IMAGES / "imagenet").glob("*.JPEG"))[:8]:
        (photos / path.name).symlink_to(path)
    report_path = tmp_path / "report.json"
    with pytest.raises(SystemExit) as exit_info:
        main([
            "optimize", str(SHARED_MODELS / "ppocrv4_det_mobile.onnx"),
            "--passes", f"fold-constants,auto:quantize=int8:cache_dir={tmp_path / 'cache'}:levels=0.9:min_macs=1e5"
                        ":methods=tucker|svd:per_layer=1:latency_runs=5",
            "--data", str(photos), "--calibration-samples", "4",
            "--preprocess", "resize=64 crop=64 mean=123.675,116.28,103.53 std=58.395,57.12,57.375",
            "--input-shape", "x:1x3x64x64", "--min-cosine", "0.99", "--time-budget", "120",
            "-o", str(tmp_path / "out.onnx"), "--report", str(report_path), "-q",
        ])
    assert exit_info.value.code in (0, 1)  # 1: the gate refused (nothing written), still a report
    auto = json.loads(report_path.read_text())["passes"][1]
    assert auto["name"] == "auto"
    reasons = [entry["reason"] for entry in auto["skipped"]]
    assert not [r for r in reasons if "input shape unknown" in r]
    timed = [e for e in [*auto["applied"], *auto["skipped"]]
             if any("layer_speedup" in t for t in e.get("tried") or [])]
    assert len(timed) >= 5, reasons
    figures = auto["figures"]
    assert figures["layer_shapes"]["inputs"] == {"x": [1, 3, 64, 64]}
    seconds = figures["seconds_by_phase"]
    for phase in ("original", "quantization baseline", "layer timing", "layer sensitivity", "final candidates"):
        assert phase in seconds, seconds
    assert sum(seconds.values()) == pytest.approx(figures["seconds"], abs=0.5)
