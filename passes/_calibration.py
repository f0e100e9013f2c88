"""Activation ranges for the ``int8`` pass: onnxruntime's calibrator, fed one sample at a time.

Calibration streams (onnxruntime issue 10503: storing every activation of every sample
took hundreds of GB). :func:`calibrate` hands onnxruntime's calibrator one sample per
``collect_data`` call: MinMax folds it into a running ``(min, max)`` per tensor, entropy and
percentile into one 2048-bin histogram per tensor, which grows (at fixed bin width) only
when a sample exceeds its range. Memory: one sample's activations plus O(tensors × bins).

``method=entropy`` picks per tensor the window ``[zero − i, zero + i + 1)`` of the histogram
whose 128-level quantization q loses least information, min KL(p‖q) (TensorRT's method),
searched vectorised (onnxruntime's search is pure Python: minutes). The same run also gives
the MinMax ranges (``Calibration.minmax``, for the library check) and each tensor's share of
values in the upper half of its range (``Calibration.upper_shares``, for reduce_range).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxopt.errors import InputError
from onnxopt.runtime import ORT_PROVIDER, first_line

from . import _quant_common as qc

ENTROPY_BINS = 2048
QUANTIZED_BINS = 128
#: Percentile of |x| (symmetric) rather than two-sided percentiles of x.
PERCENTILE_SYMMETRIC = True


@dataclass(frozen=True)
class Calibration:
    """What one calibration run gives the int8 pass."""

    ranges: object  # onnxruntime's TensorsData for the chosen method: what the quantizer reads
    minmax: object  # MinMax TensorsData of the same samples: what plain quantize_static would use
    upper_shares: dict[str, float]  # per tensor, the share of its values in the upper half of its range
    probe: qc.Feeds  # the first sample, kept to check that the quantized model runs
    samples: int

    def lowest(self, tensor: str) -> float | None:
        """The calibrated minimum of ``tensor``, or None where calibration has none (a graph
        input the calibrator did not record, an integer tensor)."""
        if tensor not in self.ranges:
            return None
        try:
            lowest = self.ranges[tensor].range_value[0]
        except AttributeError:
            return None
        return float(np.min(lowest))


def calibrate(path: Path, tmp: Path, samples: Callable[[], Iterable[qc.Feeds]], *, method: str, percentile: float,
              cuda: bool, origin: str, progress: Callable[[int], None]) -> Calibration:
    """Calibrate the model at ``path`` on ``samples()`` (one-sample feeds), files in ``tmp``.

    Raises InputError (one line) when the model cannot run a sample or there is none.
    """
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    calibration_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    extra: dict = {}
    if method == "entropy":
        extra = {"num_bins": ENTROPY_BINS, "num_quantized_bins": QUANTIZED_BINS}
    elif method == "percentile":
        extra = {"num_bins": ENTROPY_BINS, "percentile": percentile, "symmetric": PERCENTILE_SYMMETRIC}
    # onnxruntime's calibrator makes its own session: it takes onnxruntime's provider names
    providers = [ORT_PROVIDER["cuda"], ORT_PROVIDER["cpu"]] if cuda else None
    with qc.quiet("onnxruntime calibrator"), qc.contained(tmp):
        calibrator = create_calibrator(
            path, op_types_to_quantize(), augmented_model_path=str(tmp / "augmented.onnx"),
            calibrate_method=calibration_method, providers=providers, extra_options=extra,
        )
    used = 0
    probe: qc.Feeds | None = None
    try:
        for feeds in samples():
            if probe is None:  # one sample kept to check that the result runs
                probe = {k: v.copy() for k, v in feeds.items()}
            try:
                with qc.quiet("onnxruntime calibrator"):
                    calibrator.collect_data(_OneSample(feeds))
            except Exception as exc:  # onnxruntime rejects the sample (shape, type, content)
                raise InputError(f"{origin}: the model cannot run on sample {used + 1}: {first_line(exc)}") from None
            used += 1
            del feeds
            progress(used)
        if used == 0:
            raise InputError(f"{origin} is empty: no samples to calibrate on")
        with qc.quiet("onnxruntime calibrator"), qc.contained(tmp):
            if method == "entropy":  # onnxruntime's search is pure Python: minutes
                ranges = _entropy_ranges(calibrator.collector.histogram_dict)
            else:
                ranges = calibrator.compute_data()
        collector = getattr(calibrator, "collector", None)  # histogram methods only, not MinMax
        histograms = collector.histogram_dict if collector else None
    finally:
        del calibrator
    return Calibration(
        ranges=ranges,
        minmax=_minmax_ranges(histograms) if histograms is not None else ranges,
        upper_shares=_upper_half_shares(histograms, ranges) if histograms is not None else {},
        probe=probe,
        samples=used,
    )


def op_types_to_quantize() -> list[str]:
    """What quantize_static quantizes by default: every op its QDQ and QLinear registries know."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def _upper_half_shares(histograms: dict, ranges) -> dict[str, float]:
    """Per calibrated tensor, the share of values in the upper half of its range (uint8
    codes ≥ 128 where the range starts at 0), read off the calibration histograms."""
    shares = {}
    for name, histogram in histograms.items():
        hist, edges = np.asarray(histogram[0], np.float64), np.asarray(histogram[1], np.float64)
        if name not in ranges or hist.sum() <= 0:
            continue
        highest = float(np.max(ranges[name].range_value[1]))
        if highest <= 0:
            continue
        centres = (edges[:-1] + edges[1:]) / 2
        shares[name] = float(hist[centres >= highest / 2].sum() / hist.sum())
    return shares


