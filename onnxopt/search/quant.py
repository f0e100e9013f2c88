"""The quantization baseline (``quantize=int8|fp16``): the quantization pass alone, with its defaults.

Calibrated and scored on the search split. If it misses the budget less the margin, ``int8``
first keeps the AUTO_KEEP_FLOAT activations whose rounding costs most in float (its measured
``keep_float``); then the first and last weight layers, then 10 % and 25 % of the weight
layers at each end, are left in float (without keep_float), until it fits. A further attempt is made only when
the last one cost at most AUTO_BASELINE_SHARE of the time left (each attempt calibrates
afresh), and once a whole-split score is slow (over AUTO_SENSITIVITY_SECONDS), an attempt is
first screened on AUTO_SENSITIVITY_SAMPLES samples where failing there proves failing on
the whole split. When
it fits and runs faster than the original, layers are timed quantized and the budget is
shared (see :mod:`onnxopt.search.budget`).
"""

from __future__ import annotations

import glob
from typing import Any

from onnxopt import irutil
from onnxopt.errors import OnnxoptError
from onnxopt.search import measure
from onnxopt.search.budget import search_target, shared_target, subset_breaks_budget, within
from onnxopt.search.clock import OutOfTime
from onnxopt.search.measure import AUTO_SENSITIVITY_SAMPLES, AUTO_SENSITIVITY_SECONDS
from onnxopt.search.records import Final, QuantBaseline
from onnxopt.search.run import Run
from onnxopt.search.specs import quantization_spec

# a further quantization attempt (more layers excluded) only when the last one cost at most this share
# of the time left
AUTO_BASELINE_SHARE = 1 / 3
# int8's second attempt: up to this many activations kept float, chosen by measurement (keep_float)
AUTO_KEEP_FLOAT = 4


def quantize_baseline(run: Run) -> QuantBaseline:
    baseline = QuantBaseline()
    if run.options.quantize == "none":
        return baseline
    try:
        chosen, score = _fit_quantization(run, baseline)
    except OutOfTime:
        baseline.timed_out = True
        return baseline
    if chosen is None:
        return baseline
    baseline.chosen = chosen
    # time it against the original: layers are timed in the quantized domain only when it pays
    measure.time_finals(run, [chosen])
    original_s = run.costs.original_s
    seconds = chosen.latency_s
    speedup = original_s / seconds if seconds and original_s else None
    run.journal.step("quantization", f"{chosen.label}: whole-model latency",
                     latency_ms=seconds * 1e3 if seconds else None, speedup=speedup)
    if speedup is not None and speedup > 1.0:
        baseline.domain = True
        baseline.reduced = shared_target(run.facts, run.options.margin, score)
    else:
        measured = f"{speedup:.2f}×" if speedup else "did not run"
        run.journal.notes.append(f"{run.options.quantize} meets the budget but is not faster than the original "
                                 f"on {run.target} ({measured}): layer latencies are measured unquantized")
    return baseline


