"""The ``auto`` search, phase by phase: what each phase returns is what the next one reads.

layer shapes → original → quantization baseline → layer timing → layer sensitivity →
search → final candidates (recovery, final timing, holdout verification) → report. Every decision is
taken on the evaluator's *search* split; only the final answer is checked on the disjoint
*holdout* split. When the time budget runs out (less the reserve for finishing), the
remaining measuring phases are skipped and the search finishes with the best model
verified by then. The cache is saved whatever happens.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxopt.passbase import PassContext
from onnxopt.passes.auto import AutoOptions
from onnxopt.report import PassReport
from onnxopt.search import measure
from onnxopt.search.budget import BudgetFacts, budget_text
from onnxopt.search.cache import MeasurementCache, default_cache_dir, digest
from onnxopt.search.clock import Clock, Costs, OutOfTime
from onnxopt.search.final import FinalChoice, choose
from onnxopt.search.layers import LayerSet, enumerate_layers
from onnxopt.search.quant import quantize_baseline
from onnxopt.search.records import Candidate, QuantBaseline
from onnxopt.search.recovery import RECOVERY_SHARE, plan
from onnxopt.search.report import save_config, write_report
from onnxopt.search.run import Journal, Run
from onnxopt.search.select import select
from onnxopt.search.sensitivity import measure_sensitivity, sensitivity_samples
from onnxopt.search.timing import time_layers


def run_search(model: ir.Model, options: AutoOptions, context: PassContext, report: PassReport) -> ir.passes.PassResult:
    """Search ``model`` for the fastest variant within the evaluator's budget; fills ``report``."""
    run = _start(model, options, context)
    figures = report.figures
    figures["target"] = run.target
    figures["budget"] = budget_text(run.evaluator)
    figures["recovery"] = run.recovery_note
    splits = getattr(run.evaluator, "describe_splits", None)
    if callable(splits):
        described = splits()
        figures["splits"] = described
        run.facts.learn_splits(described)
    baseline = QuantBaseline()
    accepted: list[Candidate] = []
    try:
        with run.clock.phase("layer shapes"):
            layer_set = enumerate_layers(run)
        for name, reason, op in layer_set.skipped:
            report.skip(name, reason, op=op)
        if layer_set.shapes is not None:
            figures["layer_shapes"] = layer_set.shapes
        figures["candidate_layers"] = len(layer_set.layers)
        layers = layer_set.layers
        try:
            with run.clock.phase("original"):
                run.costs.original_s, run.costs.whole_runs = measure.measure_original(run)
                figures["whole_model_timing_runs"] = run.costs.whole_runs
                run.journal.step("original", "original model", latency_ms=run.costs.original_s * 1e3)
            with run.clock.phase("quantization baseline"):
                baseline = quantize_baseline(run)
            if baseline.timed_out:
                raise OutOfTime("quantization baseline")
            if baseline.domain:  # building the quantized final model is then part of finishing
                run.costs.quant_build_s = baseline.build_s
            with run.clock.phase("layer timing"):
                time_layers(run, layers, baseline)
            with run.clock.phase("layer sensitivity"):
                samples, used = sensitivity_samples(run)
                figures["sensitivity_samples"] = used
                measure_sensitivity(run, layers, baseline, samples, used)
            with run.clock.phase("search"):
                accepted = select(run, layers, baseline)
        except OutOfTime:
            pass  # finish with what was measured
        with run.clock.phase("final candidates"):
            choice = choose(run, accepted, baseline)
    finally:
        warning = run.cache.save()
        if warning:
            report.warn(warning)
    return _result(run, report, layer_set, baseline, accepted, choice)


def _start(model: ir.Model, options: AutoOptions, context: PassContext) -> Run:
    import onnx  # noqa: F401  (protobuf for the evaluator)

    evaluator = context.evaluator
    recover, recovery_note = plan(options, context)  # recover=true that cannot run fails before any work
    facts = BudgetFacts()
    costs = Costs(whole_runs=options.latency_runs)
    budget_s = options.time_budget if options.time_budget is not None else context.time_budget
    clock = Clock(budget_s, costs, facts)
    if recover and budget_s is not None:
        clock.recovery_s = RECOVERY_SHARE * budget_s
    base = ir.to_proto(model)
    model_hash = digest(base.SerializeToString())
    folder = None
    if options.cache:
        folder = Path(options.cache_dir).expanduser() if options.cache_dir else default_cache_dir()
    target = getattr(evaluator, "target", "cpu") or "cpu"
    shared = {"calibration": context.calibration, "calibration_description": context.calibration_description,
              "jobs": context.jobs, "providers": context.providers}
    run = Run(
        options=options, context=context, evaluator=evaluator, model=model, base=base, model_hash=model_hash,
        target=target, rounding=options.round or (8 if target == "cuda" else 16), facts=facts, costs=costs,
        clock=clock, cache=MeasurementCache(folder, model_hash), journal=Journal(clock),
        fastest_runs=_supports(evaluator.latency, "statistic"), can_limit=_supports(evaluator.score, "limit"),
        build_context=PassContext(**shared), recover=recover, recovery_note=recovery_note,
        quant_context=PassContext(**shared, progress=lambda message, done, total: context.progress(
            f"auto: {message}", done, total)),
    )
    if not recover and options.recover == "auto":
        run.journal.notes.append(f"recovery {recovery_note}")
    return run


def _result(run: Run, report: PassReport, layer_set: LayerSet, baseline: QuantBaseline, accepted: list[Candidate],
            choice: FinalChoice) -> ir.passes.PassResult:
    write_report(run, report, layer_set, baseline, accepted, choice)
    chosen = choice.chosen
    if chosen is None:
        return ir.passes.PassResult(run.model.clone(), False)
    if run.context.save_config:
        save_config(run, report, chosen, run.context.save_config)
    return ir.passes.PassResult(ir.from_proto(chosen.proto), True)


def _supports(function: Any, keyword: str) -> bool:
    """Whether ``function`` takes ``keyword`` (the evaluator's optional extras)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
