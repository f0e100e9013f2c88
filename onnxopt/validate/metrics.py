"""Streaming output metrics (reference vs candidate) and the tolerance gate.

Batches arrive one at a time, so every metric is an accumulator: sums in float64, maxima
and minima, never the outputs themselves. With ``a`` the reference and ``b`` the
candidate output:

* ``max_abs_error``, ``mean_abs_error``: of ``|a − b|`` over all elements;
* ``rel_l2_error``: ``||a − b|| / ||a||`` over the whole output (all samples);
* ``cosine_mean`` / ``cosine_min`` / ``cosine_p5``: cosine similarity of each *sample*
  (one row along the first axis when it is the batch axis, else the whole batch output),
  averaged, the worst one, and the 5th percentile (never interpolated: with 100 samples
  the 5th-lowest, with fewer than 21 the worst — see :func:`cosine_percentile`);
  ``OutputMetrics.samples_below(t)`` counts the samples under a bound. The per-sample
  cosines are kept for the percentile (8 bytes a sample: the one accumulator that grows);
* for detection-like outputs — rank 3, ``[N, boxes, attributes]`` with at most
  ``MAX_CHANNELS`` attributes, fewer than boxes — ``channel_cosine_min``: the cosine of
  each attribute (last axis) over all samples and boxes, the worst one
  (``channel_cosine_argmin`` says which). A YOLO output holds box coordinates in pixels
  beside objectness and class scores in 0..1, so the cosine of the whole output hardly
  sees the scores: a decomposition that destroyed them kept a whole-output cosine of 0.95
  and a score-channel cosine of 0.10;
* ``snr_db``: ``10·log10(||a||² / ||a − b||²)``;
* for outputs shaped [N, classes] with classes ≥ 2: ``top1_agreement`` (share of samples
  where both models pick the same class) and, with labels, each model's top-1 and top-5
  accuracy over the samples that have a label (matched by batch id; a label outside the
  output's classes counts as a miss and in ``labels_out_of_range``).

Edge cases (never an exception):

* NaN and ±Inf: elements where either output is not finite are left out of every metric
  above and counted (``nonfinite_reference``, ``nonfinite_candidate``); where the two
  disagree (NaN or Inf in one model only, or Infs of different sign) they are counted in
  ``nonfinite_mismatch``, and the gate always fails on a mismatch.
* all-zero reference: ``rel_l2_error`` is 0 when the candidate is zero too and +inf
  otherwise; ``snr_db`` is +inf when the outputs are equal and −inf when the reference
  is zero and the candidate is not.
* cosine of a sample: 1.0 when both are all-zero, 0.0 when exactly one is.
* a candidate output whose shape differs from the reference is recorded in
  ``shape_error`` (the batch is skipped) and always fails the gate.

The gate (:func:`check_gate`) tests :class:`Tolerances`; ``atol``/``rtol`` work like
``numpy.allclose`` with the reference as the base: max over elements of
``|a − b| − rtol·|a|`` must be ≤ atol. To evaluate that for any rtol after streaming, the
accumulator keeps the few points (|a|, |a − b|) on the upper convex hull of all of them,
which is exact.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from onnxopt.errors import InputError

TOP_K = 5
#: Detection-like outputs ([N, boxes, attributes]) with at most this many attributes get
#: a cosine per attribute (YOLO: 4 box coordinates, objectness, 80 COCO classes).
MAX_CHANNELS = 128


# --------------------------------------------------------------------------- labels


def load_labels(path: str | os.PathLike) -> dict[str, int]:
    """Read a TSV whose header starts ``file<TAB>index`` into {file name: class index}.

    Further columns (wnid, name, …) are ignored. InputError naming the line on bad rows.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"labels file not found: {path}")
    labels: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = csv.reader(handle, delimiter="\t")
            header = next(rows, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["file", "index"]:
                raise InputError(f"{path.name}: the header must start with 'file<TAB>index', got {header!r}")
            for line, row in enumerate(rows, start=2):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 2:
                    raise InputError(f"{path.name} line {line}: expected file<TAB>index, got {row!r}")
                try:
                    labels[row[0].strip()] = int(row[1])
                except ValueError:
                    raise InputError(f"{path.name} line {line}: index '{row[1]}' is not an integer") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read labels file '{path}': {error}") from error
    if not labels:
        raise InputError(f"{path.name} has no labels")
    return labels


# --------------------------------------------------------------------------- envelope


def cosine_percentile(cosines: np.ndarray, percent: float) -> float:
    """The ``percent``-th percentile of per-sample cosines, never interpolated upwards:
    the sorted value at index ``floor(percent/100 · (n − 1))`` (numpy's "lower" method) —
    with 100 samples the 5th percentile is the 5th-lowest, with 8 the worst."""
    return float(np.percentile(cosines, percent, method="lower"))



def _upper_hull(a: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of {(a_i, d_i)} that can maximise ``d − r·a`` for some r ≥ 0.

    First the Pareto staircase (no other point has a smaller-or-equal a and a larger-or-
    equal d), vectorised; then, if still large, its upper convex hull.
    """
    if a.size == 0:
        return a, d
    # Points right of the (leftmost) maximum of d can never win for r ≥ 0.
    top = d.max()
    keep = a <= a[d == top].min()
    a, d = a[keep], d[keep]
    order = np.lexsort((-d, a))
    a, d = a[order], d[order]
    running = np.maximum.accumulate(d)
    new_record = np.empty(a.size, dtype=bool)
    new_record[0] = True
    new_record[1:] = d[1:] > running[:-1]
    a, d = a[new_record], d[new_record]
    if a.size <= 64:
        return a, d
    hull: list[int] = []
    for i in range(a.size):
        while len(hull) >= 2:
            o, p = hull[-2], hull[-1]
            cross = (a[p] - a[o]) * (d[i] - d[o]) - (d[p] - d[o]) * (a[i] - a[o])
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    index = np.asarray(hull)
    return a[index], d[index]


# --------------------------------------------------------------------------- results


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
    """Final metrics of one output; None where a metric does not apply."""

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


class OutputAccumulator:
    """Accumulates the metrics of one output over batches; :meth:`result` at the end."""

    def __init__(self, name: str):
        self.name = name
        self.samples = 0
        self.elements = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.sum_sq_ref = 0.0
        self.sum_sq_diff = 0.0
        self.cos_sum = 0.0
        self.cos_min = math.inf
        self.cosines: list[np.ndarray] = []  # per sample, for percentiles
        self.channels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # dot, |a|², |b|² per channel
        self.channels_apply: bool | None = None
        self.nonfinite_ref = 0
        self.nonfinite_cand = 0
        self.nonfinite_mismatch = 0
        self.classifier: bool | None = None
        self.agree = 0
        self.class_samples = 0
        self.labeled = 0
        self.out_of_range = 0
        self.hits = {"reference_top1": 0, "reference_top5": 0, "candidate_top1": 0, "candidate_top5": 0}
        self.env_a = np.zeros(0)
        self.env_d = np.zeros(0)
        self.shape_error: str | None = None

    def update(
        self,
        reference: np.ndarray,
        candidate: np.ndarray,
        ids: Sequence[str] | None = None,
        labels: Mapping[str, int] | None = None,
    ) -> None:
        """Add one batch. ``ids`` (one per sample) tell whether axis 0 is the batch axis
        (its length equals ``len(ids)``) and match ``labels``."""
        reference = np.asarray(reference)
        candidate = np.asarray(candidate)
        if reference.shape != candidate.shape:
            if self.shape_error is None:
                self.shape_error = f"shape {candidate.shape} differs from the reference {reference.shape}"
            return
        a = reference.astype(np.float64, copy=False).reshape(reference.shape or (1,))
        b = candidate.astype(np.float64, copy=False).reshape(a.shape)
        per_row = ids is not None and a.ndim >= 1 and a.shape[0] == len(ids)
        if ids is None:
            per_row = a.ndim >= 2
        rows = a.shape[0] if per_row else 1

        finite_a, finite_b = np.isfinite(a), np.isfinite(b)
        both = finite_a & finite_b
        if not both.all():
            self.nonfinite_ref += int((~finite_a).sum())
            self.nonfinite_cand += int((~finite_b).sum())
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            self.nonfinite_mismatch += int((~both & ~same).sum())
            a = np.where(both, a, 0.0)
            b = np.where(both, b, 0.0)
        diff = np.abs(a - b)
        abs_a = np.abs(a)
        count = int(both.sum())
        self.elements += count
        if count:
            self.max_abs = max(self.max_abs, float(diff[both].max()) if not both.all() else float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.sum_sq_ref += float(np.square(a).sum())
        self.sum_sq_diff += float(np.square(diff).sum())

        a_rows, b_rows = a.reshape(rows, -1), b.reshape(rows, -1)
        dots = np.einsum("ij,ij->i", a_rows, b_rows)
        norm_a = np.sqrt(np.einsum("ij,ij->i", a_rows, a_rows))
        norm_b = np.sqrt(np.einsum("ij,ij->i", b_rows, b_rows))
        with np.errstate(divide="ignore", invalid="ignore"):
            cosine = np.where((norm_a > 0) & (norm_b > 0), dots / (norm_a * norm_b), 0.0)
        cosine = np.where((norm_a == 0) & (norm_b == 0), 1.0, np.clip(cosine, -1.0, 1.0))
        self.cos_sum += float(cosine.sum())
        self.cos_min = min(self.cos_min, float(cosine.min()))
        self.cosines.append(np.asarray(cosine, dtype=np.float64).ravel())
        self.samples += rows

        if count:
            points_a, points_d = (abs_a, diff) if both.all() else (abs_a[both], diff[both])
            self.env_a, self.env_d = _upper_hull(
                np.concatenate([self.env_a, points_a.ravel()]), np.concatenate([self.env_d, points_d.ravel()])
            )

        self._update_channels(a, b, per_row)
        is_classifier = per_row and reference.ndim == 2 and reference.shape[1] >= 2
        self.classifier = is_classifier if self.classifier is None else (self.classifier and is_classifier)
        if is_classifier:
            self._update_classes(reference, candidate, ids, labels)

    def _update_channels(self, a: np.ndarray, b: np.ndarray, per_row: bool) -> None:
        """Per-attribute sums of detection-like outputs (see the module docstring)."""
        applies = per_row and a.ndim == 3 and 1 < a.shape[2] <= MAX_CHANNELS and a.shape[1] > a.shape[2]
        if applies and self.channels is not None and self.channels[0].shape[0] != a.shape[2]:
            applies = False
        self.channels_apply = applies if self.channels_apply is None else (self.channels_apply and applies)
        if not self.channels_apply:
            self.channels = None
            return
        sums = (np.einsum("npc,npc->c", a, b), np.einsum("npc,npc->c", a, a), np.einsum("npc,npc->c", b, b))
        self.channels = sums if self.channels is None else tuple(x + y for x, y in zip(self.channels, sums))

    def _update_classes(self, reference, candidate, ids, labels) -> None:
        top_ref = np.argmax(reference, axis=1)
        top_cand = np.argmax(candidate, axis=1)
        self.agree += int((top_ref == top_cand).sum())
        self.class_samples += reference.shape[0]
        if not labels or ids is None:
            return
        rows = [i for i, sample in enumerate(ids) if sample in labels]
        if not rows:
            return
        truth = np.asarray([labels[ids[i]] for i in rows])
        k = min(TOP_K, reference.shape[1])
        self.labeled += len(rows)
        self.out_of_range += int(((truth < 0) | (truth >= reference.shape[1])).sum())
        for prefix, output in (("reference", reference), ("candidate", candidate)):
            scores = np.asarray(output)[rows]
            self.hits[f"{prefix}_top1"] += int((np.argmax(scores, axis=1) == truth).sum())
            top_k = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            self.hits[f"{prefix}_top5"] += int((top_k == truth[:, None]).any(axis=1).sum())

    def result(self) -> OutputMetrics:
        m = OutputMetrics(self.name, samples=self.samples, elements=self.elements, shape_error=self.shape_error)
        m.nonfinite_reference = self.nonfinite_ref
        m.nonfinite_candidate = self.nonfinite_cand
        m.nonfinite_mismatch = self.nonfinite_mismatch
        m.envelope = (self.env_a, self.env_d)
        if self.samples:
            m.cosine_mean = self.cos_sum / self.samples
            m.cosine_min = self.cos_min
            m.cosine_p5 = cosine_percentile(np.concatenate(self.cosines), 5)
            m.sample_cosines = np.concatenate(self.cosines)
        if self.channels_apply and self.channels is not None:
            dot, norm_a, norm_b = self.channels
            with np.errstate(divide="ignore", invalid="ignore"):
                cosine = np.where((norm_a > 0) & (norm_b > 0), dot / np.sqrt(norm_a * norm_b), 0.0)
            cosine = np.where((norm_a == 0) & (norm_b == 0), 1.0, np.clip(cosine, -1.0, 1.0))
            m.channel_cosine_argmin = int(np.argmin(cosine))
            m.channel_cosine_min = float(cosine[m.channel_cosine_argmin])
        if self.elements:
            m.max_abs_error = self.max_abs
            m.mean_abs_error = self.sum_abs / self.elements
            if self.sum_sq_ref > 0:
                m.rel_l2_error = math.sqrt(self.sum_sq_diff) / math.sqrt(self.sum_sq_ref)
            else:
                m.rel_l2_error = 0.0 if self.sum_sq_diff == 0 else math.inf
            if self.sum_sq_diff == 0:
                m.snr_db = math.inf
            elif self.sum_sq_ref == 0:
                m.snr_db = -math.inf
            else:
                m.snr_db = 10.0 * math.log10(self.sum_sq_ref / self.sum_sq_diff)
        m.classifier = bool(self.classifier) and self.class_samples > 0
        if m.classifier:
            m.top1_agreement = self.agree / self.class_samples
            m.labeled = self.labeled
            m.labels_out_of_range = self.out_of_range
            if self.labeled:
                for key, hits in self.hits.items():
                    setattr(m, key, hits / self.labeled)
        return m


class MetricsAccumulator:
    """One :class:`OutputAccumulator` per output name, fed with whole output dicts."""

    def __init__(self, names: Iterable[str]):
        self.outputs = {name: OutputAccumulator(name) for name in names}

    def update(
        self,
        reference: Mapping[str, np.ndarray],
        candidate: Mapping[str, np.ndarray],
        ids: Sequence[str] | None = None,
        labels: Mapping[str, int] | None = None,
    ) -> None:
        for name, accumulator in self.outputs.items():
            accumulator.update(reference[name], candidate[name], ids, labels)

    def result(self) -> list[OutputMetrics]:
        return [accumulator.result() for accumulator in self.outputs.values()]


def compute_metrics(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    ids: Sequence[str] | None = None,
    labels: Mapping[str, int] | None = None,
) -> list[OutputMetrics]:
    """Metrics of one batch of outputs (a convenience over :class:`MetricsAccumulator`)."""
    accumulator = MetricsAccumulator(reference)
    accumulator.update(reference, candidate, ids, labels)
    return accumulator.result()


# --------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class Tolerances:
    """Gate thresholds; None = not checked. ``min_cosine`` applies to the worst sample,
    ``min_cosine_p5`` to the 5th percentile of the per-sample cosines (one bad sample in a
    hundred does not decide), ``min_channel_cosine`` to the worst attribute channel of
    detection-like outputs (see the module docstring; other outputs are not checked)."""

    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None
    min_agreement: float | None = None
    max_rel_error: float | None = None
    min_cosine_p5: float | None = None
    min_channel_cosine: float | None = None

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

    Shape mismatches and NaN/Inf appearing in one model only fail whatever the
    tolerances. ``min_agreement`` fails when no output is shaped [N, classes].
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
        if t.min_agreement is not None and m.top1_agreement is not None and not m.top1_agreement >= t.min_agreement:
            value, limit = _fmt(m.top1_agreement, t.min_agreement)
            failures.append(f"{where}: top-1 agreement {value} < min {limit}")
    if t.min_agreement is not None and metrics and not any(m.top1_agreement is not None for m in metrics):
        failures.append("top-1 agreement cannot be checked: no output is shaped [N, classes]")
    return failures
