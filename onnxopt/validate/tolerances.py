"""The gate's verdict: what was measured per output, the thresholds, and the check.

:class:`OutputMetrics` holds one output's final metrics (filled by
:class:`onnxopt.validate.metrics.OutputAccumulator`); :class:`Tolerances` the thresholds;
:func:`check_gate` one line per failing (output, check). ``atol``/``rtol`` work like
``numpy.allclose`` with the reference as the base: max over elements of
``|a − b| − rtol·|a|`` must be ≤ atol, evaluated exactly after streaming from the points
(|a|, |a − b|) on the upper convex hull the accumulator keeps (``OutputMetrics.envelope``).
Shape mismatches, NaN/Inf in one model only and integer pass-through outputs that differ
fail whatever the tolerances.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

import numpy as np


def _json_float(value: float | None) -> float | str | None:
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


@dataclass
class OutputMetrics:
    """Final metrics of one output; None where a metric does not apply (definitions:
    :mod:`onnxopt.validate.metrics`)."""

    name: str
    samples: int = 0
    elements: int = 0
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    rel_l2_error: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    cosine_p5: float | None = None
    channel_cosine_min: float | None = None
    channel_cosine_argmin: int | None = None
    snr_db: float | None = None
    nonfinite_reference: int = 0
    nonfinite_candidate: int = 0
    nonfinite_mismatch: int = 0
    classifier: bool = False
    top1_agreement: float | None = None
    labeled: int = 0
    labels_out_of_range: int = 0
    reference_top1: float | None = None
    reference_top5: float | None = None
    candidate_top1: float | None = None
    candidate_top5: float | None = None
    shape_error: str | None = None
    kind: str = "other"  # integer, tokens, embedding, classifier, detection, other (output_kinds)
    integer_mismatches: int | None = None  # integer outputs: elements that differ
    integer_pass_through: bool | None = None  # integer outputs: equal to an input on every batch
    tokens: int = 0  # tokens outputs: real (unmasked) tokens compared
    token_cosine_mean: float | None = None
    token_cosine_p5: float | None = None
    pairwise_spearman: float | None = None  # embedding outputs
    pairwise_samples: int = 0  # the samples whose pairs pairwise_spearman ranks
    envelope: tuple[np.ndarray, np.ndarray] = field(default=(np.zeros(0), np.zeros(0)), repr=False, compare=False)
    sample_cosines: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    def samples_below(self, threshold: float) -> int:
        """How many samples have a cosine under ``threshold``."""
        return int(np.sum(self.sample_cosines < threshold))

    def allclose_excess(self, rtol: float = 0.0) -> float | None:
        """max over elements of ``|a − b| − rtol·|a|`` (finite elements), or None if none."""
        a, d = self.envelope
        if a.size == 0:
            return None
        return float(np.max(d - rtol * a))

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict with stable keys; non-finite floats become "inf"/"-inf"/"nan"."""
        result: dict[str, object] = {}
        for f in fields(self):
            if f.name in ("envelope", "sample_cosines"):
                continue
            value = getattr(self, f.name)
            result[f.name] = _json_float(value) if isinstance(value, float) else value
        return result


