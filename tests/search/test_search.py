"""The ``auto`` search logic, driven by a deterministic fake evaluator (no timing noise).

See ``tests/search/fakes.py`` for how the fake turns a model into a latency and a score.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

import onnxopt.passes.auto as auto_module  # registers "auto" (the package __init__ may not yet)
import onnxopt.search.clock as clock_module
from onnxopt import api
from onnxopt.errors import UsageError
from onnxopt.passbase import PassContext
from onnxopt.pipeline import run_passes
from onnxopt.registry import PassSpec, build_passes, load_config, parse_spec
from onnxopt.search import default_cache_dir, run_search
from tests.search.fakes import FakeClock, FakeEvaluator, FakeTime, calibration, conv_net

CONVS = {"conv1", "conv2", "conv3"}


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return conv_net()


def run_auto(model, evaluator, *, context: dict | None = None, **options):
    options.setdefault("cache", False)
    options.setdefault("min_macs", 0)
    options.setdefault("margin", 0.0)  # budgets below are designed on the exact threshold
    options.setdefault("recover", False)  # recovery of the finals: tests/search/test_recovery.py
    ctx = PassContext(evaluator=evaluator, calibration=calibration(model), search=run_search, **(context or {}))
    passes = build_passes([PassSpec("auto", options)], ctx)
    result, reports = run_passes(ir.from_proto(model), passes)
    return ir.to_proto(result), reports[0]


def applied(report) -> dict[str, dict]:
    return {entry["node"]: entry for entry in report.applied}


def skipped(report) -> dict[str, str]:
    return {entry["node"]: entry["reason"] for entry in report.skipped}


def node_names(proto) -> list[str]:
    return [n.name for n in proto.graph.node]


# ---------------------------------------------------------------------------- basics


def test_without_an_evaluator_the_pass_is_skipped_with_a_reason(model):
    passes = build_passes([PassSpec("auto", {})], PassContext())
    result, reports = run_passes(ir.from_proto(model), passes)
    assert reports[0].skipped_reason and "evaluator" in reports[0].skipped_reason
    assert not reports[0].modified
    assert node_names(ir.to_proto(result)) == node_names(model)


def test_capability_and_options():
    cls = auto_module.SearchDecompositionPass
    assert cls.name == "auto" and cls.needs_data and cls.needs_evaluator and not cls.lossless
    with pytest.raises(UsageError, match="unknown method"):
        build_passes(parse_spec("auto:methods=tucker|qr"))
    with pytest.raises(UsageError, match="levels"):
        build_passes(parse_spec("auto:levels=0.9|1.5"))
    with pytest.raises(UsageError, match="quantize"):
        build_passes(parse_spec("auto:quantize=int4"))
    options = build_passes(parse_spec("auto:methods=tucker|svd:levels=0.8|0.9:quantize=int8"))[0].options
    assert options.methods == ("tucker", "svd") and options.levels == (0.8, 0.9) and options.quantize == "int8"


def test_default_cache_dir_respects_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "onnxopt" / "auto"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(default_cache_dir()).endswith(".cache/onnxopt/auto")


# ---------------------------------------------------------------------------- greedy search


def test_greedy_takes_the_layers_that_fit_and_rejects_one_that_alone_breaks_the_budget(model):
    # tucker@0.9 cuts conv1's weight ~4.8×, conv2/conv3's ~8.5×: alone, errors ≈ 0.0024, 0.0034, 0.0102
    evaluator = FakeEvaluator(model, sensitivity={"conv1": 0.0005, "conv2": 0.0004, "conv3": 0.0012})
    proto, report = run_auto(model, evaluator, methods=("tucker",), levels=(0.9,))
    assert report.modified
    assert set(applied(report)) == {"conv1", "conv2"}
    assert "alone it breaks the budget" in skipped(report)["conv3"]
    assert "conv3" in node_names(proto) and "conv1/tucker_core" in node_names(proto)
    assert report.figures["result"] == "decomposition"
    assert evaluator._value(proto) >= evaluator.threshold


def test_layers_are_added_by_gain_per_sensitivity_and_patience_stops_the_search(model):
    # every layer fits alone; all three together do not; conv3 is the least efficient
    errors = {"conv1": 0.004, "conv2": 0.004, "conv3": 0.0095}
    evaluator = FakeEvaluator(model, error_fn=lambda layer, ratio: errors[layer])
    proto, report = run_auto(model, evaluator, methods=("tucker",), levels=(0.9,), patience=1)
    assert set(applied(report)) == {"conv1", "conv2"}
    assert "broke the budget" in skipped(report)["conv3"]
    order = [step["tried"] for step in report.figures["steps"] if step["phase"] == "search"]
    assert order[0].startswith("all 3 layers")


def test_back_off_to_a_safer_level_when_the_combination_breaks_the_budget(model):
    # aggressive level (weight cut > 4×): error 0.004 per layer; the safer level: 0.0035
    evaluator = FakeEvaluator(model, threshold=0.9882,
                              error_fn=lambda layer, ratio: 0.004 if ratio > 4 else 0.0035)
    proto, report = run_auto(model, evaluator, methods=("tucker",), levels=(0.9, 0.95))
    chosen = applied(report)
    assert set(chosen) == CONVS
    assert sorted(entry["level"] for entry in chosen.values()) == [0.9, 0.9, 0.95]
    backed_off = [s for s in report.figures["steps"] if s["tried"].startswith("+ ") and "@0.95" in s["tried"]]
    assert backed_off and backed_off[-1]["passed"]
    assert evaluator._value(proto) >= 0.9882


def test_margin_keeps_part_of_the_budget_in_reserve(model):
    # conv1+conv2 use 0.0058 of the 0.01 slack: fine without margin, too much with margin=0.5
    sens = {"conv1": 0.0005, "conv2": 0.0004, "conv3": 0.0012}
    _, without = run_auto(model, FakeEvaluator(model, sensitivity=sens), methods=("tucker",), levels=(0.9,))
    _, with_margin = run_auto(model, FakeEvaluator(model, sensitivity=sens), methods=("tucker",), levels=(0.9,),
                              margin=0.5)
    assert set(applied(without)) == {"conv1", "conv2"}
    assert len(applied(with_margin)) == 1
    assert "margin" in skipped(with_margin)["conv3"]


@pytest.mark.parametrize(("threshold", "upgraded"), [(0.99, 3), (0.9955, 1)])
def test_time_left_upgrades_layers_to_faster_options_while_they_fit(model, threshold, upgraded):
    # the safer level has the better gain per sensitivity, so the search starts there
    evaluator = FakeEvaluator(model, threshold=threshold,
                              error_fn=lambda layer, ratio: 0.002 if ratio > 4 else 0.001)
    proto, report = run_auto(model, evaluator, methods=("tucker",), levels=(0.9, 0.95))
    levels = sorted(entry["level"] for entry in applied(report).values())
    assert levels.count(0.9) == upgraded and len(levels) == 3
    assert any("→ tucker@0.9" in s["tried"] and s["passed"] for s in report.figures["steps"])
    assert evaluator._value(proto) >= threshold


def test_never_ends_with_nothing_when_decomposition_is_slower(model):
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0001), overhead=1.0)
    proto, report = run_auto(model, evaluator)
    assert not report.modified
    assert node_names(proto) == node_names(model)
    reasons = skipped(report)
    for name in CONVS:
        assert reasons[name].startswith("no method saves time"), reasons[name]
        assert "×" in reasons[name]
    assert report.figures["result"] == "original (unchanged)"
    assert "does not pay" in report.figures["explanation"]
    assert evaluator.calls["score"] == 0  # nothing that loses time is scored


def test_never_ends_with_nothing_when_nothing_fits_the_budget(model):
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.1))
    proto, report = run_auto(model, evaluator, methods=("tucker", "spatial"))
    assert not report.modified and node_names(proto) == node_names(model)
    for name in CONVS:
        assert "rejected" in skipped(report)[name] and "breaks the budget" in skipped(report)[name]
    assert "none fit the budget" in report.figures["explanation"]


def test_a_result_that_fails_the_holdout_split_is_not_kept(model):
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), holdout_penalty=0.05)
    proto, report = run_auto(model, evaluator, methods=("tucker",))
    assert not report.modified
    finals = {f["label"]: f for f in report.figures["final_candidates"]}
    assert "holdout" in finals["decomposition"]["reason"]
    assert any(s["phase"] == "final" and "holdout" in s["tried"] for s in report.figures["steps"])


def test_time_budget_bounds_the_search(model, monkeypatch):
    def run(budget):
        clock = FakeClock()
        monkeypatch.setattr(clock_module, "time", FakeTime(clock))
        evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), clock=clock,
                                  score_seconds=10, latency_seconds=1)
        context = {"time_budget": budget} if budget else {}
        proto, report = run_auto(model, evaluator, context=context, methods=("tucker", "spatial", "cp"))
        return clock, evaluator, proto, report

    _, free, _, unbounded = run(None)
    assert "stopped" not in unbounded.figures
    clock, bounded, proto, report = run(60)
    assert "stopped" in report.figures and "time budget" in report.warnings[0]
    assert bounded.calls["score"] < free.calls["score"]
    assert clock.now <= 60 + 10  # at most one measurement past the budget
    # whatever it ends with meets the budget on both splits
    assert bounded._value(proto) >= bounded.threshold
    assert report.figures["time_budget"] == 60


def test_option_time_budget_overrides_the_context(model, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(clock_module, "time", FakeTime(clock))
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), clock=clock)
    _, report = run_auto(model, evaluator, context={"time_budget": 1e6}, time_budget=30)
    assert report.figures["time_budget"] == 30 and "stopped" in report.figures


# ---------------------------------------------------------------------------- quantization


def test_quantize_int8_keeps_decomposition_plus_int8_when_it_is_fastest(model):
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), quant_error_default=0.001)
    proto, report = run_auto(model, evaluator, methods=("tucker",), quantize="int8")
    assert report.figures["result"].startswith("decomposition (")
    assert report.figures["result"].endswith("+ int8")
    assert report.figures["speedup_vs_int8"] >= 1.02
    assert report.figures["latency_domain"] == "int8"
    assert any(n.op_type == "DequantizeLinear" for n in proto.graph.node)
    assert evaluator._value(proto) >= evaluator.threshold
    labels = {f["label"] for f in report.figures["final_candidates"]}
    assert {"original", "int8 alone", "decomposition"} <= labels


def test_quantize_int8_keeps_int8_alone_when_decomposition_does_not_pay_quantized(model):
    # decomposition pays in float (conv 9.4 ms vs 1.1 ms + 2 extra nodes × 2 ms) but not
    # quantized (3.8 ms vs 0.4 ms + 6 ms): the result must be int8 alone, never slower
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), overhead=2e-3)
    proto, report = run_auto(model, evaluator, methods=("tucker",), levels=(0.9,), quantize="int8")
    assert report.figures["result"] == "int8 alone"
    assert report.modified
    assert not any("/tucker_" in n for n in node_names(proto))
    for name in CONVS:
        assert skipped(report)[name].startswith("no method saves time")
    assert evaluator.cost(proto) <= min(evaluator.cost(model), evaluator.cost(proto) + 1e-12)


def test_quantize_int8_excludes_the_layers_that_break_the_budget(model):
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002), quant_error={"conv1": 0.02})
    proto, report = run_auto(model, evaluator, methods=("tucker",), levels=(0.9,), quantize="int8")
    quant_steps = [s for s in report.figures["steps"] if s["phase"] == "quantization" and "metric" in s]
    # first int8's measured fallback (activations kept float: here the weights stay rounded,
    # which is what this fake counts), then whole layers at both ends
    assert [s["tried"].removesuffix(" (first 16 samples)") for s in quant_steps[:3]] == [
        "int8 alone", "int8 keeping up to 4 activations float", "int8 excluding 2 layers"]
    assert [s["passed"] for s in quant_steps[:3]] == [False, False, True]
    assert quant_steps[2]["excluded"] == ["conv1", "fc"]
    int8_spec = report.figures["pipeline"][-1]
    assert int8_spec.startswith("int8:exclude=conv1|fc")
    assert evaluator._value(proto) >= evaluator.threshold


class RoundingAwareEvaluator(FakeEvaluator):
    """Each rounded activation (a QuantizeLinear → DequantizeLinear pair on a computed tensor)
    costs ``per_activation`` of the score: int8 alone breaks the budget, keeping a few of
    them float (keep_float) meets it."""

    per_activation: float = 0.002

    def _value(self, model: onnx.ModelProto) -> float:
        from onnxopt.passes._float_fallback import activation_quantizers

        return super()._value(model) - self.per_activation * len(activation_quantizers(model))


def test_quantize_int8_keeps_sensitive_activations_float_before_excluding_layers(model):
    evaluator = RoundingAwareEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.0002))
    proto, report = run_auto(model, evaluator, methods=("tucker",), levels=(0.9,), quantize="int8")
    quant_steps = [s for s in report.figures["steps"] if s["phase"] == "quantization" and "metric" in s]
    assert [s["tried"].removesuffix(" (first 16 samples)") for s in quant_steps[:2]] == [
        "int8 alone", "int8 keeping up to 4 activations float"]
    assert [s["passed"] for s in quant_steps[:2]] == [False, True]
    assert quant_steps[1]["excluded"] == []  # no weight layer left in float
    assert any(spec.startswith("int8:keep_float=4") for spec in report.figures["pipeline"])
    assert evaluator._value(proto) >= evaluator.threshold


# ---------------------------------------------------------------------------- report, config, cache


def test_report_contents(model):
    evaluator = FakeEvaluator(model, sensitivity={"conv1": 0.0005, "conv2": 0.0004, "conv3": 0.0012})
    _, report = run_auto(model, evaluator, methods=("tucker", "spatial"))
    figures = report.figures
    assert figures["splits"]["search"]["samples"] == 100 and figures["splits"]["holdout"]["samples"] == 50
    assert figures["budget"]
    assert figures["target"] == "cpu" and figures["rank_rounding"] == 16
    for entry in report.applied:
        for key in ("method", "level", "ranks", "layer_speedup", "gain_ms", "sensitivity_rel_l2", "tried"):
            assert key in entry, key
        assert entry["layer_speedup"] >= 1.1
    for entry in report.skipped:
        assert entry["reason"]
    steps = figures["steps"]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    assert any("metric" in s and s["phase"] == "search" for s in steps)
    assert any("latency_ms" in s for s in steps)
    pareto = figures["pareto"]
    assert pareto and all({"setting", "speedup", "metric", "pareto", "measured"} <= set(r) for r in pareto)
    assert any(r["pareto"] for r in pareto)
    assert figures["speedup"] > 1 and figures["seconds_by_phase"]
    assert figures["pipeline"] and all(spec.split(":")[0] in ("tucker", "spatial") for spec in figures["pipeline"])


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_saved_config_reproduces_the_same_graph(model, tmp_path, quantize):
    evaluator = FakeEvaluator(model, sensitivity={"conv1": 0.0005, "conv2": 0.0004, "conv3": 0.0012})
    path = tmp_path / "found.yaml"
    proto, report = run_auto(model, evaluator, context={"save_config": str(path)},
                             methods=("tucker", "spatial", "cp"), quantize=quantize)
    assert report.modified and report.figures["saved_config"] == str(path)
    text = path.read_text()
    assert text.startswith("# written by onnxopt auto")
    specs = load_config(path)
    assert [s.name for s in specs] == [s.split(":")[0] for s in report.figures["pipeline"]]
    again, _ = api.optimize(model, config=str(path), context=PassContext(calibration=calibration(model)))
    assert [(n.name, n.op_type) for n in again.graph.node] == [(n.name, n.op_type) for n in proto.graph.node]
    mine = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    theirs = {t.name: onnx.numpy_helper.to_array(t) for t in again.graph.initializer}
    assert mine.keys() == theirs.keys()
    for name, array in mine.items():
        assert array.dtype == theirs[name].dtype and (array == theirs[name]).all(), name


def test_no_config_is_written_when_the_original_is_kept(model, tmp_path):
    evaluator = FakeEvaluator(model, sensitivity=dict.fromkeys(CONVS, 0.1))
    path = tmp_path / "found.yaml"
    _, report = run_auto(model, evaluator, context={"save_config": str(path)}, methods=("tucker",))
    assert not report.modified and not path.exists()


def test_cache_makes_a_rerun_fast_and_identical(model, tmp_path):
    options = dict(cache=True, cache_dir=str(tmp_path / "cache"), methods=("tucker", "spatial"))
    sens = {"conv1": 0.0005, "conv2": 0.0004, "conv3": 0.0012}
    first = FakeEvaluator(model, sensitivity=sens)
    proto1, report1 = run_auto(model, first, **options)
    assert (tmp_path / "cache" / "latency.json").exists()
    second = FakeEvaluator(model, sensitivity=sens)
    proto2, report2 = run_auto(model, second, **options)
    assert second.calls["latency"] == 0
    assert second.calls["score"] == 1  # only the holdout check of the final answer
    assert report2.figures["cache"]["hits"] > 0
    assert report2.figures["pipeline"] == report1.figures["pipeline"]
    assert node_names(proto1) == node_names(proto2)


def test_other_data_invalidates_sensitivities_but_not_latencies(model, tmp_path):
    options = dict(cache=True, cache_dir=str(tmp_path / "cache"), methods=("tucker",))
    sens = {"conv1": 0.0005, "conv2": 0.0004, "conv3": 0.0012}
    run_auto(model, FakeEvaluator(model, sensitivity=sens), **options)
    other = FakeEvaluator(model, sensitivity=sens, data_fingerprint="other-data")
    run_auto(model, other, **options)
    assert other.calls["latency"] == 0 and other.calls["score"] > 1


def test_layers_the_search_cannot_handle_are_skipped_with_a_reason():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tests.helpers import make_model

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((32, 1, 3, 3)).astype(np.float32), "dw.weight")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 32, 3, 3)).astype(np.float32), "dyn.weight")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "dw.weight"], ["y"], name="dw", group=32, pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["y", "dyn.weight"], ["z"], name="dyn", pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, "h", "w"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w, w2])
    model = make_model(graph, opset=13)
    evaluator = FakeEvaluator(model)
    _, report = run_auto(model, evaluator)
    reasons = skipped(report)
    assert "group=32" in reasons["dw"]
    assert "input shape unknown" in reasons["dyn"]
    assert not report.modified
