"""``auto`` end to end with the real SplitEvaluator on the sample digits CNN (small, fast).

The search split is the first half of ``samples/digits_calib.npz``, the holdout the other
half (``api.prepare_context`` splits ``--data``). No timing assertions: the machine is
shared; the tests check that whatever the measurements say, the answer meets the budget
on the holdout split, the report explains itself, and the saved config reproduces it.
"""

from __future__ import annotations

import onnx
import pytest

import onnxopt.passes.auto  # noqa: F401  (registers "auto")
from onnxopt import api
from onnxopt.validate.tolerances import Tolerances
from tests.helpers import SAMPLES, SHARED_IMAGES, SHARED_MODELS

DIGITS = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits_calib.npz"

pytestmark = pytest.mark.skipif(not DIGITS.exists() or not CALIB.exists(), reason="needs samples/digits_*")


def run(spec: str, tmp_path, tolerances=Tolerances(min_agreement=0.97), save: bool = True):  # noqa: B008
    original = onnx.load(str(DIGITS))
    data = api.data_source(original, data=str(CALIB))
    config = tmp_path / "found.yaml" if save else None
    context, evaluation, notes = api.prepare_context(
        original, spec, data, has_data=True, calibration_samples=32, tolerances=tolerances, save_config=config,
    )
    assert "disjoint" in " ".join(notes)
    gate = api.gate_settings(spec, evaluation, tolerances=tolerances)
    optimized, report = api.optimize(original, spec, context=context, validation=gate)
    return original, optimized, report, context, config


def test_auto_on_the_digits_cnn(tmp_path):
    spec = (f"auto:cache_dir={tmp_path / 'cache'}:min_macs=1e5:min_pointwise_channels=16:levels=0.9|0.95"
            ":recover_steps=20")  # with --data and torch, the finals that decompose are recovered
    original, optimized, report, context, config = run(spec, tmp_path)
    auto = report.passes[0]
    figures = auto.figures
    assert figures["splits"]["search"]["samples"] == 32 and figures["splits"]["holdout"]["samples"] == 32
    assert figures["steps"][0]["phase"] == "original"
    for entry in auto.skipped:
        assert entry["reason"]
    # the validation gate on the evaluation data (the holdout split) agrees with the search
    assert report.validation["passed"], report.validation["failures"]
    if auto.modified:
        assert figures["holdout_metric"] >= 0.97
        assert config.exists()
        again, _ = api.optimize(original, config=str(config), context=context)
        assert [(n.name, n.op_type) for n in again.graph.node] == [(n.name, n.op_type) for n in optimized.graph.node]
    else:
        assert figures["explanation"]
        assert [n.name for n in optimized.graph.node] == [n.name for n in original.graph.node]
    # a second run is served from the cache
    _, _, second, _, _ = run(spec, tmp_path, save=False)
    assert second.passes[0].figures["cache"]["hits"] > 0
    assert second.passes[0].figures["pipeline"] == figures["pipeline"]


def test_auto_with_int8_is_never_slower_than_int8_alone(tmp_path):
    spec = (f"auto:cache_dir={tmp_path / 'cache'}:quantize=int8:methods=tucker|cp:levels=0.9"
            ":min_macs=1e5:min_pointwise_channels=16:recover=false")
    _, optimized, report, _, _ = run(spec, tmp_path, save=False)
    figures = report.passes[0].figures
    # the quantization baseline: "int8 alone", or "int8 excluding N layers" where int8 alone missed the budget
    baselines = [f for f in figures["final_candidates"] if f["label"].startswith("int8")]
    assert len(baselines) == 1, [f["label"] for f in figures["final_candidates"]]
    assert report.validation["passed"], report.validation["failures"]
    int8 = baselines[0]
    if int8["passed_search"] and int8["passed_holdout"] is not False and figures["result"] != int8["label"]:
        # int8 alone met the budget: anything else is chosen only when measured faster by min_speedup
        assert figures["speedup_vs_int8"] >= 1.02


def test_auto_through_the_cli(tmp_path):
    """In-process, so that "auto" is registered even where passes/__init__.py does not import it yet."""
    import json

    from onnxopt.cli.main import main

    out, config, report_path = tmp_path / "out.onnx", tmp_path / "found.yaml", tmp_path / "report.json"
    with pytest.raises(SystemExit) as exit_info:
        main([
            "optimize", str(DIGITS), "--passes", f"auto:cache_dir={tmp_path / 'cache'}:methods=cp:levels=0.9",
            "--data", str(CALIB), "--calibration-samples", "32", "--min-agreement", "0.97", "--target", "cpu",
            "--save-config", str(config), "--time-budget", "120", "-o", str(out), "--report", str(report_path), "-q",
        ])
    assert exit_info.value.code == 0
    assert out.exists()
    report = json.loads(report_path.read_text())
    auto = report["passes"][0]
    assert auto["name"] == "auto" and auto["figures"]["splits"]["search"]["samples"] == 32
    assert auto["figures"]["time_budget"] == 120
    assert config.exists() == auto["modified"]
    assert report["validation"]["passed"]


@pytest.mark.skipif(not (SHARED_MODELS / "resnet20_cifar10.onnx").exists() or not (SHARED_IMAGES / "imagenet").exists(),
                    reason="needs ../shared/models/resnet20_cifar10.onnx and ../shared/images/imagenet")
def test_auto_declines_decomposition_on_a_small_resnet(tmp_path):
    """At 32×32 most decompositions lose on a CPU: they must be declined by measurement."""
    original = onnx.load(str(SHARED_MODELS / "resnet20_cifar10.onnx"))
    data = api.data_source(original, data=str(SHARED_IMAGES / "imagenet"), preprocess="mean=123.675,116.28,103.53 "
                           "std=58.395,57.12,57.375 resize=32 crop=32", samples=40)
    spec = f"auto:cache_dir={tmp_path / 'cache'}:methods=tucker|cp:levels=0.9:time_budget=50:recover=false"
    context, evaluation, _ = api.prepare_context(original, spec, data, has_data=True, calibration_samples=20,
                                                 tolerances=Tolerances(min_agreement=0.9))
    optimized, report = api.optimize(original, spec, context=context)
    auto = report.passes[0]
    reasons = [entry["reason"] for entry in auto.skipped]
    assert any("saves time" in r or "budget" in r or "time budget" in r for r in reasons)
    result = api.optimize(optimized, "simplify")[0]  # whatever it is, it is a valid model
    assert result.graph.node
