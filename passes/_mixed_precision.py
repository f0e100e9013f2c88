"""``mixed=auto`` for the ``fp16`` pass: keep in float32 the fewest nodes that keep every output
within ``min_cosine`` (the worst cosine similarity over samples and outputs).

It runs the float32 model and candidate conversions on the calibration data (seeded random
inputs, with a warning, where there is none) on the provider the run validates on: CUDA
where it loads, else the CPU. The search is onnxconverter-common's
``auto_convert_mixed_precision`` bisection: convert a segment of the candidate nodes (plus
those already accepted); within tolerance, accept it; else split it, down to single nodes,
which stay float32, each reported with the cosine measured when it ran in float16. A
candidate that does not convert or load (:func:`~._quant_common.check_loads`) scores −1.
The samples are held in memory, as every attempt reruns them. On the CPU, onnxruntime
drops the Cast pairs between ops it runs in float32, so an overflow that a float16 device
would show may not show there.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from onnxopt.errors import InputError, OnnxoptError

from . import _quant_common as qc
from ._fp16_convert import Float16Converter

logger = logging.getLogger(__name__)


def measurement_feeds(context, base: onnx.ModelProto, limit: int, report) -> list[qc.Feeds]:
    """Up to ``limit`` one-sample feeds: the calibration data, else seeded random inputs (warned)."""
    specs = qc.input_specs(base)
    if context.calibration is None:
        report.warn("mixed=auto: no calibration data (--data); measured on seeded random inputs, "
                    "which may not show the errors real inputs cause")
        return list(qc.iter_samples(qc.random_samples(context, base, limit), specs, "random data", limit))
    origin = context.calibration_description or "calibration data"
    feeds = list(qc.iter_samples(context.calibration(), specs, origin, limit))
    if not feeds:
        raise InputError(f"{origin} is empty: no samples to measure float16 error on")
    return feeds


def keep_float32(base: onnx.ModelProto, converter: Float16Converter, kept: dict[str, dict],
                 feeds: list[qc.Feeds], provider: str, min_cosine: float, progress, report) -> dict[str, dict]:
    """Bisect for the nodes to keep in float32 besides ``kept`` (node name -> reason entry);
    returns the new entries. ``progress(attempts)`` is called before each conversion."""
    reference = _run(base, feeds, provider, fp16_inputs=False)
    candidates = [n.name for n in base.graph.node
                  if n.op_type not in ("Constant", "Cast") and not converter.is_blocked(n, frozenset(kept))]
    report.figures["mixed_provider"] = provider
    report.figures["mixed_samples"] = len(feeds)
    attempts = 0
    scores: dict[frozenset[str], float] = {}

    def score(block: frozenset[str]) -> float:
        nonlocal attempts
        block = block | frozenset(kept)
        if block in scores:
            return scores[block]
        attempts += 1
        progress(attempts)
        scores[block] = -1.0
        try:
            converted = converter.convert(base, block)
        except OnnxoptError:
            raise
        except Exception as exc:  # a failed conversion counts as "not within tolerance"
            logger.debug("mixed precision attempt failed to convert: %s", exc)
            return -1.0
        if qc.check_loads(converted) is not None:
            return -1.0
        outputs = _run(converted, feeds, provider, fp16_inputs=not converter.keep_io_types)
        scores[block] = _worst_cosine(reference, outputs)
        return scores[block]

    # Segments as in onnxconverter-common's auto_convert_mixed_precision: a list of
    # [start, size, state] over the candidates; state None (untested), True (float16
    # accepted) or False (kept in float32).
    segments: list[list] = [[0, len(candidates), None]] if candidates else []
    measured: dict[str, float] = {}
    while True:
        open_segments = [s for s in segments if s[2] is None]
        if not open_segments:
            break
        segment = max(open_segments, key=lambda s: s[1])
        trying = set(candidates[segment[0] : segment[0] + segment[1]])
        accepted = {c for s in segments if s[2] is True for c in candidates[s[0] : s[0] + s[1]]}
        block = frozenset(set(candidates) - accepted - trying)
        cosine = score(block)
        if cosine >= min_cosine:
            segment[2] = True
        elif segment[1] == 1:
            segment[2] = False
            measured[candidates[segment[0]]] = cosine
        else:
            half = segment[1] // 2
            at = segments.index(segment)
            segments[at : at + 1] = [[segment[0], half, None], [segment[0] + half, segment[1] - half, None]]
    found = {}
    for name, cosine in measured.items():
        shown = "does not convert or load" if cosine < 0 else f"worst cosine {cosine:.5f}"
        found[name] = {
            "reason": f"mixed=auto: in float16 the outputs reach {shown} < {min_cosine}",
            "op": next(n.op_type for n in base.graph.node if n.name == name),
            "cosine": round(cosine, 6),
        }
    report.figures["mixed_attempts"] = attempts
    final = score(frozenset(found))  # the model the pass will write
    report.figures["worst_cosine"] = round(final, 6)
    if final < min_cosine:
        report.warn(f"mixed=auto: worst cosine {final:.5f} stays below {min_cosine} "
                    "even with the failing nodes in float32")
    return found


def _run(proto: onnx.ModelProto, feeds: list[qc.Feeds], provider: str, fp16_inputs: bool) -> list[list[np.ndarray]]:
    session = qc.ort_session(proto, provider)
    wanted = {i.name: i.type for i in session.get_inputs()}
    results = []
    for sample in feeds:
        if fp16_inputs:
            sample = {k: v.astype(np.float16) if v.dtype == np.float32 and wanted.get(k) == "tensor(float16)" else v
                      for k, v in sample.items()}
        results.append(session.run(None, sample))
    return results


def _worst_cosine(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """Worst cosine similarity over samples and outputs (1 for two zero outputs, 0 for one)."""
    worst = 1.0
    for ref_outputs, cand_outputs in zip(reference, candidate):
        for a, b in zip(ref_outputs, cand_outputs):
            a = np.asarray(a, dtype=np.float64).ravel()
            b = np.asarray(b, dtype=np.float64).ravel()
            if a.shape != b.shape:
                return 0.0
            finite = np.isfinite(a)
            if not np.array_equal(finite, np.isfinite(b)):
                return 0.0
            a, b = a[finite], b[finite]
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            if na == 0 and nb == 0:
                cosine = 1.0
            elif na == 0 or nb == 0:
                cosine = 0.0
            else:
                cosine = float(np.dot(a, b) / (na * nb))
            worst = min(worst, cosine)
    return worst
