"""``library_check``: the ``int8`` pass is never worse than the library it wraps.

Plain ``quantize_static``'s model (per-channel MinMax, QDQ, the same op types, activation and
weight types, 8-bit weights, outputs quantized, no bias correction) is built from the MinMax
ranges of the pass's own calibration run and the same pre-processed model. Both models
and the float one run on the first 8 calibration samples; per output (a token output's real
positions only), the mean per-sample Pearson r and the worst per-channel Pearson r against
the float model
(:func:`similarity`) decide, with a margin of 0.002 (:func:`library_is_better`), which
model the pass returns.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.analysis.inputs import attention_mask
from onnxopt.errors import OnnxoptError
from onnxopt.runtime import first_line

from . import _quant_common as qc

#: The library check compares on this many calibration samples ...
CHECK_SAMPLES = 8
#: ... and keeps plain quantize_static's model only when its score is higher by more than this.
CHECK_MARGIN = 0.002
#: Per-channel correlation only where each channel has at least this many values (a
#: [N, classes] output over a handful of samples has too few: its per-class r is noise).
_MIN_CHANNEL_VALUES = 32


def library_check(prepared: onnx.ModelProto, quantized: onnx.ModelProto,
                  build_library: Callable[[], onnx.ModelProto], probe: qc.Feeds,
                  samples: Callable[[], Iterable[qc.Feeds]], report) -> tuple[onnx.ModelProto, bool]:
    """(the model to keep, whether it is the library's): this pass's ``quantized``, or plain
    ``quantize_static``'s (``build_library()``) where that is closer to ``prepared``'s outputs."""
    figures = report.figures
    try:
        library = build_library()
        problem = qc.check_loads(library, probe)
    except OnnxoptError:
        raise
    except Exception as exc:  # the quantizer fails in many ways on unusual graphs
        problem = first_line(exc)
    if problem is not None:
        figures["library_check"] = f"not run: plain quantize_static's model failed ({problem})"
        return quantized, False

    feeds = list(itertools.islice(samples(), CHECK_SAMPLES))
    try:
        ours, theirs = similarity(prepared, [quantized, library], feeds, report.validate_with)
    except OnnxoptError:
        raise
    except Exception as exc:  # onnxruntime cannot run one of them
        figures["library_check"] = f"not run: {first_line(exc)}"
        return quantized, False
    keep_library = library_is_better(ours, theirs)
    figures["library_check"] = (
        f"{len(feeds)} calibration samples, mean r / worst channel r against FP32: this pass "
        f"{ours.describe()}, plain quantize_static (per-channel MinMax) {theirs.describe()}; kept "
        + ("plain quantize_static's model" if keep_library else "this pass's model"))
    figures["result"] = "plain quantize_static (per-channel MinMax)" if keep_library else "this pass"
    if not keep_library:
        return quantized, False
    report.warn(
        f"plain quantize_static's model was closer to FP32 on {len(feeds)} calibration samples "
        f"({theirs.describe()} against {ours.describe()}): kept it — this pass's settings (method, "
        "bias correction, reduce_range, float outputs) are not in the result")
    figures["float_outputs"] = 0
    figures.pop("quantized_outputs", None)
    if "bias_correction" in figures:
        figures["bias_correction"] = f"{figures['bias_correction']} (not in the kept model)"
    return library, True


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


def library_is_better(ours: Similarity, theirs: Similarity, margin: float = CHECK_MARGIN) -> bool:
    """Keep plain quantize_static's model? Not where this pass's is within ``margin`` of it on
    both figures (mean r, worst channel r); yes where the library's is within ``margin`` of
    this pass's on both (so better on one); where each wins one, the higher mean of the two."""
    pairs = ((ours.mean_r, theirs.mean_r), (ours.worst_channel_r, theirs.worst_channel_r))
    if all(a >= b - margin for a, b in pairs):
        return False
    if all(b >= a - margin for a, b in pairs):
        return True
    return theirs.score > ours.score


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


def similarity(reference_model: onnx.ModelProto, candidates: list[onnx.ModelProto], samples: list[qc.Feeds],
               session_config: dict[str, str] | None = None) -> list[Similarity]:
    """How close each candidate's float outputs are to ``reference_model``'s on ``samples``.

    The candidates run with onnxruntime's default optimizations (their integer kernels, as
    they will be run) and ``session_config`` (e.g. exact integer kernels)."""
    reference = qc.ort_session(reference_model, log_level=4)
    names = [o.name for o in reference.get_outputs() if o.type in ("tensor(float)", "tensor(float16)", "tensor(double)")]
    expected = [real_tokens(reference.run(names, feeds), feeds) for feeds in samples]
    results = []
    for candidate in candidates:
        runner = qc.ort_session(candidate, log_level=4, config=session_config or {})
        got = [real_tokens(runner.run(names, feeds), feeds) for feeds in samples]
        means, worsts = [], []
        for k in range(len(names)):
            mean, worst = output_similarity([e[k] for e in expected], [g[k] for g in got])
            means.append(mean)
            if worst is not None:
                worsts.append(worst)
        mean_r = float(np.mean(means)) if means else 0.0
        results.append(Similarity(mean_r, min(worsts) if worsts else mean_r))
    return results
