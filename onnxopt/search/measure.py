"""Building, scoring and timing models for the search, through the caller's evaluator.

Every build runs plain passes on a copy of the input model; every score and timing goes to
``context.evaluator`` and is counted in the clock's phase table. Scores are cached by model
hash, data fingerprint, split, sample limit, CPU and the specs; latencies by what changes
them (target, threads, onnxruntime version, CPU, statistic, rounds). Whole-model timings
use ``latency_runs`` rounds, fewer for a slow model: as many as fit in WHOLE_MODEL_SECONDS
(at least WHOLE_MODEL_MIN_RUNS), decided by a LATENCY_PROBE_RUNS probe of the original.
The final candidates are timed together with the original, interleaved, twice, each
model's fastest run kept, and reported scaled by the original's time (the ratio is stable).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import onnx_ir as ir

from onnxopt.errors import OnnxoptError
from onnxopt.passbase import CandidateScore, PassContext
from onnxopt.registry import PassSpec, build_passes
from onnxopt.runtime import cpu as hostcpu
from onnxopt.search.cache import digest, jsonable
from onnxopt.search.records import Final
from onnxopt.search.run import Run

WHOLE_MODEL_SECONDS = 4.0
WHOLE_MODEL_MIN_RUNS = 5
LATENCY_PROBE_RUNS = 3
AUTO_SENSITIVITY_SECONDS = 3.0  # a whole-split score cheaper than this: sensitivities on the whole split
AUTO_SENSITIVITY_SAMPLES = 16  # ... else sensitivities and quantization screens on this many first samples


def build(run: Run, specs: list[PassSpec], context: PassContext | None = None, base=None):
    """Run plain passes on a copy of ``base`` (default: the input model): (proto, reports)."""
    from onnxopt.pipeline import run_passes

    started = run.clock.now()
    try:
        model = ir.from_proto(base if base is not None else run.base)
        passes = build_passes(specs, context if context is not None else run.build_context)
        result, reports = run_passes(model, passes)
        return ir.to_proto(result), reports
    finally:
        run.clock.count("builds", 1, run.clock.now() - started)


def score(run: Run, proto, split: str = "search", limit: int | None = None) -> CandidateScore:
    start = run.clock.now()
    with run.clock.phase("holdout verification") if split == "holdout" else contextlib.nullcontext():
        if limit is not None and run.can_limit:
            result = run.evaluator.score(proto, split, limit=limit)
        else:
            result = run.evaluator.score(proto, split)
        run.clock.count("scores", 1, run.clock.now() - start)
    if limit is None and split == "search":
        run.costs.full_score_s = max(run.costs.full_score_s, run.clock.now() - start)
    run.facts.learn(result, split, limit)
    return result


def latency(run: Run, protos: list, runs: int | None = None) -> list[float]:
    runs = runs or run.options.latency_runs
    started = run.clock.now()
    try:
        keywords = {"statistic": "min"} if run.fastest_runs else {}
        return list(run.evaluator.latency(protos, runs, **keywords))
    finally:
        run.clock.count("models_timed", len(protos), run.clock.now() - started)


def cached_score(run: Run, key: str | None, make: Callable[[], Any], split: str = "search",
                 limit: int | None = None) -> tuple[CandidateScore, Any]:
    """A score from the cache or measured (``make()`` returns the proto): (score, proto or None)."""
    hit = run.cache.get("model", key)
    if hit is not None:
        result = CandidateScore(passed=hit["passed"], value=hit["value"], metric=hit["metric"],
                                failures=hit["failures"], details=hit["details"])
        run.facts.learn(result, split, limit)
        return result, None
    proto = make()
    result = score(run, proto, split, limit)
    run.cache.put("model", key, {
        "passed": result.passed, "value": result.value if math.isfinite(result.value) else -1e30,
        "metric": result.metric, "failures": result.failures,
        "details": {k: result.details.get(k) for k in ("split", "threshold", "rel_l2_error", "cosine_min",
                                                       "top1_agreement")},
    })
    return result, proto


def score_key(run: Run, specs: list[PassSpec], split: str, limit: int | None = None) -> str | None:
    fingerprint = getattr(run.evaluator, "data_fingerprint", None)
    if not fingerprint or not run.options.cache:
        return None
    # the CPU is part of the key: integer kernels differ between CPUs (u8×s8 saturates without VNNI)
    return digest("score", run.model_hash, fingerprint, split, limit, hostcpu.cpu_name(),
                  [(s.name, jsonable(s.options)) for s in specs])


def latency_env(run: Run) -> dict[str, Any]:
    """What a latency depends on besides the model: part of latency cache keys."""
    import onnxruntime

    return {"ort": onnxruntime.__version__, "cpu": hostcpu.cpu_name(), "threads": getattr(run.evaluator, "threads", None),
            "stat": "min" if run.fastest_runs else "median", "runs": run.options.latency_runs}


def whole_model_runs(latency_runs: int, seconds: float | None) -> int:
    """Rounds per whole-model timing: ``latency_runs``, fewer for a model so slow that they
    would take more than WHOLE_MODEL_SECONDS (at least WHOLE_MODEL_MIN_RUNS)."""
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return latency_runs
    return min(latency_runs, max(WHOLE_MODEL_MIN_RUNS, math.ceil(WHOLE_MODEL_SECONDS / seconds)))


def measure_original(run: Run) -> tuple[float, int]:
    """The original's latency and the rounds whole-model timings use from then on."""
    run.progress("timing the original")
    key = None
    if run.options.cache:
        key = digest("whole", run.model_hash, "original", run.target, latency_env(run))
    hit = run.cache.get("latency", key)
    if hit is not None:
        seconds = hit["s"]
    else:
        # a short probe first: a slow model gets fewer rounds in every whole-model timing
        seconds = latency(run, [run.base], LATENCY_PROBE_RUNS)[0]
        rounds = whole_model_runs(run.options.latency_runs, seconds)
        if rounds > LATENCY_PROBE_RUNS:
            again = latency(run, [run.base], rounds)[0]
            seconds = min(seconds, again) if run.fastest_runs else again
        run.cache.put("latency", key, {"s": seconds})
    return seconds, whole_model_runs(run.options.latency_runs, seconds)


