"""The final choice: the fastest whole model that meets the budget on both splits.

Candidates: the original, the quantization baselines that met the budget, the selected
decomposition, and the decomposition followed by the same quantization (halved, most
sensitive layers out, when that pair breaks the budget); those that decompose are then
recovered where the search recovers (:mod:`.recovery`). Those meeting the budget itself on
the search split are timed together with the original, interleaved. From the fastest: a
lossy candidate must beat the next-slower passing one by ``min_speedup`` (so noise never
makes the result slower than the quantization alone) and then pass the holdout split. If
nothing does, the original is kept unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from onnxopt.errors import OnnxoptError
from onnxopt.search import measure
from onnxopt.search.budget import search_target, within
from onnxopt.search.clock import OutOfTime
from onnxopt.search.records import Candidate, Final, QuantBaseline, round_figure
from onnxopt.search.recovery import recover_finals
from onnxopt.search.run import Run
from onnxopt.search.specs import decomposition_specs, quantization_spec


@dataclass
class FinalChoice:
    finals: list[Final]  # every whole-model candidate, the original first
    chosen: Final | None  # the winner; None: the original is kept


def choose(run: Run, accepted: list[Candidate], baseline: QuantBaseline) -> FinalChoice:
    original_s = run.costs.original_s
    finals: list[Final] = [Final("original", [], [], proto=run.base, latency_s=original_s)]
    finals.extend(baseline.contenders)
    if accepted:
        specs = decomposition_specs(run.options, run.rounding, accepted)
        decomposition = Final("decomposition", specs, list(accepted))
        decomposition.search, decomposition.proto = measure.cached_score(
            run, measure.score_key(run, specs, "search"), lambda: measure.build(run, specs)[0])
        finals.append(decomposition)
        if baseline.domain and baseline.chosen is not None:
            finals.extend(_decompose_and_quantize(run, list(accepted), baseline))
    recover_finals(run, finals)
    contenders = []
    for final in finals[1:]:
        # the margin steered the search; the final choice holds candidates to the budget itself
        if final.search is None or not final.search.passed:
            detail = final.search.failures[0] if final.search is not None and final.search.failures else ""
            final.reason = final.reason or "breaks the budget on the search split" + (f" ({detail})" if detail else "")
        else:
            contenders.append(final)
    run.progress("timing the final candidates")
    with run.clock.phase("final timing"):
        measure.time_finals(run, contenders)
    for final in contenders:
        if final.latency_s:
            speedup = round_figure(original_s / final.latency_s, 3)
            run.journal.pareto.append({"setting": final.label, "layers": len(final.selection),
                                       "metric": round_figure(final.search.value), "passed": True,
                                       "speedup": speedup, "measured": True})
            recovery = final.recovery or {}
            if recovery.get("recovered"):  # the same graph before recovery: the same latency
                run.journal.pareto.append({
                    "setting": recovery["label_before"], "layers": len(final.selection),
                    "metric": recovery["metric_before"], "passed": recovery["passed_before"],
                    "speedup": speedup, "measured": True})
            run.journal.step("final", f"{final.label}: whole-model latency", final.search,
                             latency_ms=final.latency_s * 1e3, speedup=original_s / final.latency_s)
    passing = [finals[0], *(f for f in contenders if f.latency_s)]
    passing.sort(key=lambda f: f.latency_s if f.latency_s else math.inf)
    return FinalChoice(finals, _fastest_verified(run, passing))


def _fastest_verified(run: Run, passing: list[Final]) -> Final | None:
    """From the fastest: the first lossy candidate that beats the next one by min_speedup and
    passes the holdout split; None once the original is reached."""
    original_s = run.costs.original_s
    min_speedup = run.options.min_speedup
    for index, final in enumerate(passing):
        if final.label == "original":
            for slower in passing[index + 1:]:
                slower.reason = slower.reason or (
                    f"not faster than the original ({original_s / slower.latency_s:.3f}×)")
            return None
        slower = passing[index + 1] if index + 1 < len(passing) else None
        if slower is not None and slower.latency_s and final.latency_s * min_speedup > slower.latency_s:
            final.reason = (f"not enough faster than {slower.label} "
                            f"({slower.latency_s / final.latency_s:.3f}× < min_speedup {min_speedup:g})")
            continue
        if final.proto is None:
            try:
                final.proto = measure.build(run, final.specs, final.context or run.quant_context)[0]
            except OnnxoptError as exc:
                final.reason = f"could not be built: {exc}"
                continue
        run.progress(f"verifying {final.label} on the holdout split")
        holdout = measure.score(run, final.proto, "holdout")
        final.holdout = holdout
        run.journal.step("final", f"{final.label} on the holdout split", holdout,
                         speedup=original_s / final.latency_s if final.latency_s else None)
        if holdout.passed:
            return final
        final.reason = "breaks the budget on the holdout split: " + (holdout.failures[0] if holdout.failures else "")
    return None


def _decompose_and_quantize(run: Run, accepted: list[Candidate], baseline: QuantBaseline) -> list[Final]:
    """Decomposition followed by the quantization; halve the decomposition (most sensitive
    layers out) when the pair breaks the budget."""
    quantize = run.options.quantize
    out = []
    selection = list(accepted)
    attempt = 0
    while selection:
        attempt += 1
        excluded = list(baseline.excluded)
        excluded += [f"{c.layer.escaped}/*" for c in selection if baseline.excludes(c.layer)]
        specs = [*decomposition_specs(run.options, run.rounding, selection), quantization_spec(quantize, tuple(excluded), baseline.options)]
        label = f"decomposition ({len(selection)} layers) + {quantize}"
        final = Final(label, specs, list(selection))
        run.progress(f"building {label}")
        try:
            if attempt > 1:
                run.clock.check("decomposition + quantization")
            result, proto = measure.cached_score(run, measure.score_key(run, specs, "search"),
                                                 lambda specs=specs: measure.build(run, specs, run.quant_context)[0])
        except OutOfTime:
            break
        except OnnxoptError as exc:
            final.reason = f"failed: {exc}"
            out.append(final)
            break
        final.search, final.proto = result, proto
        run.journal.step("final", label, result, estimated_speedup=None)
        out.append(final)
        if within(run.facts, result, search_target(run.facts, run.options.margin)) or attempt >= 2:
            break
        # keep the half with the best gain per sensitivity
        selection = sorted(selection, key=lambda c: -c.key)[: len(selection) // 2]
    return out
