"""Per-layer sensitivity: the whole model with one layer alone decomposed, scored on the search split.

For the (at most ``per_layer``) best time-saving candidates of each layer: the fastest, the
safest level of its method, then other methods. Scored on the whole search split when that
is cheap (under AUTO_SENSITIVITY_SECONDS a score), else on its first AUTO_SENSITIVITY_SAMPLES
samples (``sensitivity_samples``); biggest gains first, so that a short time budget measures
what matters most. A candidate that alone breaks the decomposition's goal (the budget less
the margin, or its share) is rejected; for agreement on a subset: more flips there than the
whole split allows. Each layer then keeps its passing candidates, by gain per sensitivity.
"""

from __future__ import annotations

import math

from onnxopt.errors import OnnxoptError
from onnxopt.passbase import CandidateScore
from onnxopt.search import measure
from onnxopt.search.budget import within
from onnxopt.search.cache import digest
from onnxopt.search.clock import OutOfTime
from onnxopt.search.measure import AUTO_SENSITIVITY_SAMPLES, AUTO_SENSITIVITY_SECONDS
from onnxopt.search.records import Candidate, Layer, QuantBaseline
from onnxopt.search.run import Run
from onnxopt.search.specs import decomposition_specs


def sensitivity_samples(run: Run) -> tuple[int | None, int | None]:
    """(first samples each sensitivity is scored on, None for the whole split; the samples that makes)."""
    samples = run.options.sensitivity_samples
    if samples is None:  # auto: the whole split when that is cheap, else the first 16 samples
        estimate = run.costs.full_score_s or 1.3 * (run.costs.original_s or 0.0) * (run.facts.search_samples or 100)
        samples = 0 if estimate < AUTO_SENSITIVITY_SECONDS else AUTO_SENSITIVITY_SAMPLES
    samples = samples or None
    if samples is not None and not run.can_limit:
        run.journal.notes.append("the evaluator scores whole splits only: sensitivities use the whole search split")
        samples = None
    if samples is not None and run.facts.search_samples is not None:
        samples = min(samples, run.facts.search_samples)
    return samples, samples or run.facts.search_samples


def measure_sensitivity(run: Run, layers: list[Layer], baseline: QuantBaseline, samples: int | None,
                        used: int | None) -> None:
    """Score the chosen candidates of each layer alone (``candidate.score``), reject those that
    break the goal, and settle each layer's options; raises OutOfTime after settling."""
    work = []
    for layer in layers:
        if layer.reason:
            continue
        saving = sorted((c for c in layer.candidates if c.reason is None), key=lambda c: -c.gain_s)
        chosen: list[Candidate] = []
        if saving:
            chosen.append(saving[0])
            safest = max((c for c in saving if c.method == saving[0].method), key=lambda c: c.level)
            for other in [safest, *saving]:
                if len(chosen) >= run.options.per_layer:
                    break
                if other not in chosen and (other is safest or other.method not in {c.method for c in chosen}):
                    chosen.append(other)
        for candidate in saving:
            if candidate not in chosen:
                candidate.reason = f"not scored: {run.options.per_layer} faster candidates of this layer were"
        work.extend(chosen)
    # biggest gains first, so a short time budget measures what matters most
    work.sort(key=lambda c: -c.gain_s)
    for index, candidate in enumerate(work):
        run.progress(f"sensitivity of {candidate.layer.name} {candidate.label}", index, len(work))
        try:
            run.clock.check("per-layer sensitivity")
        except OutOfTime:
            for rest in work[index:]:
                rest.reason = rest.reason or "not scored: the time budget ran out"
            settle_layers(layers)
            raise
        _score_alone(run, candidate, baseline, samples, used)
    settle_layers(layers)


def _score_alone(run: Run, candidate: Candidate, baseline: QuantBaseline, samples: int | None,
                 used: int | None) -> None:
    layer = candidate.layer
    key = None
    fingerprint = getattr(run.evaluator, "data_fingerprint", None)
    if fingerprint and run.options.cache:
        key = digest("sensitivity", run.model_hash, fingerprint, layer.key, candidate.method, candidate.level,
                     run.rounding, run.options.refit, samples)
    hit = run.cache.get("model", key)
    if hit is not None:
        candidate.score = hit
    else:
        try:
            proto, _ = measure.build(run, decomposition_specs(run.options, run.rounding, [candidate]))
        except OnnxoptError as exc:
            candidate.reason = f"decomposition failed in the model: {exc}"
            return
        result = measure.score(run, proto, "search", samples)
        candidate.score = {
            "value": result.value if math.isfinite(result.value) else -1e30,
            "rel_l2": result.details.get("rel_l2_error"), "passed": result.passed,
            "failures": result.failures[:2], "metric": result.metric,
            "samples": (result.details.get("split") or {}).get("samples", used),
            "threshold": result.details.get("threshold"),
        }
        run.cache.put("model", key, candidate.score)
    score = candidate.score
    result = CandidateScore(score["passed"], score["value"], score.get("metric", ""), list(score.get("failures", [])),
                            {"threshold": score.get("threshold", run.facts.threshold)})
    run.facts.learn(result, "search", samples)  # a cached score teaches what a measured one did
    if score.get("rel_l2") is None:
        candidate.reason = "alone: " + (score["failures"][0] if score["failures"] else "no output error measured")
    elif not within(run.facts, result, run.goal(baseline), samples=int(score.get("samples") or used or 0)):
        share = "its share of the budget" if baseline.reduced is not None else "the budget less the margin"
        candidate.reason = f"alone it breaks {share} ({result.metric} {result.value:.4g}" + (
            f" on {score.get('samples')} samples)" if samples else ")")


def settle_layers(layers: list[Layer]) -> None:
    """Each layer's options: its scored candidates still in, best gain per sensitivity first."""
    for layer in layers:
        if layer.reason:
            continue
        layer.options = sorted((c for c in layer.candidates if c.reason is None and c.score is not None),
                               key=lambda c: -c.key)
        if not layer.options:
            scored = [c for c in layer.candidates if c.score is not None or
                      (c.reason or "").startswith("not scored")]
            layer.reason = "every time-saving candidate was rejected: " + "; ".join(
                f"{c.label} {c.reason}" for c in scored) if scored else "no candidate left"
