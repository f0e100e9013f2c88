"""The accuracy budget as the search uses it: its target, the quantization's share, the tests.

The budget is the evaluator's threshold on one metric, larger is better: ``top1_agreement``,
``cosine_min`` or ``neg_rel_l2_error`` (−e). During the search ``margin`` of the slack is kept
in reserve: target = t + margin·(1 − t), or −e·(1 − margin) for the error. When quantization
shares the budget, the decomposition alone must reach 1 − (slack − what quantization used)
(agreement; 0.9× that for cosine), or −0.9·√(e² − e_q²) for the error (independent errors
add in quadrature). On a subset of the search split, agreement counts flips against what the
whole split allows, and a worst-sample cosine below the threshold proves a failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from onnxopt.passbase import CandidateScore

_METRIC_WORDS = {"top1_agreement": "top-1 agreement", "cosine_min": "cosine", "neg_rel_l2_error": "relative L2"}


@dataclass
class BudgetFacts:
    """What the scores tell about the budget: its threshold, metric, and the search split's size."""

    threshold: float | None = None
    metric: str = ""
    search_samples: int | None = None

    def learn_splits(self, described: dict) -> None:
        """The search split's size from the evaluator's ``describe_splits()``."""
        self.search_samples = int((described.get("search") or {}).get("samples") or 0) or None

    def learn(self, result: CandidateScore, split: str = "search", limit: int | None = None) -> None:
        """Update the facts from a score (measured or cached): the only other place they change."""
        if result.details.get("threshold") is not None:
            self.threshold = result.details["threshold"]
        if result.metric:
            self.metric = result.metric
        if limit is None and split == "search":
            split_info = result.details.get("split") or {}
            if split_info.get("samples"):
                self.search_samples = int(split_info["samples"])


def search_target(facts: BudgetFacts, margin: float) -> float | None:
    """The budget with ``margin`` of its slack kept in reserve (value scale)."""
    threshold = facts.threshold
    if threshold is None:
        return None
    if facts.metric == "neg_rel_l2_error":
        return threshold * (1.0 - margin)  # −e → −e·(1 − margin): stricter
    return threshold + margin * (1.0 - threshold)


def shared_target(facts: BudgetFacts, margin: float, quantized: CandidateScore) -> float | None:
    """The value the decomposition alone must reach so that the quantization still fits."""
    target = search_target(facts, margin)
    value = quantized.value
    if target is None or not math.isfinite(value):
        return None
    if quantized.metric == "top1_agreement":
        return 1.0 - max(0.0, (1.0 - target) - (1.0 - value))
    if quantized.metric == "cosine_min":
        return 1.0 - max(0.0, 0.9 * ((1.0 - target) - (1.0 - value)))
    # relative L2 error (value = −error): independent errors add in quadrature
    budget, used = -target, -value
    return -0.9 * math.sqrt(max(0.0, budget * budget - used * used))


def within(facts: BudgetFacts, result: CandidateScore, target: float | None, samples: int | None = None) -> bool:
    """Whether ``result`` meets ``target`` (``None``: whether it passed the budget itself).
    ``samples``: the result is on that many first samples of the search split only — for
    agreement, more flips there than the whole split allows fail it (a safe test)."""
    keyword = _METRIC_WORDS.get(result.metric, "\0")
    if any(keyword not in failure for failure in result.failures):
        return False  # another tolerance, or a candidate that does not run
    if target is None:
        return result.passed
    if not math.isfinite(result.value):
        return False
    if result.metric == "top1_agreement" and facts.search_samples:
        used = samples or facts.search_samples
        flips = round((1.0 - result.value) * used)
        return flips <= math.floor((1.0 - target) * facts.search_samples + 1e-9)
    return result.value >= target - 1e-12


def subset_breaks_budget(facts: BudgetFacts, result: CandidateScore, samples: int) -> bool:
    """Whether a score on the first ``samples`` samples proves that the whole search split
    misses the budget itself (not only the margin)."""
    threshold = result.details.get("threshold", facts.threshold)
    if threshold is None:
        return False
    if not math.isfinite(result.value):
        return bool(result.failures)  # does not load or run: it will not on more samples either
    if result.metric == "cosine_min":  # the worst sample of a subset bounds the whole split's
        return result.value < threshold - 1e-12
    if result.metric == "top1_agreement" and facts.search_samples:
        flips = round((1.0 - result.value) * samples)
        return flips > math.floor((1.0 - threshold) * facts.search_samples + 1e-9)
    return False


def budget_text(evaluator) -> str:
    """The budget as the user gave it, e.g. ``min_agreement=0.99``."""
    tolerances = getattr(evaluator, "tolerances", None)
    if tolerances is not None and hasattr(tolerances, "to_dict"):
        return ", ".join(f"{k}={v:g}" for k, v in tolerances.to_dict().items() if v is not None)
    return "the evaluator's tolerances"
