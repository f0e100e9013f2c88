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

Outputs of sequence models (issue 15). Each output gets a ``kind``, decided on its first
batch from its dtype and shape and from the model's inputs (the feeds of that batch; see
:func:`output_kind`):

* ``integer`` — any integer or bool output (token ids and masks passed through, argmax
  indices): ``integer_mismatches`` counts the elements that differ. An output that
  passes an input through (its reference values equal a feed on every batch) must match
  exactly: any difference fails the gate. A computed one (argmax labels) is reported,
  not failed: a lossy pass may flip a few labels, and no bound for that was measured.
  No cosine, no top-1 agreement.
* A model is a *sequence model* when one of its inputs is an attention-mask-like
  ``[batch, seq]`` array (named like ``attention_mask``, ``mask``, ``*_mask``: integer,
  bool or float), or an integer ``[batch, seq]`` array named like token ids
  (``input_ids``, ``ids``, ``tokens``, …), or when all its inputs are integer
  ``[batch, seq]`` arrays — the names text data fills (:mod:`onnxopt.validate.text`).
* ``tokens`` — a float ``[batch, seq, dim]`` output of a sequence model (token
  embeddings, hidden states): positions where the attention mask of the same batch is 0
  (the mask input shaped ``[batch, seq]`` like the output's first two axes) are padding
  and are left out of *every* metric of the output — element errors, the per-sample
  cosine (over the sample's real tokens), NaN/Inf counts. ``token_cosine_mean`` /
  ``token_cosine_p5``: the cosine of each real token's vector, averaged and the 5th
  percentile (as :func:`cosine_percentile`), over ``tokens`` tokens. Without a matching
  mask every position counts. The per-token cosines are kept for the percentile (4 bytes
  a token; the outputs are not).
* ``embedding`` — a float ``[batch, dim]`` output of a sequence model with
  ``dim ≥ EMBEDDING_MIN_DIM`` (64) whose name does not say logits/probabilities/scores/
  labels/classes (sentence embeddings, pooled outputs). Text classifiers (a few labels,
  or a name that says so) stay ``classifier``. No top-1 agreement (a ranking of the
  embedding dimensions means nothing); instead ``pairwise_spearman``: the Spearman rank
  correlation between the reference's and the candidate's cosine similarities over all
  pairs of the evaluation samples — whether retrieval ranks the same. That needs every
  sample's embedding: at most ``MAX_PAIRWISE_SAMPLES`` (2,000) samples' embeddings are
  held per output, reference and candidate, as float32 (2 · 2,000 · dim · 4 bytes: 6 MB
  at dim 384); beyond that a deterministic uniform subset is kept (the 2,000 samples
  whose position in the stream hashes lowest: the same subset whatever the batch size),
  and ``pairwise_samples`` says how many samples the pairs came from.
* ``classifier`` — ``[N, classes]`` otherwise (top-1 agreement, above); ``detection`` —
  an output with attribute-channel cosines; ``other`` — anything else.

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
* an integer output that differs in any element always fails the gate.
* ``pairwise_spearman`` is None with fewer than 3 samples, or when either model's
  similarities are all equal (no ranking to compare).

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
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from onnxopt.errors import InputError

TOP_K = 5
#: Detection-like outputs ([N, boxes, attributes]) with at most this many attributes get
#: a cosine per attribute (YOLO: 4 box coordinates, objectness, 80 COCO classes).
MAX_CHANNELS = 128
#: A float [N, dim] output of a sequence model is an embedding from this width on
#: (sentence embeddings have 128–1024 dims; text classifiers a few labels).
EMBEDDING_MIN_DIM = 64
#: Embeddings held per output for ``pairwise_spearman`` (reference and candidate, float32).
MAX_PAIRWISE_SAMPLES = 2000
#: Output names that say classifier: such [N, dim] outputs of sequence models keep top-1 agreement.
_CLASSIFIER_NAME = re.compile(r"logit|prob|score|label|class")


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


# --------------------------------------------------------------------------- sequence models


def _feed_roles(feeds: Mapping[str, np.ndarray] | None, rows: int) -> tuple[bool, list[np.ndarray]]:
    """(whether the feeds are a sequence model's, its attention-mask-like [rows, seq] feeds).

    The rule of the module docstring: a mask-like [batch, seq] input, an integer
    [batch, seq] input named like token ids, or only integer [batch, seq] inputs.
    """
    if not feeds:
        return False, []
    from onnxopt.validate.inputs import _base_name
    from onnxopt.validate.text import _IDS, _MASK

    masks: list[np.ndarray] = []
    token_ids = False
    for name, value in feeds.items():
        value = np.asarray(value)
        if value.ndim != 2 or value.shape[0] != rows:
            continue
        base = _base_name(name)
        if _MASK.fullmatch(base) and value.dtype.kind in "iubf":
            masks.append(value)
        elif _IDS.fullmatch(base) and value.dtype.kind in "iu":
            token_ids = True
    all_integer = all(np.asarray(v).ndim == 2 and np.asarray(v).dtype.kind in "iu" for v in feeds.values())
    return bool(masks) or token_ids or all_integer, masks


def output_kind(name: str, reference: np.ndarray, feeds: Mapping[str, np.ndarray] | None = None,
                per_row: bool = True) -> str:
    """``integer``, ``tokens``, ``embedding``, ``classifier`` or ``other`` for an output
    (module docstring): from its dtype and shape, the feeds of the same batch (is it a
    sequence model?) and its name (does it say logits?). ``per_row``: axis 0 is the batch."""
    reference = np.asarray(reference)
    if reference.dtype.kind in "iub":
        return "integer"
    if not per_row or reference.ndim < 2:
        return "other"
    sequence, _masks = _feed_roles(feeds, reference.shape[0])
    if sequence and reference.ndim == 3:
        return "tokens"
    if reference.ndim == 2:
        from onnxopt.validate.inputs import _base_name

        if (sequence and reference.shape[1] >= EMBEDDING_MIN_DIM
                and not _CLASSIFIER_NAME.search(_base_name(name))):
            return "embedding"
        if reference.shape[1] >= 2:
            return "classifier"
    return "other"


def token_mask(feeds: Mapping[str, np.ndarray] | None, shape: tuple[int, int]) -> np.ndarray | None:
    """Bool [batch, seq], True for real tokens, from the first attention-mask-like feed
    shaped like ``shape`` (a token output's first two axes); None when there is none."""
    _sequence, masks = _feed_roles(feeds, shape[0])
    for mask in masks:
        if mask.shape == tuple(shape):
            return mask != 0
    return None


def _sample_keys(index: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random uint64 per sample position (splitmix64): the samples with the
    lowest keys are a deterministic uniform subset, whatever the batch size."""
    z = index.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, ties sharing the mean of their ranks (as Spearman's rho wants)."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    new = np.empty(values.size, dtype=bool)
    new[:1] = True
    new[1:] = ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], values.size)
    group_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = group_rank[np.cumsum(new) - 1]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation of two equally long vectors (average ranks for ties);
    None when fewer than 2 values or either is constant."""
    x, y = np.asarray(x).ravel(), np.asarray(y).ravel()
    if x.size < 2 or x.size != y.size:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denominator = math.sqrt(float(np.dot(rx, rx)) * float(np.dot(ry, ry)))
    if denominator == 0:
        return None
    return max(-1.0, min(1.0, float(np.dot(rx, ry)) / denominator))


def pairwise_similarities(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair i < j of rows (a zero row is similar to nothing: 0)."""
    e = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(norms > 0, e / norms, 0.0)
    upper = np.triu_indices(e.shape[0], k=1)
    return (e @ e.T)[upper]


def pairwise_spearman(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Spearman correlation between the two models' pairwise cosine similarities over the
    rows (samples) of ``reference`` and ``candidate`` ([n, dim] each): 1 when every pair is
    ranked alike — what retrieval with these embeddings sees. None with fewer than 3 rows."""
    if len(reference) < 3:
        return None
    return spearman(pairwise_similarities(reference), pairwise_similarities(candidate))



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
    kind: str = "other"  # integer, tokens, embedding, classifier, detection, other (module docstring)
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
        of this batch — whether it is a sequence model, and its attention mask (module
        docstring); without them no output is ``tokens`` or ``embedding``."""
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
        dots = np.einsum("ij,ij->i", a_rows, b_rows)
        norm_a = np.sqrt(np.einsum("ij,ij->i", a_rows, a_rows))
        norm_b = np.sqrt(np.einsum("ij,ij->i", b_rows, b_rows))
        with np.errstate(divide="ignore", invalid="ignore"):
            cosine = np.where((norm_a > 0) & (norm_b > 0), dots / (norm_a * norm_b), 0.0)
        cosine = np.where((norm_a == 0) & (norm_b == 0), 1.0, np.clip(cosine, -1.0, 1.0))
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
        dots = np.einsum("nsd,nsd->ns", a, b)
        norm_a = np.sqrt(np.einsum("nsd,nsd->ns", a, a))
        norm_b = np.sqrt(np.einsum("nsd,nsd->ns", b, b))
        with np.errstate(divide="ignore", invalid="ignore"):
            cosine = np.where((norm_a > 0) & (norm_b > 0), dots / (norm_a * norm_b), 0.0)
        cosine = np.where((norm_a == 0) & (norm_b == 0), 1.0, np.clip(cosine, -1.0, 1.0))
        real = cosine[mask] if mask is not None else cosine.ravel()
        self.token_cos_sum += float(real.sum())
        self.token_cosines.append(real.astype(np.float32))

    def _hold_embeddings(self, a_rows: np.ndarray, b_rows: np.ndarray) -> None:
        """Keep the embeddings of the (at most MAX_PAIRWISE_SAMPLES) samples whose stream
        position hashes lowest: a deterministic uniform subset (module docstring)."""
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


# --------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class Tolerances:
    """Gate thresholds; None = not checked. ``min_cosine`` applies to the worst sample,
    ``min_cosine_p5`` to the 5th percentile of the per-sample cosines (one bad sample in a
    hundred does not decide), ``min_channel_cosine`` to the worst attribute channel of
    detection-like outputs (see the module docstring; other outputs are not checked),
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
