"""Greedy selection: which layers to decompose together, each with which option.

Layers are ordered by measured gain per unit of sensitivity (seconds saved / relative L2
output error), each with its best option. The longest prefix that meets the goal on the
whole search split is found by bisection (log₂ n verifications of combined models); the
following layers are then tried one at a time, backing off to safer options (higher
energy, another method) and then dropping the layer when the goal fails, until
``patience`` layers in a row failed. Time left then goes to upgrades: accepted layers switch
to faster scored options, by extra gain per extra sensitivity, while the combination fits.
Estimated speedup of a selection: t / max(t − Σ gains, 0.05·t).
"""

from __future__ import annotations

from onnxopt.search import measure
from onnxopt.search.budget import within
from onnxopt.search.clock import OutOfTime
from onnxopt.search.records import (
    SENSITIVITY_EPS,
    Candidate,
    Layer,
    QuantBaseline,
    describe_selection,
    round_figure,
)
from onnxopt.search.run import Run
from onnxopt.search.specs import decomposition_specs


def select(run: Run, layers: list[Layer], baseline: QuantBaseline) -> list[Candidate]:
    """The accepted candidates, one per layer; what was accepted when the time ran out."""
    accepted: list[Candidate] = []
    try:
        _greedy(run, layers, baseline, accepted)
        _upgrade(run, baseline, accepted)
    except OutOfTime:
        pass
    return accepted


def _greedy(run: Run, all_layers: list[Layer], baseline: QuantBaseline, accepted: list[Candidate]) -> None:
    """Fill ``accepted`` in place (so that it holds the progress if the time runs out)."""
    layers = [layer for layer in all_layers if not layer.reason and layer.options]
    layers.sort(key=lambda layer: -layer.options[0].key)
    if not layers:
        return
    n = len(layers)
    initial = [layer.options[0] for layer in layers]
    run.progress(f"verifying all {n} layers", 0, n)
    run.clock.check("search")
    if _verify(run, baseline, initial, f"all {n} layers, each at its best option"):
        accepted[:] = initial
        return
    lo, hi = 0, n  # prefix lo meets the budget (0 trivially), prefix hi does not
    while hi - lo > 1:
        run.clock.check("search")
        mid = (lo + hi) // 2
        run.progress(f"bisecting: first {mid} layers", lo, n)
        if _verify(run, baseline, initial[:mid], f"first {mid} layers (bisection {lo}..{hi})"):
            lo = mid
            accepted[:] = initial[:lo]
        else:
            hi = mid
    accepted[:] = initial[:lo]
    failures = 0
    patience = run.options.patience
    for position in range(lo, n):
        layer = layers[position]
        if failures >= patience:
            layer.reason = f"not tried: {patience} layers in a row did not fit the remaining budget (patience)"
            continue
        options = layer.options[1:] if position == lo else layer.options
        if position == lo:
            tried = [layer.options[0]]
            layer.options[0].reason = "the combined model broke the budget with it"
        else:
            tried = []
        current = layer.options[0].sensitivity
        fitted = False
        for candidate in options:
            if position == lo and candidate.sensitivity >= current:
                continue  # back off only to safer options
            run.clock.check("search")
            run.progress(f"adding {layer.name} {candidate.label}", position, n)
            if _verify(run, baseline, [*accepted, candidate], f"+ {layer.name} {candidate.label}"):
                accepted.append(candidate)
                fitted = True
                break
            candidate.reason = "the combined model broke the budget with it"
            tried.append(candidate)
        if fitted:
            failures = 0
        else:
            failures += 1
            labels = ", ".join(c.label for c in tried) or "no safer option"
            layer.reason = f"dropped: the combined model broke the budget with every option tried ({labels})"


def _upgrade(run: Run, baseline: QuantBaseline, accepted: list[Candidate]) -> None:
    """Spend what is left of the budget on faster options of accepted layers: each layer
    entered the search with its best gain *per sensitivity*, often a safer level than its
    fastest scored option; swap, by extra gain per extra sensitivity, while it fits."""
    swaps = []
    for current in accepted:
        for faster in current.layer.options:
            extra = faster.gain_s - current.gain_s
            if extra > 0 and faster is not current:
                cost = max(faster.sensitivity - current.sensitivity, SENSITIVITY_EPS)
                swaps.append((extra / cost, current, faster))
    swaps.sort(key=lambda item: -item[0])
    failures = 0
    for _, current, faster in swaps:
        if current not in accepted or failures >= run.options.patience:
            continue
        run.clock.check("search")
        trial = [faster if c is current else c for c in accepted]
        run.progress(f"upgrading {current.layer.name} to {faster.label}")
        if _verify(run, baseline, trial, f"{current.layer.name}: {current.label} → {faster.label}"):
            accepted[:] = trial
            failures = 0
        else:
            failures += 1


def _verify(run: Run, baseline: QuantBaseline, selection: list[Candidate], what: str) -> bool:
    """Score the combined model on the whole search split: whether it meets the goal."""
    specs = decomposition_specs(run.options, run.rounding, selection)
    result, _ = measure.cached_score(run, measure.score_key(run, specs, "search"),
                                     lambda: measure.build(run, specs)[0])
    ok = within(run.facts, result, run.goal(baseline))
    estimate = _estimate(run, baseline, selection)
    run.journal.step("search", what, result, layers=len(selection), meets_share=ok, estimated_speedup=estimate)
    run.journal.pareto.append({"setting": describe_selection(selection), "layers": len(selection),
                               "metric": round_figure(result.value), "passed": ok,
                               "speedup": round_figure(estimate, 3), "measured": False})
    return ok


def _estimate(run: Run, baseline: QuantBaseline, selection: list[Candidate]) -> float | None:
    chosen = baseline.chosen
    base = chosen.latency_s if baseline.domain and chosen else run.costs.original_s
    if not base:
        return None
    saved = sum(c.gain_s for c in selection)
    # single-layer gains are measured at the layer alone; clamp to keep the estimate sane
    return base / max(base - saved, base * 0.05)
