"""Recovery of the final candidates: each one that decomposes, distilled on the calibration data.

On (``recover=auto``) when the search has calibration data and the engine (PyTorch) is
installed. Only the final candidates are recovered, never the per-layer probes: each
candidate with a decomposition is rebuilt with the ``recover`` pass right after its
decomposition passes (decomposition → recover → int8), scored on the search split and,
when it scores at least as well, replaces the candidate; the report keeps both figures.
Every build starts from the search's input model, and the pipeline hands ``recover`` the
model it starts from, so the teacher is that input model. The calibration data recovery
trains on is the evaluator's search split, so the holdout split decides, as for any final.
Time: with a budget, the search keeps RECOVERY_SHARE of it in reserve; each recovery gets
an equal part of the time then left beyond the reserve for finishing (its ``time_budget``),
at least MIN_RECOVERY_SECONDS, and ``recover_steps`` optimizer steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from onnxopt.errors import OnnxoptError, UsageError
from onnxopt.passbase import PassContext
from onnxopt.passes.auto import ALL_METHODS, AutoOptions
from onnxopt.registry import PassSpec
from onnxopt.runtime import first_line
from onnxopt.search import measure
from onnxopt.search.cache import digest
from onnxopt.search.records import Final, round_figure
from onnxopt.search.run import Run

RECOVERY_SHARE = 0.2  # of the time budget, kept for recovering the final candidates
MIN_RECOVERY_SECONDS = 5.0


class _Unchanged(Exception):
    """The recover pass left the model as it was (the reason is the message)."""


def plan(options: AutoOptions, context: PassContext) -> tuple[bool, str]:
    """(whether the search recovers its finals, what the report says about it). recover=true
    without calibration data or without the engine is a UsageError."""
    if options.recover is False:
        return False, "off (recover=false)"
    if context.calibration is None:
        if options.recover is True:
            raise UsageError("auto:recover=true needs --data (calibration samples to distil the changed layers on)")
        return False, "not used: no calibration data (give --data)"
    from onnxopt import recover

    ready, why = recover.available()
    if not ready:
        if options.recover is True:
            raise UsageError(why)
        return False, f"not used: {why}"
    return True, f"on ({why})"


def decomposes(final: Final) -> bool:
    return any(spec.name in ALL_METHODS for spec in final.specs)


def with_recovery(specs: list[PassSpec], steps: int) -> list[PassSpec]:
    """``specs`` with ``recover`` right after the last decomposition pass."""
    last = max(i for i, spec in enumerate(specs) if spec.name in ALL_METHODS)
    return [*specs[: last + 1], PassSpec("recover", {"steps": steps}), *specs[last + 1:]]


def recovered_label(label: str) -> str:
    """'decomposition' → 'decomposition + recover'; 'decomposition (3 layers) + int8' →
    'decomposition (3 layers) + recover + int8'."""
    head, plus, tail = label.partition(" + ")
    return f"{head} + recover" + (f" + {tail}" if plus else "")


def recover_finals(run: Run, finals: list[Final]) -> None:
    """Recover every scored final candidate that decomposes; see the module docstring."""
    todo = [f for f in finals if f.search is not None and decomposes(f)]
    if not run.recover or not todo:
        return
    run.clock.recovery_s = 0.0  # the share kept for this is spent now
    with run.clock.phase("recovery"):
        for done, final in enumerate(todo):
            seconds = _seconds_for(run, final, len(todo) - done)
            if seconds is not None and seconds < MIN_RECOVERY_SECONDS:
                final.recovery = {"recovered": False, "reason": (
                    f"no time left: {max(seconds, 0):.0f}s for it, at least {MIN_RECOVERY_SECONDS:g}s needed")}
                continue
            run.progress(f"recovering {final.label}")
            _recover(run, final, seconds)


def _seconds_for(run: Run, final: Final, remaining: int) -> float | None:
    """This recovery's share of the spare time (None: no budget), less its build and score."""
    if run.clock.deadline is None:
        return None
    quantized = any(spec.name in ("int8", "fp16") for spec in final.specs)
    spare = run.clock.spare() - run.costs.full_score_s - (run.costs.quant_build_s if quantized else 0.0)
    return spare / remaining


def _recover(run: Run, final: Final, seconds: float | None) -> None:
    specs = with_recovery(final.specs, run.options.recover_steps)
    context = dataclasses.replace(run.quant_context, time_budget=seconds, teacher=None)
    key = measure.score_key(run, specs, "search")
    facts_key = digest("recovery", key) if key else None
    facts: dict[str, Any] = run.cache.get("model", facts_key) or {}
    if "unchanged" in facts:
        final.recovery = {"recovered": False, "reason": facts["unchanged"], **facts.get("figures", {})}
        return

    def make():
        proto, reports = measure.build(run, specs, context)
        report = next(r for r in reports if r.name == "recover")
        facts["figures"] = _figures(report)
        if not report.modified:
            raise _Unchanged(report.skipped_reason or "recovery changed nothing")
        return proto

    try:
        result, proto = measure.cached_score(run, key, make)
    except _Unchanged as exc:
        run.cache.put("model", facts_key, {"unchanged": str(exc), "figures": facts.get("figures", {})})
        final.recovery = {"recovered": False, "reason": str(exc), **facts.get("figures", {})}
        return
    except OnnxoptError as exc:
        final.recovery = {"recovered": False, "reason": f"recovery failed: {first_line(exc)}"}
        return
    if proto is not None:
        run.cache.put("model", facts_key, {"figures": facts.get("figures", {})})
    before = final.search
    kept = (result.passed, result.value) >= (before.passed, before.value)
    final.recovery = {
        "recovered": kept, "label_before": final.label, "metric_before": round_figure(before.value), "metric_after": round_figure(result.value),
        "passed_before": before.passed, "passed_after": result.passed, **facts.get("figures", {})}
    run.journal.step("recovery", recovered_label(final.label), result, metric_before=before.value,
                     recover_seconds=facts.get("figures", {}).get("seconds"))
    if not kept:
        final.recovery["reason"] = "scored lower on the search split than without recovery"
        return
    final.label = recovered_label(final.label)
    final.specs, final.proto, final.search, final.context = specs, proto, result, context


def _figures(report) -> dict[str, Any]:
    """What the recover pass says about one recovery: seconds, steps, held-out losses."""
    figures = report.figures
    out = {"seconds": round(report.seconds, 2)}
    for name in ("steps", "lr", "loss_before", "loss_after", "notes"):
        if figures.get(name) is not None:
            out[name] = figures[name]
    return out
