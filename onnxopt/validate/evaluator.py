"""Measurement services for search passes: score candidates and time them, on two splits.

:class:`SplitEvaluator` implements :class:`onnxopt.passbase.CandidateEvaluator`, through
which a search measures what it tries without importing ``onnxopt.validate`` or
``onnxopt.bench``. It is built from ``--data`` split in two disjoint parts — *search* (every
decision is taken on it) and *holdout* (the final answer is checked on it) — the
tolerances as the budget, and the target provider. The original runs once per split (its
outputs and the input batches are cached up to ``max_cache_bytes``); a candidate that
onnxruntime cannot load or run is a failed score with the reason, not an exception.
``value`` is the budgeted metric, larger is better (worst top-1 agreement, else worst-sample
cosine, else minus the relative L2 error); :meth:`SplitEvaluator.latency` times models
interleaved (``onnxopt.bench.latency``), one intra-op thread by default for stable ratios.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from onnxopt.errors import InputError, OnnxoptError
from onnxopt.passbase import CandidateScore
from onnxopt.runtime import create_session, one_line
from onnxopt.runtime.ir_version import runnable_bytes
from onnxopt.validate.compare import ORT_INPUT_TYPES as _ORT_TYPES
from onnxopt.validate.metrics import MetricsAccumulator
from onnxopt.validate.sources import DataSource
from onnxopt.validate.tolerances import OutputMetrics, Tolerances, check_gate

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

Split = Literal["search", "holdout"]
DEFAULT_MAX_CACHE_BYTES = 1 << 30
DEFAULT_LATENCY_RUNS = 30
LATENCY_WARMUP = 3
RANDOM_FEED_SEED = 0

class _CachedBatch:
    __slots__ = ("feeds", "ids", "reference")

    def __init__(self, feeds: dict[str, np.ndarray], ids: list[str], reference: dict[str, np.ndarray]):
        self.feeds, self.ids, self.reference = feeds, ids, reference


class SplitEvaluator:
    """Scores candidates against the original on the search or holdout split, and times them.

    Args:
        original: the original model, serialized (loadable by onnxruntime).
        search: the data the search decides on (calibration part of ``--data``).
        holdout: disjoint data the final answer is checked on (evaluation part).
        tolerances: the budget (the validation gate's tolerances).
        target: provider for numerics and latency, "cpu" or "cuda".
        batch_size: samples per run (clamped to what the model imposes).
        labels: {sample id: class} for accuracy figures in ``details`` (optional).
        max_cache_bytes: bound of the input/reference-output cache (both splits).
        threads: onnxruntime intra-op threads of every session it creates (None: one per
            core). Default 1, see the module docstring.
    """

    def __init__(
        self,
        original: bytes,
        search: DataSource,
        holdout: DataSource,
        tolerances: Tolerances,
        *,
        target: str = "cpu",
        batch_size: int = 1,
        labels: Mapping[str, int] | None = None,
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
        threads: int | None = 1,
    ):
        self.original = bytes(original)
        self.splits: dict[str, DataSource] = {"search": search, "holdout": holdout}
        self.tolerances = tolerances
        self.target = target
        self.batch_size = batch_size
        self.labels = dict(labels) if labels else None
        self.max_cache_bytes = max_cache_bytes
        self.threads = threads
        self.metric, self.threshold = _budget_metric(tolerances)
        self._cache: dict[str, list[_CachedBatch]] = {}
        self._complete: dict[str, bool] = {}
        self._cache_bytes = 0
        self._reference_session = None
        self._output_names: list[str] | None = None
        self._latency_feeds: dict[str, np.ndarray] | None = None
        self._fingerprint: str | None = None
        self.scores = 0  # how many candidates were scored (for reports)
        self.score_seconds = 0.0

    # ------------------------------------------------------------------ description

    def describe_splits(self) -> dict[str, dict[str, Any]]:
        """Sizes and descriptions of the two splits, for reports."""
        return {name: {"samples": len(source), "description": source.description}
                for name, source in self.splits.items()}

    @property
    def data_fingerprint(self) -> str:
        """Identifies (original model, data of both splits, budget, target) for caches.

        Hashes the model bytes, each split's description and size, the bytes of its first
        batch (so a changed file with the same name changes the fingerprint), the
        tolerances, the labels, the batch size and the target."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(hashlib.sha256(self.original).digest())
            for name, source in self.splits.items():
                digest.update(f"{name}:{len(source)}:{source.description}".encode())
                if len(source):
                    batch = next(iter(source.batches(self.batch_size)))
                    for key in sorted(batch.feeds):
                        digest.update(key.encode())
                        digest.update(np.ascontiguousarray(batch.feeds[key]).tobytes())
            digest.update(repr(sorted(self.tolerances.to_dict().items())).encode())
            digest.update(repr(sorted((self.labels or {}).items())).encode())
            digest.update(f"{self.batch_size}:{self.target}".encode())
            self._fingerprint = digest.hexdigest()[:32]
        return self._fingerprint

    # ------------------------------------------------------------------ reference

    def _session(self, model: bytes):
        return create_session(model, self.target, threads=self.threads)

    def _reference(self):
        if self._reference_session is None:
            self._reference_session = self._session(self.original)
            self._output_names = [o.name for o in self._reference_session.get_outputs()]
        return self._reference_session

    def _batches(self, split: str, limit: int | None):
        """(feeds, ids, reference outputs) per batch, from the cache where possible."""
        source = self.splits[split]
        if limit is not None:
            source = source.subset(0, limit)
        cached = self._cache.setdefault(split, [])
        served = 0
        reference = self._reference()
        names = self._output_names or []
        if self._complete.get(split) and (limit is None or sum(len(b.ids) for b in cached) >= len(source)):
            for item in cached:
                if limit is not None and served >= len(source):
                    return
                yield item.feeds, item.ids, item.reference
                served += len(item.ids)
            return
        for index, batch in enumerate(source.batches(self.batch_size)):
            if index < len(cached):
                item = cached[index]
                yield item.feeds, item.ids, item.reference
                continue
            outputs = dict(zip(names, reference.run(names, batch.feeds), strict=True))
            size = sum(v.nbytes for v in batch.feeds.values()) + sum(np.asarray(v).nbytes for v in outputs.values())
            if self._cache_bytes + size <= self.max_cache_bytes and index == len(cached):
                cached.append(_CachedBatch(dict(batch.feeds), list(batch.ids), outputs))
                self._cache_bytes += size
            yield batch.feeds, batch.ids, outputs
        if limit is None:
            self._complete[split] = sum(len(b.ids) for b in cached) >= len(self.splits[split])

    # ------------------------------------------------------------------ score

    def score(self, model: onnx.ModelProto | bytes, split: Split = "search", *,
              limit: int | None = None) -> CandidateScore:
        """How ``model`` does against the original on ``split`` (its first ``limit`` samples).

        ``limit`` extends the protocol: a search scores per-layer sensitivities cheaply on a
        few samples and verifies on the whole split. ``details["threshold"]`` is the budget
        on the scale of ``value`` (so a search can share it between two lossy steps);
        ``details["rel_l2_error"]`` the continuous error to rank candidates by where the
        budgeted metric is coarse (agreement over 100 samples moves in steps of 0.01)."""
        if split not in self.splits:
            raise ValueError(f"split must be 'search' or 'holdout', got {split!r}")
        start = time.perf_counter()
        self.scores += 1
        data = self.splits[split]
        used = len(data) if limit is None else min(limit, len(data))
        split_info = {"name": split, "samples": used, "description": data.description}
        try:
            self._reference()
            session = self._session(runnable_bytes(model))
        except OnnxoptError as exc:
            return self._failed(f"the candidate does not load: {exc}", split_info, start)
        names = self._output_names or []
        cand_names = [o.name for o in session.get_outputs()]
        if set(cand_names) != set(names):
            return self._failed(f"the candidate's outputs {sorted(cand_names)} differ from the original's "
                                f"{sorted(names)}", split_info, start)
        casts = {i.name: _ORT_TYPES[i.type] for i in session.get_inputs() if i.type in _ORT_TYPES}
        accumulator = MetricsAccumulator(names)
        samples = 0
        try:
            for feeds, ids, reference in self._batches(split, limit):
                ready = {k: (v.astype(casts[k]) if k in casts and v.dtype != casts[k] else v)
                         for k, v in feeds.items()}
                outputs = dict(zip(names, session.run(names, ready), strict=True))
                accumulator.update(reference, outputs, ids, self.labels, feeds)
                samples += len(ids)
        except InputError:
            raise
        except Exception as exc:  # onnxruntime raises several unrelated types
            return self._failed(f"the candidate failed to run: {one_line(exc)}", split_info, start)
        del session
        split_info["samples"] = samples
        metrics = accumulator.result()
        failures = check_gate(metrics, self.tolerances)
        value = _metric_value(metrics, self.metric)
        seconds = time.perf_counter() - start
        self.score_seconds += seconds
        details = {
            "split": split_info,
            "threshold": self.threshold,
            "rel_l2_error": _worst(metrics, "rel_l2_error", max),
            "cosine_min": _worst(metrics, "cosine_min", min),
            "top1_agreement": _worst(metrics, "top1_agreement", min),
            "outputs": [m.to_dict() for m in metrics],
            "seconds": round(seconds, 3),
            "cached_batches": len(self._cache.get(split, [])),
        }
        return CandidateScore(passed=not failures, value=value, metric=self.metric, failures=failures,
                              details=details)

    def _failed(self, reason: str, split_info: dict[str, Any], start: float) -> CandidateScore:
        seconds = time.perf_counter() - start
        self.score_seconds += seconds
        return CandidateScore(passed=False, value=-math.inf, metric=self.metric, failures=[reason],
                              details={"split": split_info, "threshold": self.threshold, "seconds": round(seconds, 3)})

    # ------------------------------------------------------------------ latency

    def _first_batch(self) -> dict[str, np.ndarray]:
        if self._latency_feeds is None:
            search = self.splits["search"]
            source = search if len(search) else self.splits["holdout"]
            self._latency_feeds = dict(next(iter(source.batches(self.batch_size))).feeds)
        return self._latency_feeds

    def latency_feeds(self) -> dict[str, np.ndarray]:
        """The inputs :meth:`latency` feeds every model: the first search batch, at the
        data's concrete shapes (a search reads its layers' input shapes from them)."""
        return dict(self._first_batch())

    def _feeds_for(self, models: Sequence[bytes]) -> dict[str, np.ndarray]:
        """The first search batch, plus seeded random data for inputs it lacks."""
        import onnx

        feeds = dict(self._first_batch())
        rng = np.random.default_rng(RANDOM_FEED_SEED)
        for data in models:
            proto = onnx.ModelProto()
            proto.ParseFromString(data)
            initializers = {t.name for t in proto.graph.initializer}
            for value in proto.graph.input:
                if value.name in feeds or value.name in initializers:
                    continue
                tensor = value.type.tensor_type
                dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tensor.shape.dim]
                dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
                if dtype.kind == "f":
                    feeds[value.name] = rng.standard_normal(dims).astype(dtype)
                elif dtype.kind in "iu":
                    feeds[value.name] = rng.integers(0, 10, size=dims).astype(dtype)
                else:
                    feeds[value.name] = rng.random(dims) < 0.5
        return feeds

    def latency(self, models: list[onnx.ModelProto | bytes], runs: int | None = None, *,
                statistic: Literal["median", "min"] = "median") -> list[float]:
        """Median (or ``statistic="min"``: fastest) seconds per run of each model, measured
        interleaved on the target provider with ``threads`` intra-op threads, fed with the
        first search batch (seeded random data at the declared static shape for inputs it
        lacks, e.g. a single layer a search extracts). ``statistic="min"`` extends the
        protocol: interference from other processes only ever adds time, so on a busy
        machine the fastest run is the steadier figure.

        A model that onnxruntime cannot load or run gets ``inf`` (and a log line)."""
        from onnxopt.bench.latency import bench_models

        if statistic not in ("median", "min"):
            raise ValueError(f"statistic must be 'median' or 'min', got {statistic!r}")
        data = [runnable_bytes(m) for m in models]
        feeds = self._feeds_for(data)
        runs = runs or DEFAULT_LATENCY_RUNS

        def pick(bench) -> float:
            return (bench.stats.p50_ms if statistic == "median" else bench.stats.min_ms) / 1000.0

        def measure(items: list[bytes], count: int, warmup: int):
            return bench_models(items, feeds, provider=self.target, runs=count, warmup=warmup, threads=self.threads)

        try:
            return [pick(m) for m in measure(data, runs, LATENCY_WARMUP).models]
        except OnnxoptError as exc:
            if len(data) == 1:
                logger.info("latency: model does not run: %s", exc)
                return [math.inf]
        # find the models that do not run, time the others together
        values: list[float] = [math.inf] * len(data)
        good = []
        for index, model in enumerate(data):
            try:
                measure([model], 1, 0)
                good.append(index)
            except OnnxoptError as exc:
                logger.info("latency: model %d does not run: %s", index, exc)
        if good:
            result = measure([data[i] for i in good], runs, LATENCY_WARMUP)
            for index, bench in zip(good, result.models, strict=True):
                values[index] = pick(bench)
        return values


