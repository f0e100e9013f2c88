"""The search's report: one entry per layer, the finalists, the pareto rows, the time table.

Each candidate layer is applied (with the option the result uses) or skipped with why, and
lists every (method, level) tried with its measured layer speedup, gain and sensitivity.
The figures say what the result is and its speedup (against the original and the
quantization alone), each final candidate's metric before and after recovery, the steps in order, the pareto rows (a row is flagged when no other
row of the same kind, measured or estimated, beats it on both speedup and metric), where
the time went, and the cache's use. The saved pipeline config reproduces the result.
"""

from __future__ import annotations

import math
from typing import Any

from onnxopt.report import PassReport
from onnxopt.search.budget import budget_text
from onnxopt.search.final import FinalChoice
from onnxopt.search.layers import LayerSet
from onnxopt.search.records import Candidate, Final, QuantBaseline, round_figure
from onnxopt.search.run import Run


def write_report(run: Run, report: PassReport, layer_set: LayerSet, baseline: QuantBaseline,
                 accepted: list[Candidate], choice: FinalChoice) -> None:
    chosen = choice.chosen
    original_s = run.costs.original_s
    in_result = {id(c) for c in chosen.selection} if chosen else set()
    for layer in [*layer_set.layers, *layer_set.rest]:
        tried = [c.summary() for c in layer.candidates]
        picked = next((c for c in layer.candidates if id(c) in in_result), None)
        if picked is not None:
            report.apply(layer.name, op=layer.op, shape=layer.describe(), **picked.summary(), tried=tried)
            continue
        reason = layer.reason
        if reason is None:
            if any(c in accepted for c in layer.candidates):
                reason = ("chosen by the search, but the final result " +
                          (f"is '{chosen.label}'" if chosen else "is the original") + _why_not(choice.finals))
            elif not layer.candidates:
                reason = "not measured: the time budget ran out"
            else:
                reason = "not chosen by the search"
        report.skip(layer.name, reason, op=layer.op, shape=layer.describe(), tried=tried)
    figures = report.figures
    figures["final_candidates"] = [
        {"label": f.label, "speedup": round_figure(original_s / f.latency_s, 3) if f.latency_s and original_s
         else None,
         "search_metric": round_figure(f.search.value) if f.search else (1.0 if f.label == "original" else None),
         "holdout_metric": round_figure(f.holdout.value) if f.holdout else None,
         "passed_search": f.search.passed if f.search else f.label == "original",
         "passed_holdout": f.holdout.passed if f.holdout else None,
         "reason": f.reason, **({"recovery": f.recovery} if f.recovery else {})} for f in choice.finals]
    figures["result"] = chosen.label if chosen else "original (unchanged)"
    if chosen is not None and chosen.latency_s and original_s:
        figures["speedup"] = round(original_s / chosen.latency_s, 3)
        # against the plain quantization when it met the budget, else the one searched under
        alone = [f for f in baseline.contenders if f.label.endswith(" alone") and f.latency_s]
        quantized = alone[0] if alone else baseline.chosen
        if quantized is not None and quantized.latency_s:
            figures[f"speedup_vs_{run.options.quantize}"] = round(quantized.latency_s / chosen.latency_s, 3)
    if chosen is not None and chosen.holdout is not None:
        figures["holdout_metric"] = round_figure(chosen.holdout.value)
        figures["holdout_split"] = (chosen.holdout.details.get("split") or {})
    if chosen is None:
        figures["explanation"] = _explain_nothing(run, layer_set, accepted, choice.finals)
    figures["pipeline"] = [str(s) for s in chosen.specs] if chosen else []
    figures["steps"] = run.journal.steps
    figures["pareto"] = pareto(run.journal.pareto)
    figures["seconds_by_phase"], figures["phases"] = run.clock.phase_table()
    figures["seconds"] = round(run.clock.elapsed(), 1)
    deadline = run.clock.deadline
    figures["time_budget"] = None if deadline is None else round(deadline - run.clock.start, 1)
    if run.clock.stopped:
        figures["stopped"] = run.clock.stopped
        report.warn(run.clock.stopped + ": finished with the best model verified by then")
    figures["cache"] = {"folder": str(run.cache.folder) if run.cache.folder else None,
                        "hits": run.cache.hits, "misses": run.cache.misses}
    figures["rank_rounding"] = run.rounding
    figures["latency_domain"] = run.options.quantize if baseline.domain else "float"
    if run.journal.notes:
        figures["notes"] = run.journal.notes
    if run.options.quantize == "fp16" and run.target == "cpu":
        report.warn("fp16 targets GPUs: on a CPU it usually runs slower (onnxruntime's CPU provider has "
                    "few float16 kernels)")


def _why_not(finals: list[Final]) -> str:
    parts = [f"{f.label}: {f.reason}" for f in {f.label: f for f in finals}.values()
             if f.label.startswith("decomposition") and f.reason]
    return (": " + "; ".join(parts)) if parts else ""


def _explain_nothing(run: Run, layer_set: LayerSet, accepted: list[Candidate], finals: list[Final]) -> str:
    lines = [f"{f.label}: {f.reason}" for f in finals if f.label != "original" and f.reason]
    layers = layer_set.layers
    threshold = run.options.min_layer_speedup
    layers_saving = sum(1 for layer in layers if any(c.speedup and c.speedup >= threshold for c in layer.candidates))
    head = (f"kept the original: of {len(layers)} candidate layers, {layers_saving} had a decomposition "
            f"that ran faster on {run.target}")
    if not accepted:
        head += "; none fit the budget" if layers_saving else f"; decomposition does not pay on this model on {run.target}"
    return head + ("; " + "; ".join(lines) if lines else "")


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of (setting, speedup, metric), each flagged when no other row beats it on both."""
    unique: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        unique.setdefault((row["setting"], row["layers"], row["measured"]), dict(row))
    out = list(unique.values())

    def number(value: Any) -> float:
        return value if isinstance(value, int | float) else -math.inf

    for row in out:  # measured and estimated speedups are not compared with each other
        row["pareto"] = row["passed"] and not any(
            other is not row and other["passed"] and other["measured"] == row["measured"]
            and number(other["speedup"]) >= number(row["speedup"]) and number(other["metric"]) >= number(row["metric"])
            and (number(other["speedup"]) > number(row["speedup"]) or number(other["metric"]) > number(row["metric"]))
            for other in out)
    out.sort(key=lambda r: -number(r["speedup"]))
    return out


def save_config(run: Run, report: PassReport, chosen: Final, path: str) -> None:
    """Write the plain pipeline that rebuilds ``chosen`` from auto's input model (YAML)."""
    import yaml

    from onnxopt.io import write_text_atomic

    entries = []
    for spec in chosen.specs:
        entry: dict[str, Any] = {"name": spec.name}
        entry.update({k: list(v) if isinstance(v, tuple) else v for k, v in spec.options.items()})
        entries.append(entry)
    header = (f"# written by onnxopt auto: '{chosen.label}', {report.figures.get('speedup', '?')}× on "
              f"{run.target}, budget {budget_text(run.evaluator)}\n"
              "# reproduces what auto did from its input model (passes before auto in the pipeline are "
              "not included)\n")
    text = header + yaml.safe_dump({"passes": entries}, sort_keys=False, allow_unicode=True)
    write_text_atomic(path, text)
    report.figures["saved_config"] = str(path)