def time_finals(run: Run, finals: list[Final]) -> None:
    """Whole-model latency of the given candidates (``latency_s``), measured together with
    the original in one interleaved measurement (ratios across separate measurements are
    far less stable on a shared machine), twice, keeping each model's fastest run. Cached
    as a group: a re-run with the same candidates reuses the figures."""
    original_s = run.costs.original_s
    key = None
    if run.options.cache:
        key = digest("whole", run.model_hash, [[(s.name, jsonable(s.options)) for s in f.specs] for f in finals],
                     run.target, latency_env(run))
    hit = run.cache.get("latency", key)
    if hit is not None and len(hit.get("s", [])) == len(finals):
        for final, seconds in zip(finals, hit["s"], strict=True):
            final.latency_s = seconds
            if seconds is None:
                final.reason = final.reason or "does not run"
        return
    ready = []
    for final in finals:
        if final.proto is None:
            try:
                final.proto = build(run, final.specs, final.context or run.quant_context)[0]
            except OnnxoptError as exc:
                final.reason = f"could not be built: {exc}"
                continue
        ready.append(final)
    if not ready:
        return
    protos = [run.base, *(final.proto for final in ready)]
    rounds = run.costs.whole_runs
    times = [min(a, b) for a, b in zip(latency(run, protos, rounds), latency(run, protos, rounds), strict=True)]
    for final, seconds in zip(ready, times[1:], strict=True):
        # scaled by the original's time in the same measurement: the ratio is what is stable
        final.latency_s = original_s * seconds / times[0] if original_s and times[0] else seconds
        if not math.isfinite(final.latency_s):
            final.reason = "does not run"
            final.latency_s = None
    run.cache.put("latency", key, {"s": [final.latency_s for final in finals]})
