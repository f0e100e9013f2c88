"""How close a quantized model's outputs are to the float model's, on a few calibration
samples (a token output's real positions only): Pearson r per sample and per output channel,
and the squared error relative to the outputs' spread.

The ``int8`` pass's library check and its float fallback (``keep_float=``) judge candidates
with it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.analysis.inputs import attention_mask

from . import _quant_common as qc

#: Per-channel correlation only where each channel has at least this many values (a
#: [N, classes] output over a handful of samples has too few: its per-class r is noise).
_MIN_CHANNEL_VALUES = 32


@dataclass(frozen=True)
class Similarity:
    """A candidate's outputs against the float model's, over the same samples."""

    mean_r: float  # per output, the mean per-sample Pearson r; then the mean over outputs
    worst_channel_r: float  # the lowest per-channel Pearson r over every output (mean_r where none)

    @property
    def score(self) -> float:
        return (self.mean_r + self.worst_channel_r) / 2

    def describe(self) -> str:
        return f"{self.mean_r:.4f} / {self.worst_channel_r:.4f}"


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r of two arrays; None where the first is constant (nothing to correlate with),
    0 where only the second is."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    norm_a, norm_b = np.sqrt((a * a).sum()), np.sqrt((b * b).sum())
    if norm_a == 0 or not np.isfinite(norm_a):
        return None
    if norm_b == 0 or not np.isfinite(norm_b):
        return 0.0
    return float(np.clip((a * b).sum() / (norm_a * norm_b), -1.0, 1.0))


def channel_axis(shape: tuple[int, ...]) -> int | None:
    """The channel axis of an output: the last of [N, T, C] (a detector's boxes, a sequence's
    classes); of an image-like output the smaller of axis 1 (NCHW) and the last (NHWC);
    None for [N, C]."""
    if len(shape) < 3:
        return None
    if len(shape) == 3:
        return 2
    return 1 if shape[1] <= shape[-1] else len(shape) - 1


def output_similarity(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[float, float | None]:
    """(mean per-sample r, worst per-channel r or None) of one output, samples on axis 0."""
    per_sample = []
    for ref, out in zip(reference, candidate):
        for i in range(ref.shape[0]):
            r = pearson(ref[i], out[i])
            if r is not None:
                per_sample.append(r)
    ref, out = np.concatenate(reference), np.concatenate(candidate)
    axis = channel_axis(ref.shape)
    worst = None
    if axis is not None and ref.size // max(ref.shape[axis], 1) >= _MIN_CHANNEL_VALUES:
        ref_c = np.moveaxis(ref, axis, 0).reshape(ref.shape[axis], -1)
        out_c = np.moveaxis(out, axis, 0).reshape(ref.shape[axis], -1)
        rs = [r for r in (pearson(a, b) for a, b in zip(ref_c, out_c)) if r is not None]
        worst = min(rs) if rs else None
    if not per_sample:
        per_sample = [worst if worst is not None else pearson(ref, out) or 0.0]
    return float(np.mean(per_sample)), worst


def real_tokens(outputs: list[np.ndarray], feeds: qc.Feeds) -> list[np.ndarray]:
    """``outputs`` with the padded positions of token outputs ([batch, seq, …] like the feeds'
    attention mask) left out, as [real positions, 1, …] (each token a sample): what a padded
    position holds is never used, and no calibration range was meant for it."""
    mask = attention_mask(feeds)
    if mask is None:
        return outputs
    return [out[mask][:, None] if out.ndim >= 3 and out.shape[:2] == mask.shape and mask.any() else out
            for out in outputs]


class FloatReference:
    """The float model's outputs on a few samples, computed once, to score candidates against.

    Candidates run with onnxruntime's default optimizations (their integer kernels, as they
    will be run) and ``session_config`` (e.g. exact integer kernels)."""

    def __init__(self, reference_model: onnx.ModelProto, samples: list[qc.Feeds],
                 session_config: dict[str, str] | None = None) -> None:
        reference = qc.ort_session(reference_model, log_level=4)
        self.names = [o.name for o in reference.get_outputs()
                      if o.type in ("tensor(float)", "tensor(float16)", "tensor(double)")]
        self.samples = samples
        self.config = session_config or {}
        self.expected = [real_tokens(reference.run(self.names, feeds), feeds) for feeds in samples]

    def first(self, count: int) -> FloatReference:
        """The same reference on its first ``count`` samples (nothing recomputed)."""
        subset = copy.copy(self)
        subset.samples, subset.expected = self.samples[:count], self.expected[:count]
        return subset

    def similarity(self, candidate: onnx.ModelProto) -> Similarity:
        got = self._outputs(candidate)
        means, worsts = [], []
        for k in range(len(self.names)):
            mean, worst = output_similarity([e[k] for e in self.expected], [g[k] for g in got])
            means.append(mean)
            if worst is not None:
                worsts.append(worst)
        mean_r = float(np.mean(means)) if means else 0.0
        return Similarity(mean_r, min(worsts) if worsts else mean_r)

    def relative_error(self, candidate: onnx.ModelProto) -> float:
        """The squared error of the candidate's outputs over their variance about the mean,
        per output, then the mean over outputs: 0 for the float model's outputs. Unlike r it
        counts offset and scale errors too, which move a classifier's top class."""
        got = self._outputs(candidate)
        errors = []
        for k in range(len(self.names)):
            ref = np.concatenate([np.asarray(e[k], np.float64).ravel() for e in self.expected])
            out = np.concatenate([np.asarray(g[k], np.float64).ravel() for g in got])
            spread = float(np.sum((ref - ref.mean()) ** 2))
            # a constant output has no spread: its mean squared error (0 where it stays constant)
            errors.append(float(np.sum((out - ref) ** 2)) / spread if spread > 0 else float(np.mean((out - ref) ** 2)))
        return float(np.mean(errors)) if errors else 0.0

    def _outputs(self, candidate: onnx.ModelProto) -> list[list[np.ndarray]]:
        runner = qc.ort_session(candidate, log_level=4, config=self.config)
        return [real_tokens(runner.run(self.names, feeds), feeds) for feeds in self.samples]


def similarity(reference_model: onnx.ModelProto, candidates: list[onnx.ModelProto], samples: list[qc.Feeds],
               session_config: dict[str, str] | None = None) -> list[Similarity]:
    """How close each candidate's float outputs are to ``reference_model``'s on ``samples``."""
    reference = FloatReference(reference_model, samples, session_config)
    return [reference.similarity(candidate) for candidate in candidates]
