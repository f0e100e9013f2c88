"""Streaming output metrics: the reference's and the candidate's outputs, batch by batch.

Batches arrive one at a time, so every metric is an accumulator (:class:`OutputAccumulator`,
one per output; :class:`MetricsAccumulator` for a model's outputs): sums in float64, maxima
and minima, never the outputs themselves; only per-sample cosines (8 bytes a sample), per
real-token cosines (4 bytes a token) and at most :data:`MAX_PAIRWISE_SAMPLES` embeddings
per embedding output are held. The result is :class:`~onnxopt.validate.tolerances.
OutputMetrics`; the gate reads it (:func:`~onnxopt.validate.tolerances.check_gate`). What is
measured depends on the output's kind (:mod:`onnxopt.validate.output_kinds`); the
definitions are :class:`OutputAccumulator`'s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from onnxopt.validate.output_kinds import output_kind, pairwise_spearman, token_mask
from onnxopt.validate.tolerances import OutputMetrics

TOP_K = 5
#: Detection-like outputs ([N, boxes, attributes]) with at most this many attributes get
#: a cosine per attribute (YOLO: 4 box coordinates, objectness, 80 COCO classes).
MAX_CHANNELS = 128
#: Embeddings held per output for ``pairwise_spearman`` (reference and candidate, float32).
MAX_PAIRWISE_SAMPLES = 2000


def cosine_percentile(cosines: np.ndarray, percent: float) -> float:
    """The ``percent``-th percentile of per-sample cosines, never interpolated upwards:
    the sorted value at index ``floor(percent/100 · (n − 1))`` (numpy's "lower" method) —
    with 100 samples the 5th percentile is the 5th-lowest, with 8 the worst."""
    return float(np.percentile(cosines, percent, method="lower"))


def _sample_keys(index: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random uint64 per sample position (splitmix64): the samples with the
    lowest keys are a deterministic uniform subset, whatever the batch size."""
    z = index.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _cosines(a: np.ndarray, b: np.ndarray, subscripts: str) -> np.ndarray:
    """Cosine of the vectors ``subscripts`` reduces (e.g. ``"ij,ij->i"``: rows): 1.0 where
    both are all-zero, 0.0 where exactly one is."""
    dots = np.einsum(subscripts, a, b)
    norm_a = np.sqrt(np.einsum(subscripts, a, a))
    norm_b = np.sqrt(np.einsum(subscripts, b, b))
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where((norm_a > 0) & (norm_b > 0), dots / (norm_a * norm_b), 0.0)
    return np.where((norm_a == 0) & (norm_b == 0), 1.0, np.clip(cosine, -1.0, 1.0))


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


class OutputAccumulator:
    """Accumulates the metrics of one output over batches; :meth:`result` at the end.

    With ``a`` the reference and ``b`` the candidate output:

    * ``max_abs_error``, ``mean_abs_error``: of ``|a − b|`` over all elements;
      ``rel_l2_error``: ``||a − b|| / ||a||`` over the whole output; ``snr_db``:
      ``10·log10(||a||² / ||a − b||²)``;
    * ``cosine_mean`` / ``cosine_min`` / ``cosine_p5``: cosine similarity of each *sample*
      (one row along the first axis when it is the batch axis, else the whole batch
      output): mean, worst, and 5th percentile (:func:`cosine_percentile`);
    * detection-like outputs (rank 3, ``[N, boxes, attributes]`` with at most
      :data:`MAX_CHANNELS` attributes, fewer than boxes): ``channel_cosine_min``, the cosine
      of each attribute over all samples and boxes, the worst one (``channel_cosine_argmin``
      says which): a whole-output cosine hardly sees YOLO's scores beside its pixel boxes;
    * [N, classes] outputs (classes ≥ 2): ``top1_agreement`` and, with labels, each
      model's top-1 and top-5 accuracy over the samples that have one (matched by batch id;
      a label outside the classes is a miss, counted in ``labels_out_of_range``);
    * ``integer`` outputs: ``integer_mismatches``; an output equal to a feed on every batch
      (``integer_pass_through``) must match exactly, a computed one (argmax) is reported;
    * ``tokens`` outputs: padding positions are left out of every metric;
      ``token_cosine_mean`` / ``token_cosine_p5`` over the real tokens' vectors;
    * ``embedding`` outputs: ``pairwise_spearman`` over at most :data:`MAX_PAIRWISE_SAMPLES`
      samples (beyond that those whose stream position hashes lowest, the same subset
      whatever the batch size; ``pairwise_samples`` says how many).

    Never an exception: elements where either output is NaN/±Inf are left out and counted
    (``nonfinite_reference``/``_candidate``; disagreeing ones in ``nonfinite_mismatch``);
    an all-zero reference gives ``rel_l2_error`` 0 (candidate zero too) or +inf and
    ``snr_db`` +inf (equal) or −inf; a sample's cosine is 1.0 when both are all-zero, 0.0
    when one is; a candidate of another shape is recorded in ``shape_error`` (the batch is
    skipped); ``pairwise_spearman`` is None with fewer than 3 samples or constant
    similarities.
    """

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
        self.kind: str | None = None  # decided on the first batch (output_kind)
        self.integer_mismatches = 0
        self.integer_pass_through = True
        self.token_cos_sum = 0.0
        self.token_cosines: list[np.ndarray] = []  # float32, per real token, for the percentile
        self.held_keys = np.zeros(0, dtype=np.uint64)  # embeddings kept for pairwise_spearman
        self.held_reference: np.ndarray | None = None
        self.held_candidate: np.ndarray | None = None

    def update(
        self,
        reference: np.ndarray,
        candidate: np.ndarray,
        ids: Sequence[str] | None = None,
        labels: Mapping[str, int] | None = None,
        feeds: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Add one batch. ``ids`` (one per sample) tell whether axis 0 is the batch axis
        (its length equals ``len(ids)``) and match ``labels``. ``feeds``: the model inputs
        of this batch — whether it is a sequence model, and its attention mask
        (:mod:`onnxopt.validate.output_kinds`); without them no output is ``tokens`` or
        ``embedding``."""
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
        if self.kind is None:
            self.kind = output_kind(self.name, reference, feeds, per_row)
        if self.kind == "integer":
            self.integer_mismatches += int(np.count_nonzero(reference != candidate))
            self.integer_pass_through = self.integer_pass_through and any(
                value.shape == reference.shape and np.array_equal(value, reference) for value in (feeds or {}).values())
        tokens = self.kind == "tokens" and per_row and a.ndim == 3
        padding = 0  # masked elements: zero in both models, then left out of the counts
        mask = token_mask(feeds, a.shape[:2]) if tokens else None
        if mask is not None:
            a = np.where(mask[:, :, None], a, 0.0)
            b = np.where(mask[:, :, None], b, 0.0)
            padding = int((~mask).sum()) * a.shape[2]

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
        count = int(both.sum()) - padding
        self.elements += count
        if count:
            self.max_abs = max(self.max_abs, float(diff[both].max()) if not both.all() else float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.sum_sq_ref += float(np.square(a).sum())
        self.sum_sq_diff += float(np.square(diff).sum())

        a_rows, b_rows = a.reshape(rows, -1), b.reshape(rows, -1)
        cosine = _cosines(a_rows, b_rows, "ij,ij->i")
        if self.kind != "integer":
            self.cos_sum += float(cosine.sum())
            self.cos_min = min(self.cos_min, float(cosine.min()))
            self.cosines.append(np.asarray(cosine, dtype=np.float64).ravel())
        if tokens:
            self._update_tokens(a, b, mask)
        if self.kind == "embedding" and per_row:
            self._hold_embeddings(a_rows, b_rows)
        self.samples += rows

        if count:
            points_a, points_d = (abs_a, diff) if both.all() else (abs_a[both], diff[both])
            self.env_a, self.env_d = _upper_hull(
                np.concatenate([self.env_a, points_a.ravel()]), np.concatenate([self.env_d, points_d.ravel()])
            )

        self._update_channels(a, b, per_row and self.kind not in ("tokens", "integer"))
        is_classifier = self.kind == "classifier" and per_row and reference.ndim == 2 and reference.shape[1] >= 2
        self.classifier = is_classifier if self.classifier is None else (self.classifier and is_classifier)
        if is_classifier:
            self._update_classes(reference, candidate, ids, labels)

    def _update_tokens(self, a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> None:
        """Per-token cosines of [batch, seq, dim] outputs, real tokens only."""
        cosine = _cosines(a, b, "nsd,nsd->ns")
        real = cosine[mask] if mask is not None else cosine.ravel()
        self.token_cos_sum += float(real.sum())
        self.token_cosines.append(real.astype(np.float32))

    def _hold_embeddings(self, a_rows: np.ndarray, b_rows: np.ndarray) -> None:
        """Keep the embeddings of the (at most MAX_PAIRWISE_SAMPLES) samples whose stream
        position hashes lowest: a deterministic uniform subset."""
        if self.held_reference is not None and self.held_reference.shape[1] != a_rows.shape[1]:
            return
        keys = _sample_keys(np.arange(self.samples, self.samples + a_rows.shape[0]))
        reference = a_rows.astype(np.float32)
        candidate = b_rows.astype(np.float32)
        if self.held_reference is not None:
            keys = np.concatenate([self.held_keys, keys])
            reference = np.concatenate([self.held_reference, reference])
            candidate = np.concatenate([self.held_candidate, candidate])
        if keys.size > MAX_PAIRWISE_SAMPLES:
            keep = np.sort(np.argpartition(keys, MAX_PAIRWISE_SAMPLES - 1)[:MAX_PAIRWISE_SAMPLES])
            keys, reference, candidate = keys[keep], reference[keep], candidate[keep]
        self.held_keys, self.held_reference, self.held_candidate = keys, reference, candidate

    def _update_channels(self, a: np.ndarray, b: np.ndarray, per_row: bool) -> None:
        """Per-attribute sums of detection-like outputs (class docstring)."""
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
        m.kind = self.kind or "other"
        if self.kind == "integer":
            m.integer_mismatches = self.integer_mismatches
            m.integer_pass_through = self.integer_pass_through
        if self.token_cosines:
            token_cosines = np.concatenate(self.token_cosines)
            m.tokens = int(token_cosines.size)
            if m.tokens:
                m.token_cosine_mean = self.token_cos_sum / m.tokens
                m.token_cosine_p5 = cosine_percentile(token_cosines, 5)
        if self.held_reference is not None:
            m.pairwise_samples = int(self.held_reference.shape[0])
            m.pairwise_spearman = pairwise_spearman(self.held_reference, self.held_candidate)
        if self.samples and self.kind != "integer":
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
            if m.kind == "other":
                m.kind = "detection"
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
        feeds: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Add one batch of every output; ``feeds``: the batch's model inputs (see
        :meth:`OutputAccumulator.update`)."""
        for name, accumulator in self.outputs.items():
            accumulator.update(reference[name], candidate[name], ids, labels, feeds)

    def result(self) -> list[OutputMetrics]:
        return [accumulator.result() for accumulator in self.outputs.values()]


def compute_metrics(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    ids: Sequence[str] | None = None,
    labels: Mapping[str, int] | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> list[OutputMetrics]:
    """Metrics of one batch of outputs (a convenience over :class:`MetricsAccumulator`)."""
    accumulator = MetricsAccumulator(reference)
    accumulator.update(reference, candidate, ids, labels, feeds)
    return accumulator.result()


