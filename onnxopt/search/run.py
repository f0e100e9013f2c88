"""One search's inputs and services, which every phase reads, and the journal it keeps.

:class:`Run` is built once by the engine and never replaced: the options, the input model
(and its proto and hash), the target and rank rounding, the clock, the cache, the budget
facts and the measured costs. Phases return what they find; the journal only collects the
report's numbered steps, pareto rows and notes in the order they happen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from onnxopt.passbase import CandidateScore, PassContext
from onnxopt.passes.auto import AutoOptions
from onnxopt.search.budget import BudgetFacts, search_target
from onnxopt.search.cache import MeasurementCache
from onnxopt.search.clock import Clock, Costs
from onnxopt.search.records import QuantBaseline, round_figure


@dataclass
class Journal:
    """The report's log: numbered steps, pareto rows (setting, speedup, metric) and notes."""

    clock: Clock
    steps: list[dict[str, Any]] = field(default_factory=list)
    pareto: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def step(self, phase: str, tried: str, score: CandidateScore | None = None, **extra: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"step": len(self.steps) + 1, "phase": phase, "tried": tried,
                                 "t": round(self.clock.elapsed(), 1)}
        if score is not None:
            entry.update(metric=round_figure(score.value), passed=score.passed,
                         rel_l2=round_figure(score.details.get("rel_l2_error")))
            if not score.passed and score.failures:
                entry["failure"] = score.failures[0]
        entry.update({k: round_figure(v) for k, v in extra.items()})
        self.steps.append(entry)
        return entry


@dataclass
class Run:
    """What every phase of one search reads."""

    options: AutoOptions
    context: PassContext
    evaluator: Any  # a CandidateEvaluator
    model: ir.Model
    base: Any  # the input model as an onnx.ModelProto: what every build starts from
    model_hash: str
    target: str  # "cpu" or "cuda": where latencies are measured
    rounding: int  # ranks are rounded up to a multiple of this
    facts: BudgetFacts
    costs: Costs
    clock: Clock
    cache: MeasurementCache
    journal: Journal
    fastest_runs: bool  # the evaluator times with statistic="min"
    can_limit: bool  # the evaluator scores the first N samples (limit=N)
    build_context: PassContext  # sub-passes run quietly, with the calibration data
    quant_context: PassContext  # the same, showing the quantization's progress
    recover: bool = False  # the final candidates that decompose are recovered (search.recovery)
    recovery_note: str = ""  # whether recovery is on, and why not when it is not (the report's figure)

    def progress(self, message: str, done: int = 0, total: int = 0) -> None:
        self.context.progress(f"auto: {message}", done, total)

    def goal(self, baseline: QuantBaseline) -> float | None:
        """What the decomposition must reach: its share of the budget where the quantization
        shares it, else the budget less the margin."""
        if baseline.reduced is not None:
            return baseline.reduced
        return search_target(self.facts, self.options.margin)
