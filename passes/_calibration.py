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

Two kinds of tensor get no calibrated range:

* sentinels (``Calibration.sentinels``): a tensor with a value of magnitude ≥ 1e30 or a
  non-finite one (an additive attention mask of float32's lowest value, −3.4e38) has no
  8-bit grid that also holds its real values, and its histogram cannot be binned; the pass
  keeps the nodes that read or write it in float;
* Softmax inputs: their range is the *softmax window* (:func:`softmax_windows`), from
  ``SOFTMAX_WINDOW`` below the lowest row maximum to the highest value, whatever the method.
  Softmax depends only on each value's distance below its row's maximum, and a value more
  than 20 below it weighs under e⁻²⁰: clamping it (a masked position) to the window's low
  end changes nothing a uint8 probability shows, while a range reaching −3.4e38 would put
  every real score on one code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxopt.errors import InputError
from onnxopt.runtime import ORT_PROVIDER, first_line

from . import _quant_common as qc

ENTROPY_BINS = 2048
QUANTIZED_BINS = 128
#: Percentile of |x| (symmetric) rather than two-sided percentiles of x.
PERCENTILE_SYMMETRIC = True
#: A calibration value at least this large in magnitude is a sentinel (a mask of float32's
#: lowest value, 3.4e38), not a signal: its tensor gets no range.
SENTINEL_MAGNITUDE = 1e30
#: How far below the lowest row maximum a Softmax input's range reaches: e^-20 ≈ 2e-9, so
#: values further below their row's maximum add under 1/255 of probability mass to a row
#: even when a million of them are clamped to the window's low end.
SOFTMAX_WINDOW = 20.0


@dataclass(frozen=True)
class Calibration:
    """What one calibration run gives the int8 pass."""

    ranges: object  # onnxruntime's TensorsData for the chosen method: what the quantizer reads
    minmax: object  # MinMax TensorsData of the same samples: what plain quantize_static would use
    upper_shares: dict[str, float]  # per tensor, the share of its values in the upper half of its range
    probe: qc.Feeds  # the first sample, kept to check that the quantized model runs
    samples: int
    sentinels: dict[str, float]  # tensor -> its largest |value| (≥ SENTINEL_MAGNITUDE or inf): no range
    softmax_inputs: tuple[str, ...] = ()  # tensors whose range is the softmax window

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

    def width(self, tensor: str) -> float | None:
        """The calibrated range's width (highest − lowest) of ``tensor``, or None where
        calibration has none."""
        lowest = self.lowest(tensor)
        if lowest is None:
            return None
        return float(np.max(self.ranges[tensor].range_value[1])) - lowest


def calibrate(path: Path, tmp: Path, samples: Callable[[], Iterable[qc.Feeds]], *, method: str, percentile: float,
              cuda: bool, origin: str, progress: Callable[[int], None], op_types: list[str] | None = None) -> Calibration:
    """Calibrate the model at ``path`` on ``samples()`` (one-sample feeds), files in ``tmp``:
    the tensors of the nodes whose op type is in ``op_types`` (default: every op type the
    quantizer knows); the inputs of those nodes that are Softmax get their softmax window.

    Raises InputError (one line) when the model cannot run a sample or there is none.
    """
    op_types = op_types_to_quantize() if op_types is None else list(op_types)
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
            path, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
            calibrate_method=calibration_method, providers=providers, extra_options=extra,
        )
    sentinels: dict[str, tuple[float, float]] = {}  # tensor -> (lowest, highest) of a sentinel tensor
    if method != "minmax":
        calibrator.collector = _finite_histograms(calibrator, sentinels)
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
    if histograms is None:  # MinMax: its sentinels show in the ranges
        sentinels.update(_sentinel_ranges(ranges))
    minmax = _minmax_ranges(histograms, sentinels) if histograms is not None else ranges
    softmax = _softmax_inputs(path, op_types)
    windows = softmax_windows(path, softmax, samples, origin) if softmax else {}
    ranges = _replaced(ranges, drop=set(sentinels), add={name: _tensor_data(*w) for name, w in windows.items()})
    return Calibration(
        ranges=ranges,
        minmax=minmax,
        upper_shares=_upper_half_shares(histograms, ranges) if histograms is not None else {},
        probe=probe,
        samples=used,
        sentinels={name: max(abs(low), abs(high)) for name, (low, high) in sentinels.items()},
        softmax_inputs=tuple(windows),
    )