def _fit_quantization(run: Run, baseline: QuantBaseline):
    """Quantization attempts, fewer layers quantized each time, until one fits the budget less
    the margin: (that attempt's Final, its score) or (None, None). Each attempt meeting the
    budget itself joins ``baseline.contenders``; raises OutOfTime."""
    quantize = run.options.quantize
    weight_nodes = _weight_node_names(run)
    # (weight layers left in float, further options of the quantization pass)
    attempts: list[tuple[tuple[str, ...], dict]] = [((), {})]
    if quantize == "int8":
        attempts.append(((), {"keep_float": AUTO_KEEP_FLOAT}))
    if len(weight_nodes) >= 2:
        attempts.append(((weight_nodes[0], weight_nodes[-1]), {}))
        for share in (0.1, 0.25):
            k = max(2, int(round(len(weight_nodes) * share)))
            ends = tuple(dict.fromkeys(weight_nodes[:k] + weight_nodes[-k:]))
            if ends != attempts[-1][0]:
                attempts.append((ends, {}))
    attempt_s = 0.0  # what the last attempt cost (calibration, scores)
    stopped = False
    for index, (names, extra) in enumerate(attempts):
        if index > 0:
            run.clock.check("quantization baseline")
            spare = run.clock.spare()
            if attempt_s > AUTO_BASELINE_SHARE * spare:
                run.journal.notes.append(
                    f"{quantize}: stopped excluding layers after {index} attempt(s): one more "
                    f"would take about {attempt_s:.0f}s, over {AUTO_BASELINE_SHARE:.0%} of the {spare:.0f}s "
                    "left for the search")
                stopped = True
                break
        exclude = tuple(glob.escape(n) for n in names)
        specs = [quantization_spec(quantize, exclude, extra)]
        label = quantize + (f" excluding {len(names)} layers" if names else
                            f" keeping up to {extra['keep_float']} activations float" if extra else " alone")
        run.progress(f"{label}: building and scoring")
        started = run.clock.now()
        built: dict[str, Any] = {}

        def make(specs=specs, built=built):
            if "proto" not in built:  # built once for the screen and the whole split
                proto, reports = measure.build(run, specs, run.quant_context)
                built["proto"], built["report"] = proto, reports[0]
            return built["proto"]

        result, proto = None, None
        screen = _screen_samples(run)  # from the first attempt on, the whole-split score's cost is known
        try:
            if screen:
                # scoring the whole split costs seconds per sample on large models: an attempt that
                # fails the budget on its first samples fails it on the whole split
                first, _ = measure.cached_score(run, measure.score_key(run, specs, "search", screen), make,
                                                limit=screen)
                report = built.get("report")
                if report is not None and report.skipped_reason:
                    result = first
                elif subset_breaks_budget(run.facts, first, screen):
                    run.journal.step("quantization", f"{label} (first {screen} samples)", first,
                                     excluded=list(names), note="breaks the budget: not scored on the whole split")
                    attempt_s = run.clock.now() - started
                    continue
            if result is None:
                result, proto = measure.cached_score(run, measure.score_key(run, specs, "search"), make)
        except OnnxoptError as exc:
            run.journal.step("quantization", label, note=f"failed: {exc}")
            run.journal.notes.append(f"{label}: failed ({exc})")
            break
        attempt_s = run.clock.now() - started
        proto = built.get("proto", proto)
        report = built.get("report")
        if report is not None and report.skipped_reason:
            run.journal.step("quantization", label, note=f"skipped: {report.skipped_reason}")
            run.journal.notes.append(f"{quantize} does not apply: {report.skipped_reason}")
            break
        if proto is not None:
            baseline.build_s = max(baseline.build_s, run.clock.now() - started)
        fits = within(run.facts, result, search_target(run.facts, run.options.margin))
        run.journal.step("quantization", label, result, excluded=list(names), within_margin=fits)
        if result.passed:  # within the budget: a contender of the final choice in any case
            baseline.contenders.append(Final(label, specs, [], proto=proto, search=result))
        if fits:
            baseline.excluded, baseline.options = exclude, dict(extra)
            return baseline.contenders[-1], result
    run.journal.notes.append(f"{quantize} breaks the budget" + (
        " in the attempts made" if stopped else " even with the first/last layers excluded") +
        ": decomposition is searched alone")
    return None, None


def _screen_samples(run: Run) -> int | None:
    """Samples to screen quantization attempts on before scoring the whole search split:
    AUTO_SENSITIVITY_SAMPLES where a whole-split score would take over
    AUTO_SENSITIVITY_SECONDS and failing on a subset proves failing on the whole split
    (worst-sample cosine, top-1 flips); else None."""
    if not run.can_limit or getattr(run.evaluator, "metric", "cosine_min") not in ("cosine_min", "top1_agreement"):
        return None
    samples = run.facts.search_samples or 0
    if samples < 2 * AUTO_SENSITIVITY_SAMPLES:
        return None
    estimate = run.costs.full_score_s or 1.3 * (run.costs.original_s or 0.0) * samples
    return AUTO_SENSITIVITY_SAMPLES if estimate >= AUTO_SENSITIVITY_SECONDS else None


def _weight_node_names(run: Run) -> list[str]:
    names = []
    for node in run.model.graph:
        if node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose") and node.name:
            if len(node.inputs) > 1 and irutil.is_constant(node.inputs[1]):
                names.append(node.name)
    return names