# --------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class Tolerances:
    """Gate thresholds; None = not checked. ``min_cosine`` applies to the worst sample,
    ``min_cosine_p5`` to the 5th percentile of the per-sample cosines (one bad sample in a
    hundred does not decide), ``min_channel_cosine`` to the worst attribute channel of
    detection-like outputs (:mod:`onnxopt.validate.metrics`; other outputs are not checked),
    ``min_pairwise_spearman`` to the rank agreement of pairwise similarities of embedding
    outputs (other outputs are not checked)."""

    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None
    min_agreement: float | None = None
    max_rel_error: float | None = None
    min_cosine_p5: float | None = None
    min_channel_cosine: float | None = None
    min_pairwise_spearman: float | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def to_dict(self) -> dict[str, float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _fmt(value: float, threshold: float) -> tuple[str, str]:
    """Format value and threshold with enough digits to show that they differ."""
    for digits in range(4, 13):
        a, b = f"{value:.{digits}g}", f"{threshold:.{digits}g}"
        if a != b:
            return a, b
    return f"{value!r}", f"{threshold!r}"


def _spread(m: OutputMetrics, threshold: float) -> str:
    """What the other samples say, for a worst-sample failure: one outlier or many."""
    if m.cosine_p5 is None or m.samples < 2:
        return ""
    return f"; {m.samples_below(threshold)} of {m.samples} samples below, the 5th-percentile cosine is {m.cosine_p5:.4f}"


def check_gate(metrics: Iterable[OutputMetrics], tolerances: Tolerances) -> list[str]:
    """One human line per failing (output, check); empty when everything passes.

    Shape mismatches, NaN/Inf appearing in one model only and integer outputs that differ
    fail whatever the tolerances. ``min_agreement`` fails when no output is shaped
    [N, classes].
    """
    failures: list[str] = []
    metrics = list(metrics)
    t = tolerances
    for m in metrics:
        where = f"output '{m.name}'"
        if m.shape_error:
            failures.append(f"{where}: {m.shape_error}")
            continue
        if m.nonfinite_mismatch:
            failures.append(
                f"{where}: {m.nonfinite_mismatch} NaN/Inf value(s) appear in one model only "
                f"(reference {m.nonfinite_reference}, candidate {m.nonfinite_candidate})"
            )
        if m.integer_mismatches and m.integer_pass_through:
            failures.append(f"{where}: {m.integer_mismatches} of {m.elements} integer values differ "
                            "(an output that passes an input through must match exactly)")
        if t.atol is not None or t.rtol is not None:
            atol, rtol = t.atol or 0.0, t.rtol or 0.0
            excess = m.allclose_excess(rtol)
            if excess is not None and excess > atol:
                if rtol:
                    value, limit = _fmt(excess, atol)
                    failures.append(f"{where}: max(|a−b| − rtol·|a|) {value} > atol {limit} (rtol {rtol:g})")
                else:
                    value, limit = _fmt(excess, atol)
                    failures.append(f"{where}: max abs error {value} > atol {limit}")
        if t.max_rel_error is not None and m.rel_l2_error is not None and not m.rel_l2_error <= t.max_rel_error:
            value, limit = _fmt(m.rel_l2_error, t.max_rel_error)
            failures.append(f"{where}: relative L2 error {value} > max {limit}")
        if t.min_cosine is not None and m.cosine_min is not None and not m.cosine_min >= t.min_cosine:
            value, limit = _fmt(m.cosine_min, t.min_cosine)
            failures.append(f"{where}: cosine {value} < min {limit} (worst sample{_spread(m, t.min_cosine)})")
        if t.min_cosine_p5 is not None and m.cosine_p5 is not None and not m.cosine_p5 >= t.min_cosine_p5:
            value, limit = _fmt(m.cosine_p5, t.min_cosine_p5)
            failures.append(f"{where}: 5th-percentile cosine {value} < min {limit} "
                            f"({m.samples_below(t.min_cosine_p5)} of {m.samples} samples below; the worst "
                            f"{m.cosine_min:.4f})")
        if (t.min_channel_cosine is not None and m.channel_cosine_min is not None
                and not m.channel_cosine_min >= t.min_channel_cosine):
            value, limit = _fmt(m.channel_cosine_min, t.min_channel_cosine)
            failures.append(f"{where}: cosine of attribute channel {m.channel_cosine_argmin} (last axis) {value} "
                            f"< min {limit}")
        if (t.min_pairwise_spearman is not None and m.pairwise_spearman is not None
                and not m.pairwise_spearman >= t.min_pairwise_spearman):
            value, limit = _fmt(m.pairwise_spearman, t.min_pairwise_spearman)
            failures.append(f"{where}: Spearman of pairwise similarities {value} < min {limit} "
                            f"(the similarity ranking of {m.pairwise_samples} samples' pairs changed)")
        if t.min_agreement is not None and m.top1_agreement is not None and not m.top1_agreement >= t.min_agreement:
            value, limit = _fmt(m.top1_agreement, t.min_agreement)
            failures.append(f"{where}: top-1 agreement {value} < min {limit}")
    if t.min_agreement is not None and metrics and not any(m.top1_agreement is not None for m in metrics):
        failures.append("top-1 agreement cannot be checked: no output is shaped [N, classes]")
    return failures