def softmax_windows(path: Path, softmax: dict[str, tuple[int, bool]], samples: Callable[[], Iterable[qc.Feeds]],
                    origin: str) -> dict[str, tuple[float, float]]:
    """Per Softmax input tensor (name -> (axis, whether the axis flattens the trailing dims,
    as before opset 13)), its window over ``samples()``: (lowest row maximum −
    ``SOFTMAX_WINDOW``, highest value). Rows whose maximum is itself a sentinel (every
    position masked) are left out. The model at ``path`` runs in float with the tensors
    as extra outputs."""
    model = onnx.load(str(path))
    outputs = {o.name for o in model.graph.output}
    for name in softmax:
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = qc.ort_session(model, log_level=4)
    names = list(softmax)
    lowest = dict.fromkeys(names, np.inf)
    highest = dict.fromkeys(names, -np.inf)
    for count, feeds in enumerate(samples(), 1):
        try:
            values = session.run(names, feeds)
        except Exception as exc:  # onnxruntime rejects the sample
            raise InputError(f"{origin}: the model cannot run on sample {count}: {first_line(exc)}") from None
        for name, x in zip(names, values):
            axis, flatten = softmax[name]
            row_max = _row_maxima(np.asarray(x, np.float32), axis, flatten)
            real = row_max[np.isfinite(row_max) & (np.abs(row_max) < SENTINEL_MAGNITUDE)]
            if real.size:
                lowest[name] = min(lowest[name], float(real.min()) - SOFTMAX_WINDOW)
                highest[name] = max(highest[name], float(real.max()))
    return {name: (lowest[name], highest[name]) for name in names if np.isfinite(lowest[name])}


def _row_maxima(x: np.ndarray, axis: int, flatten: bool) -> np.ndarray:
    """Each softmax row's maximum: along ``axis``, or over the dims from ``axis`` on (opset < 13)."""
    if x.ndim == 0:
        return x.reshape(1)
    axis = axis % x.ndim
    if flatten:
        return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1).max(axis=1)
    return x.max(axis=axis)


def _softmax_inputs(path: Path, op_types: list[str]) -> dict[str, tuple[int, bool]]:
    """Float Softmax input tensors of the model at ``path`` -> (axis, flattens), when Softmax is quantized."""
    if "Softmax" not in op_types:
        return {}
    model = onnx.load(str(path), load_external_data=False)
    opset = qc.opset_of(model)
    found = {}
    for node in model.graph.node:
        if node.op_type == "Softmax" and node.domain in ("", "ai.onnx") and node.input and node.input[0]:
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
            found[node.input[0]] = (int(axis), opset < 13)
    return found


def _tensor_data(lowest: float, highest: float):
    from onnxruntime.quantization.calibrate import TensorData

    return TensorData(lowest=np.float32(lowest), highest=np.float32(highest))


def _is_sentinel(lowest: float, highest: float) -> bool:
    peak = max(abs(lowest), abs(highest))
    return not np.isfinite(peak) or peak >= SENTINEL_MAGNITUDE


def _sentinel_ranges(ranges) -> dict[str, tuple[float, float]]:
    """The MinMax ranges that reach a sentinel value."""
    found = {}
    for name, data in ranges.items():
        try:
            low, high = (float(np.min(data.range_value[0])), float(np.max(data.range_value[1])))
        except (AttributeError, TypeError, ValueError):
            continue
        if _is_sentinel(low, high):
            found[name] = (low, high)
    return found


def _replaced(ranges, drop: set[str], add: dict):
    """``ranges`` (TensorsData) less the tensors in ``drop``, with the TensorData in ``add``."""
    from onnxruntime.quantization.calibrate import TensorsData

    if not drop and not add:
        return ranges
    data = {k: v for k, v in ranges.items() if k not in drop and k not in add}
    return TensorsData(ranges.calibration_method, data | add)


def _finite_histograms(calibrator, sentinels: dict[str, tuple[float, float]]):
    """onnxruntime's histogram collector for ``calibrator``, except that a tensor holding a
    sentinel value is dropped (its histogram too, if earlier samples had started one) and
    recorded in ``sentinels`` with its lowest and highest value: onnxruntime cannot bin a
    range of 6.8e38 ("Too many bins for data range")."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    class FiniteHistogramCollector(HistogramCollector):
        def collect(self, name_to_arr):
            kept = {}
            for name, arrays in name_to_arr.items():
                arrays = arrays if isinstance(arrays, list) else [arrays]
                sized = [a for a in arrays if a.size]
                low = min((float(np.min(a)) for a in sized), default=0.0)
                high = max((float(np.max(a)) for a in sized), default=0.0)
                if name in sentinels or _is_sentinel(low, high):
                    old = sentinels.get(name, (low, high))
                    sentinels[name] = (min(old[0], low), max(old[1], high))
                    self.histogram_dict.pop(name, None)
                else:
                    kept[name] = arrays
            return super().collect(kept) if kept else None

    return FiniteHistogramCollector(
        method=calibrator.method, symmetric=calibrator.symmetric, num_bins=calibrator.num_bins,
        num_quantized_bins=calibrator.num_quantized_bins, percentile=calibrator.percentile,
        scenario=getattr(calibrator, "scenario", "same"))


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


def _minmax_ranges(histograms: dict, sentinels: dict[str, tuple[float, float]]):
    """onnxruntime's MinMax ranges (each tensor's lowest and highest calibration value) from the
    histograms of the same calibration run, where their min and max are recorded on the way,
    and the sentinel tensors' (what plain quantize_static would use)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData

    data = {}
    lows_highs = {name: (h[2], h[3]) for name, h in histograms.items()} | dict(sentinels)
    for name, (low, high) in lows_highs.items():
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
