"""What kind of output a model has, and the rank statistics its kind is judged by.

Each output gets a kind on its first batch (:func:`output_kind`): ``integer`` (compared
element by element), ``tokens`` (a sequence model's [batch, seq, dim] output: padding
positions, where the batch's attention mask (:func:`token_mask`) is 0, are left out of
every metric), ``embedding`` (a sequence model's [batch, dim] output: judged by
:func:`pairwise_spearman`, whether retrieval ranks pairs of samples alike),
``classifier`` ([N, classes]: top-1 agreement), ``detection`` or ``other``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

from onnxopt.analysis.inputs import MASK_NAME, base_name
from onnxopt.validate.text import TOKEN_IDS_NAME

#: A float [N, dim] output of a sequence model is an embedding from this width on
#: (sentence embeddings have 128–1024 dims; text classifiers a few labels).
EMBEDDING_MIN_DIM = 64
#: Output names that say classifier: such [N, dim] outputs of sequence models keep top-1 agreement.
_CLASSIFIER_NAME = re.compile(r"logit|prob|score|label|class")


def _feed_roles(feeds: Mapping[str, np.ndarray] | None, rows: int) -> tuple[bool, list[np.ndarray]]:
    """(whether the feeds are a sequence model's, its attention-mask-like [rows, seq] feeds).

    A sequence model has a mask-like [batch, seq] input (named like ``attention_mask``,
    ``mask``, ``*_mask``: integer, bool or float), an integer [batch, seq] input named like
    token ids (``input_ids``, ``ids``, ``tokens``, …), or only integer [batch, seq] inputs:
    the names text data fills (:mod:`onnxopt.validate.text`).
    """
    if not feeds:
        return False, []

    masks: list[np.ndarray] = []
    token_ids = False
    for name, value in feeds.items():
        value = np.asarray(value)
        if value.ndim != 2 or value.shape[0] != rows:
            continue
        base = base_name(name)
        if MASK_NAME.fullmatch(base) and value.dtype.kind in "iubf":
            masks.append(value)
        elif TOKEN_IDS_NAME.fullmatch(base) and value.dtype.kind in "iu":
            token_ids = True
    all_integer = all(np.asarray(v).ndim == 2 and np.asarray(v).dtype.kind in "iu" for v in feeds.values())
    return bool(masks) or token_ids or all_integer, masks


def output_kind(name: str, reference: np.ndarray, feeds: Mapping[str, np.ndarray] | None = None,
                per_row: bool = True) -> str:
    """The kind of an output (module docstring), from its dtype and shape, the feeds of the
    same batch (is it a sequence model? see :func:`_feed_roles`) and its name (does it say
    logits?). ``per_row``: axis 0 is the batch.

    ``integer``: any integer or bool output. ``tokens``: a float [batch, seq, dim] output of
    a sequence model. ``embedding``: a float [batch, dim] output of a sequence model with
    ``dim ≥ EMBEDDING_MIN_DIM`` whose name does not say logits/probabilities/scores/labels/
    classes (text classifiers stay ``classifier``). ``classifier``: [N, classes] otherwise.
    ``other``: anything else (the accumulator turns it into ``detection`` where attribute
    channel cosines apply)."""
    reference = np.asarray(reference)
    if reference.dtype.kind in "iub":
        return "integer"
    if not per_row or reference.ndim < 2:
        return "other"
    sequence, _masks = _feed_roles(feeds, reference.shape[0])
    if sequence and reference.ndim == 3:
        return "tokens"
    if reference.ndim == 2:
        if (sequence and reference.shape[1] >= EMBEDDING_MIN_DIM
                and not _CLASSIFIER_NAME.search(base_name(name))):
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