# ---------------------------------------------------------------------- metric helpers


def _budget_metric(tolerances: Tolerances) -> tuple[str, float | None]:
    """(metric name, threshold on the larger-is-better scale of ``value``)."""
    if tolerances.min_agreement is not None:
        return "top1_agreement", tolerances.min_agreement
    if tolerances.min_cosine is not None:
        return "cosine_min", tolerances.min_cosine
    if tolerances.max_rel_error is not None:
        return "neg_rel_l2_error", -tolerances.max_rel_error
    return "neg_rel_l2_error", None


def _worst(metrics: Sequence[OutputMetrics], attribute: str, pick) -> float | None:
    values = [getattr(m, attribute) for m in metrics if getattr(m, attribute) is not None]
    return float(pick(values)) if values else None


def _metric_value(metrics: Sequence[OutputMetrics], metric: str) -> float:
    if any(m.shape_error or m.nonfinite_mismatch for m in metrics):
        return -math.inf
    if metric == "top1_agreement":
        value = _worst(metrics, "top1_agreement", min)
    elif metric == "cosine_min":
        value = _worst(metrics, "cosine_min", min)
    else:
        error = _worst(metrics, "rel_l2_error", max)
        value = None if error is None else -error
    return -math.inf if value is None or math.isnan(value) else value
