"""Whole-model latency and memory, for one model or an A/B comparison in one process.

Sessions are created once and warmed up before any timing. With several models the timed
rounds are *interleaved* (round ``i`` runs every model once, the order rotating), so load
and frequency drift hit all models alike; their thread pools do not spin
(:data:`NO_SPINNING`), so one session's idle threads do not steal the next one's cores.
Statistics use the median. The speedup of model ``k`` is ``median_0 / median_k`` (above 1:
faster), with the 10th/50th/90th percentiles of the paired per-round ratios and a 95 %
paired bootstrap interval of the ratio of medians; ``target_ci`` keeps sampling until that
interval is narrow enough or ``max_time`` passes (:attr:`BenchResult.stop_reason`). On CUDA
inputs are bound on the device once (IO binding). Memory: the process's peak resident set
and, on Linux, its growth while each session was created and warmed up.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.errors import InputError, UsageError
from onnxopt.runtime import create_session

log = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# Resamples of the interim interval that decides whether to keep sampling (target_ci);
# the reported interval uses BOOTSTRAP_RESAMPLES.
STOP_CHECK_RESAMPLES = 400
STOP_CHECK_EVERY_S = 0.5  # seconds of timed rounds between two interim checks

# Session config for interleaved sessions: their thread pools sleep instead of spinning
# between runs (see the module docstring).
NO_SPINNING = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}

ModelSource = bytes | str | os.PathLike


@dataclass(frozen=True)
class LatencyStats:
    """Latency distribution of one model, in milliseconds, and its throughput."""

    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    throughput: float  # samples per second: batch size / median latency

    @classmethod
    def from_times(cls, times_ms: Sequence[float], batch_size: int) -> LatencyStats:
        """Summarise per-run latencies (ms) measured on batches of ``batch_size``."""
        t = np.asarray(times_ms, dtype=np.float64)
        if t.size == 0:
            raise ValueError("no timed runs")
        p50, p90, p99 = np.percentile(t, [50, 90, 99])
        return cls(
            runs=int(t.size),
            mean_ms=float(t.mean()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            min_ms=float(t.min()),
            max_ms=float(t.max()),
            std_ms=float(t.std(ddof=1)) if t.size > 1 else 0.0,
            throughput=float(batch_size / (p50 / 1000.0)) if p50 > 0 else float("inf"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "mean_ms": self.mean_ms,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "std_ms": self.std_ms,
            "throughput_per_s": self.throughput,
        }


@dataclass(frozen=True)
class ModelBench:
    """One benchmarked model: its label, size, latency statistics and raw timings."""

    label: str
    size_bytes: int | None
    stats: LatencyStats
    times_ms: list[float] = field(repr=False)
    rss_growth_bytes: int | None = None  # resident-set growth at session creation + warm-up

    def to_dict(self, include_times: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "size_bytes": self.size_bytes,
            "rss_growth_bytes": self.rss_growth_bytes,
            **self.stats.to_dict(),
        }
        if include_times:
            out["times_ms"] = list(self.times_ms)
        return out


@dataclass(frozen=True)
class Comparison:
    """Speedup of model ``other`` over the baseline ``baseline`` (indices into models).

    ``speedup = median_baseline / median_other``; above 1 means ``other`` is faster.
    ``ratio_p10``/``ratio_p90`` are percentiles of the per-round ratios, ``ci95`` a paired
    bootstrap 95 % interval of the ratio of medians (see the module docstring).
    """

    baseline: int
    other: int
    speedup: float
    ratio_p10: float
    ratio_p90: float
    ci95: tuple[float, float]
    # median of the per-round ratios: the paired estimate. On a loaded machine it scatters
    # less than the ratio of medians (per round, load hits both models alike).
    ratio_p50: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "other": self.other,
            "speedup": self.speedup,
            "ratio_p10": self.ratio_p10,
            "ratio_p50": self.ratio_p50,
            "ratio_p90": self.ratio_p90,
            "ci95": list(self.ci95),
            "spread_method": "p10/p90 of per-round ratios; ci95 = paired bootstrap "
            f"({BOOTSTRAP_RESAMPLES} resamples) of the ratio of medians",
        }


@dataclass(frozen=True)
class BenchResult:
    """Everything :func:`bench_models` measured; ``to_dict()`` is JSON-able."""

    provider: str
    threads: int | None
    warmup: int
    rounds: int
    batch_size: int
    interleaved: bool
    models: list[ModelBench]
    comparisons: list[Comparison]
    peak_rss_bytes: int | None
    spinning: bool | None = None  # thread-pool spinning; None: onnxruntime's default
    timed_seconds: float = 0.0  # wall time of the timed rounds
    target_ci: float | None = None
    max_time: float | None = None
    # "runs" (the run count / min_time was enough), "target_ci" (sampled until the interval
    # was narrow enough) or "max_time" (stopped at the time limit before it was)
    stop_reason: str = "runs"

    @property
    def ci_width(self) -> float | None:
        """Widest relative 95 % interval over the comparisons ((hi - lo) / speedup)."""
        widths = [_relative_width(c.ci95, c.speedup) for c in self.comparisons]
        return max(widths) if widths else None

    @property
    def speedup(self) -> float | None:
        """Speedup of the second model over the first (None with a single model)."""
        return self.comparisons[0].speedup if self.comparisons else None

    def to_dict(self, include_times: bool = False) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "threads": self.threads,
            "warmup": self.warmup,
            "rounds": self.rounds,
            "batch_size": self.batch_size,
            "interleaved": self.interleaved,
            "spinning": self.spinning,
            "timed_seconds": self.timed_seconds,
            "target_ci": self.target_ci,
            "max_time": self.max_time,
            "stop_reason": self.stop_reason,
            "ci_width": self.ci_width,
            "peak_rss_bytes": self.peak_rss_bytes,
            "models": [m.to_dict(include_times) for m in self.models],
            "comparisons": [c.to_dict() for c in self.comparisons],
        }


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process so far, in bytes (None where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def current_rss_bytes() -> int | None:
    """Current resident set size (Linux /proc only; None elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            resident_pages = int(handle.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def model_size_bytes(model: ModelSource) -> int | None:
    """Size of a serialized model, or of a model file plus its external-data files."""
    if isinstance(model, bytes | bytearray):
        return len(model)
    path = Path(model)
    try:
        size = path.stat().st_size
    except OSError:
        return None
    return size + _external_data_bytes(path)


def _external_data_bytes(path: Path) -> int:
    """Bytes in the external-data files a model refers to (0 when it has none)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - size is informative; the session reports bad models
        return 0
    files = set()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if uses_external_data(tensor):
            files.add(ExternalDataInfo(tensor).location)
    total = 0
    for name in files:
        try:
            total += (path.parent / name).stat().st_size
        except OSError:
            continue
    return total


def _label(model: ModelSource, index: int) -> str:
    if isinstance(model, bytes | bytearray):
        return f"model {chr(ord('A') + index) if index < 26 else index}"
    return str(model)


def _batch_size(feeds: dict[str, np.ndarray]) -> int:
    """Samples per run: the leading dimension of the first batched input (1 if none)."""
    for value in feeds.values():
        shape = np.shape(value)
        if len(shape) >= 1 and shape[0] > 0:
            return int(shape[0])
    return 1


def _runner(session: Any, feeds: dict[str, np.ndarray], provider: str) -> Callable[[], None]:
    """A zero-argument callable that runs ``session`` once on ``feeds``.

    On CPU this is ``session.run``. On CUDA the inputs are copied to the device once and
    bound (IO binding); outputs are allocated on the device and the call synchronises, so
    that a timed run measures the model rather than host-device transfers.
    """
    input_names = [i.name for i in session.get_inputs()]
    missing = [name for name in input_names if name not in feeds]
    if missing:
        raise InputError(
            f"no data for model input(s) {', '.join(missing)}; available: {', '.join(feeds) or 'none'}"
        )
    own = {name: feeds[name] for name in input_names}
    output_names = [o.name for o in session.get_outputs()]
    if provider != "cuda":

        def run_cpu() -> None:
            session.run(output_names, own)

        return run_cpu

    import onnxruntime as ort

    binding = session.io_binding()
    device_inputs = []  # keep the device buffers alive as long as the binding
    for name, value in own.items():
        device_value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", 0)
        device_inputs.append(device_value)
        binding.bind_ortvalue_input(name, device_value)
    for name in output_names:
        binding.bind_output(name, "cuda", 0)
    binding.synchronize_inputs()

    def run_cuda() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    run_cuda.device_inputs = device_inputs  # type: ignore[attr-defined]
    return run_cuda


def _comparison(times: list[np.ndarray], baseline: int, other: int) -> Comparison:
    a, b = times[baseline], times[other]
    speedup = float(np.median(a) / np.median(b))
    per_round = a / b
    p10, p50, p90 = np.percentile(per_round, [10, 50, 90])
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    idx = rng.integers(0, a.size, size=(BOOTSTRAP_RESAMPLES, a.size))
    boot = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return Comparison(
        baseline=baseline,
        other=other,
        speedup=speedup,
        ratio_p10=float(p10),
        ratio_p90=float(p90),
        ratio_p50=float(p50),
        ci95=(float(lo), float(hi)),
    )


def _relative_width(ci95: tuple[float, float], speedup: float) -> float:
    lo, hi = ci95
    if not speedup or not np.isfinite(speedup):
        return float("inf")
    return float((hi - lo) / speedup)


def _interim_ci_width(times: list[list[float]]) -> float:
    """Widest relative bootstrap 95 % interval of the speedups so far (cheap version)."""
    arrays = [np.asarray(t, dtype=np.float64) for t in times]
    base = arrays[0]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    idx = rng.integers(0, base.size, size=(STOP_CHECK_RESAMPLES, base.size))
    base_medians = np.median(base[idx], axis=1)
    widest = 0.0
    for other in arrays[1:]:
        speedup = float(np.median(base) / np.median(other))
        boot = base_medians / np.median(other[idx], axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        widest = max(widest, _relative_width((float(lo), float(hi)), speedup))
    return widest


def bench_models(
    models: list[ModelSource],
    feeds: dict[str, np.ndarray],
    *,
    provider: str = "cpu",
    threads: int | None = None,
    warmup: int = 5,
    runs: int = 50,
    min_time: float | None = None,
    labels: list[str] | None = None,
    spinning: bool | None = None,
    target_ci: float | None = None,
    max_time: float | None = None,
) -> BenchResult:
    """Measure the latency of one or more models on the same inputs, interleaved.

    Args:
        models: serialized models (bytes) or model paths; the first is the baseline of
            every comparison.
        feeds: input name -> array; every model must find all its inputs here (extra
            entries are ignored per model). The leading dimension of the first input is
            the batch size used for throughput.
        provider: "cpu" or "cuda".
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
        warmup: untimed runs per model before timing.
        runs: timed rounds; each round runs every model once, order rotating per round.
        min_time: if set, keep running rounds until at least this many seconds of timed
            rounds have passed (and at least ``runs`` rounds).
        labels: names for the report (default: the path, or "model A", "model B", ...).
        spinning: whether onnxruntime's thread pools spin between runs. None (default):
            off when several models are interleaved (:data:`NO_SPINNING`), onnxruntime's
            default for one model.
        target_ci: with several models, after ``runs`` rounds and ``min_time``, keep
            running rounds until every speedup's 95 % bootstrap interval is at most this
            wide relative to the speedup (e.g. 0.02 for ± 1 %). None or 0: off.
        max_time: upper bound in seconds on the timed rounds while ``target_ci`` is not
            reached (None: no bound; then ``target_ci`` needs one). Must not be below
            ``min_time``.

    Raises:
        UsageError: no model, or a non-positive run count.
        InputError: a model cannot be loaded or lacks an input in ``feeds``.
    """
    if not models:
        raise UsageError("no model to benchmark")
    if runs < 1:
        raise UsageError(f"runs must be at least 1, got {runs}")
    if warmup < 0:
        raise UsageError(f"warmup must be 0 or more, got {warmup}")
    if min_time is not None and min_time < 0:
        raise UsageError(f"min_time must be 0 or more, got {min_time}")
    if labels is not None and len(labels) != len(models):
        raise UsageError("labels must name every model")
    if target_ci is not None and target_ci < 0:
        raise UsageError(f"target_ci must be 0 or more, got {target_ci}")
    if max_time is not None and max_time < 0:
        raise UsageError(f"max_time must be 0 or more, got {max_time}")
    if max_time is not None and min_time is not None and max_time < min_time:
        raise UsageError(f"max_time ({max_time:g} s) must not be below min_time ({min_time:g} s)")
    if target_ci and max_time is None:
        raise UsageError("target_ci needs max_time: sampling until the interval is narrow must be bounded")

    count = len(models)
    if spinning is None and count > 1:
        spinning = False
    config = NO_SPINNING if spinning is False else None
    adaptive = bool(target_ci) and count > 1
    sizes = [model_size_bytes(m) for m in models]
    runners: list[Callable[[], None]] = []
    rss_growth: list[int | None] = []
    sessions = []  # keep sessions alive for the whole measurement
    for index, model in enumerate(models):
        before = current_rss_bytes()
        source = bytes(model) if isinstance(model, bytearray) else model
        session = create_session(source, provider, threads=threads, config=config, tf32=True)
        sessions.append(session)
        runner = _runner(session, feeds, provider)
        runners.append(runner)
        for _ in range(warmup):
            runner()
        after = current_rss_bytes()
        growth = after - before if before is not None and after is not None else None
        rss_growth.append(growth)
        log.debug("model %d: session ready, warmed up (%d runs)", index, warmup)
    # One more warm-up pass, interleaved, so the caches see the alternation before timing.
    if count > 1 and warmup:
        for runner in runners:
            runner()

    times: list[list[float]] = [[] for _ in range(count)]
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    stop_reason = "runs"
    try:
        started = time.perf_counter()
        elapsed = 0.0
        rounds = 0
        next_check = None  # elapsed time of the next interim interval check (target_ci)
        while True:
            if rounds >= runs and (min_time is None or elapsed >= min_time):
                if not adaptive:
                    break
                if max_time is not None and elapsed >= max_time:
                    stop_reason = "max_time"
                    break
                if next_check is None or elapsed >= next_check:
                    if _interim_ci_width(times) <= target_ci:
                        stop_reason = "target_ci"
                        break
                    next_check = elapsed + STOP_CHECK_EVERY_S
            for offset in range(count):
                index = (rounds + offset) % count
                t0 = clock()
                runners[index]()
                times[index].append((clock() - t0) / 1e6)
            rounds += 1
            elapsed = time.perf_counter() - started
    finally:
        if gc_was_enabled:
            gc.enable()

    batch = _batch_size(feeds)
    arrays = [np.asarray(t, dtype=np.float64) for t in times]
    results = [
        ModelBench(
            label=labels[i] if labels else _label(models[i], i),
            size_bytes=sizes[i],
            stats=LatencyStats.from_times(arrays[i], batch),
            times_ms=times[i],
            rss_growth_bytes=rss_growth[i],
        )
        for i in range(count)
    ]
    comparisons = [_comparison(arrays, 0, k) for k in range(1, count)]
    return BenchResult(
        provider=provider,
        threads=threads,
        warmup=warmup,
        rounds=rounds,
        batch_size=batch,
        interleaved=count > 1,
        models=results,
        comparisons=comparisons,
        peak_rss_bytes=peak_rss_bytes(),
        spinning=spinning,
        timed_seconds=elapsed,
        target_ci=target_ci if adaptive else None,
        max_time=max_time if adaptive else None,
        stop_reason=stop_reason,
    )