def _minmax_ranges(histograms: dict):
    """onnxruntime's MinMax ranges (each tensor's lowest and highest calibration value) from the
    histograms of the same calibration run: their min and max are recorded on the way."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData

    data = {}
    for name, histogram in histograms.items():
        low, high = histogram[2], histogram[3]
        data[name] = (np.asarray(low, dtype=np.float32).reshape(()), np.asarray(high, dtype=np.float32).reshape(()))
    return TensorsData(CalibrationMethod.MinMax, data)


def _entropy_ranges(histograms: dict):
    """Per tensor, the range whose 128-level quantization loses the least information (KL)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData

    data = {}
    for name, (hist, edges, low, high, _threshold) in histograms.items():
        start, end = _kl_range(np.asarray(hist, dtype=np.float64))
        lo = np.array(max(edges[start], low), dtype=edges.dtype)
        hi = np.array(min(edges[end], high), dtype=edges.dtype)
        data[name] = (lo, hi, hist, edges)
    return TensorsData(CalibrationMethod.Entropy, data)


def _kl_range(hist: np.ndarray, levels: int = QUANTIZED_BINS, max_candidates: int = 256) -> tuple[int, int]:
    """TensorRT's entropy calibration on a histogram symmetric around zero.

    For each candidate window ``[zero - i, zero + i + 1)`` (at least ``levels`` bins): ``p`` is
    the windowed histogram with the outliers folded into its end bins, ``q`` the window
    merged into ``levels`` bins and spread back over p's non-empty bins; the window with the
    smallest KL(p‖q) wins. Vectorised per candidate (onnxruntime's loop is pure Python).
    Returns edge indices (start, end).
    """
    n = hist.size
    zero, half = n // 2, levels // 2
    cumsum = np.concatenate([[0.0], np.cumsum(hist)])
    candidates = list(range(half, zero + 1))
    step = max(1, len(candidates) // max_candidates)
    chosen = candidates[::step] + ([candidates[-1]] if (len(candidates) - 1) % step else [])
    best, best_window = np.inf, (max(zero - candidates[-1], 0), n)
    for i in chosen:
        start, end = zero - i, min(zero + i + 1, n)
        window = hist[start:end]
        p = window.copy()
        p[0] += cumsum[start]
        p[-1] += cumsum[n] - cumsum[end]
        per_level = window.size // levels
        used = per_level * levels
        merged = window[:used].reshape(levels, per_level).sum(1)
        merged[-1] += window[used:].sum()
        nonzero = p != 0
        counts = nonzero[:used].reshape(levels, per_level).sum(1)
        q = np.zeros_like(p)
        spread = np.divide(merged, counts, out=np.zeros_like(merged), where=counts > 0)
        q[:used] = np.repeat(spread, per_level) * nonzero[:used]
        divergence = _kl(p, q)
        if divergence < best:
            best, best_window = divergence, (start, end)
    return best_window


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(p‖q) of two histograms, zeros smoothed to ``eps`` as onnxruntime/MXNet do."""
    def smooth(h):
        zeros = h == 0
        if zeros.all():
            return None
        h = h + eps * zeros - eps * zeros.sum() / (~zeros).sum() * (~zeros)
        return h / h.sum()

    p, q = smooth(p), smooth(q)
    if p is None or q is None or (q <= 0).any() or (p <= 0).any():
        return np.inf
    return float(np.sum(p * np.log(p / q)))


class _OneSample:
    """A calibration data reader holding a single sample (onnxruntime duck-types readers)."""

    def __init__(self, feeds: qc.Feeds) -> None:
        self._feeds: qc.Feeds | None = feeds

    def get_next(self) -> qc.Feeds | None:
        feeds, self._feeds = self._feeds, None
        return feeds

    def __iter__(self):
        return self

    def __next__(self):
        feeds = self.get_next()
        if feeds is None:
            raise StopIteration
        return feeds
