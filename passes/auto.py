"""``auto``: the fastest model within an accuracy budget, found by measurement on the target.

The user states a budget (the validation tolerances: ``--min-agreement``, ``--min-cosine``
or ``--max-rel-error``) and gives data; ``auto`` chooses, layer by layer, a low-rank
decomposition (``spatial``, ``tucker``, ``cp``, ``separable``, ``svd``) and a rank level —
or none — and optionally a quantization, so that the model runs as fast as possible on
the target provider while meeting the budget on data the search never saw.

Why it measures instead of counting MACs: fewer MACs often ran *slower* here — extra nodes,
memory-bound 1×1 convolutions, ranks off the SIMD width; a Tucker-2 prototype slowed
ResNet-56 (32×32) and ResNet-50 (224×224) down at every setting while it sped a VGG16-BN
detector up 1.44×. So every decision is taken on latency measured on the target
provider, and ranks are rounded to 16 (AVX-512) on CPU or 8 (tensor cores) on CUDA.

Algorithm (all measurements through ``context.evaluator``, a
:class:`~onnxopt.passbase.CandidateEvaluator`; every decision is taken on the *search*
split, and only the final answer is checked on the disjoint *holdout* split; during the
search a ``margin`` share of the budget's slack is kept in reserve — with 100 samples,
``--min-agreement 0.99`` then means no flipped sample on the search split — because
search-split figures are optimistic for data the search did not see):

1. **Candidate layers**: dense k×k ``Conv`` (group 1, k > 1), 1×1 ``Conv`` and
   ``Gemm``/``MatMul`` with a constant weight whose both dimensions reach
   ``min_pointwise_channels``, at or above ``min_macs``; largest first (``max_layers``).
2. **Quantization baseline** (``quantize=int8|fp16``): the quantization pass alone, with its
   defaults, calibrated on the search split; if it breaks the budget, the first and last
   weight layers — then larger shares of both ends — are excluded from it until it holds.
   When it holds and runs faster than the original, layer latencies are measured in the
   quantized domain and the budget is *shared*: the decomposition alone must keep the
   metric within the budget minus what quantization already costs.
3. **Per-layer latency gain**: a single-layer model (the layer at its real input shape) and
   the same model with that layer decomposed (the decomposition pass
   with ``include=`` the node), quantized like the final model would be (with a quantized
   consumer after the layer, see :func:`_with_quantized_consumer`), timed interleaved on
   the target, fastest runs compared. Each method is first tried at its most aggressive level; only methods
   that save at least ``min_layer_speedup`` there are measured at the other levels (a rank
   that does not pay at the lowest level does not pay at a higher one). Candidates that do
   not save time are declined without any accuracy measurement — on small models this
   declines nearly everything and keeps the search fast. The real input shape: shape
   inference with the graph inputs fixed at the shapes of the evaluator's first batch (what
   every score and timing runs on: ``--data`` images at their preprocessed size, or random
   inputs at ``--input-shape``), else at ``context.input_shapes`` (``--input-shape``);
   values inference cannot size (computed ``Resize`` sizes, ...) are read off one run of
   the model. Models with dynamic H and W (PP-OCR, CRAFT) are thus timed at the user's size;
   only without any concrete shape is a layer skipped as "input shape unknown (dynamic)".
4. **Per-layer sensitivity**: for the (at most ``per_layer``) best time-saving candidates of
   each layer, the whole model with that layer alone decomposed is scored on the search
   split — all of it when that is cheap (under 3 s a score), else its first 16 samples
   (``sensitivity_samples``); a candidate that alone breaks the budget is rejected (for
   agreement on a subset: more flips there than the whole split allows). The worst-sample
   cosine of a 2-class output (ResNet-50 open_nsfw) is not predicted by 16 samples.
5. **Search**: layers are ordered by measured gain per unit of sensitivity (seconds saved /
   relative L2 output error), each with its best option. The longest prefix that meets the
   budget on the whole search split is found by bisection (log₂ n verifications of combined
   models), then the following layers are tried one at a time — backing off to a safer
   option (higher energy, another method) and then dropping the layer when the budget
   fails — until ``patience`` layers in a row failed. Time left then goes to upgrades:
   accepted layers are switched to their faster scored options (by extra gain per extra
   sensitivity) while the combination still fits.
6. **Final choice**: the original, the quantized baseline, the decomposition, and the
   decomposition followed by the same quantization (halving the decomposition if that
   breaks the budget) are timed together, interleaved; the fastest that meets the budget
   on the search split *and* then on the holdout split wins. A lossy result must beat the
   next-slower passing candidate by ``min_speedup`` to be preferred, so noise never makes
   the result slower than the quantized baseline. If nothing passes, the original is kept
   unchanged (``modified=False``) and the report says what was tried and why each
   candidate was rejected.

Every model the search builds is built with the plain passes (one decomposition pass per
method and level with ``include=`` its layers, then ``int8``/``fp16``), exactly as the
pipeline config it saves (``context.save_config``, YAML) would build it, so re-running that
config reproduces the result.

Cache: per-layer and whole-model latencies (by weight hash or model hash, method, level,
rounding, input shape, domain, target, threads, onnxruntime version and CPU) in
``<cache_dir>/latency.json``; sensitivities and the scores of combined models (by model hash
and the evaluator's data fingerprint) in ``<cache_dir>/<model hash>.json``. ``cache_dir`` defaults to
``$XDG_CACHE_HOME/onnxopt/auto`` (``~/.cache/onnxopt/auto``). A re-run with a warm cache
rebuilds only the chosen model. ``cache=false`` measures everything afresh.

Time: ``time_budget`` (or ``context.time_budget``) bounds the search; each phase stops
adding measurements when what is left would not cover finishing (the final builds,
verifications and timing, estimated from the costs measured so far), and the search
finishes with the best model verified by then. The report's ``seconds_by_phase`` ({phase:
seconds}) and ``phases`` (per phase: seconds, share, and the builds, scores and timed models
with their seconds) say where the time went: layer shapes, original, quantization
baseline, layer timing, layer sensitivity, search, final candidates, final timing, holdout
verification, other. Bounds on the costly parts of a large model (a CRAFT detector at
384×512 spent 842 of 877 s on its int8 baseline): whole-model timings use as many rounds as
fit in WHOLE_MODEL_SECONDS per model (at least WHOLE_MODEL_MIN_RUNS; a 3-round probe of the
original decides), not ``latency_runs`` (2 × 23 runs of a 1.5 s model per comparison); each
quantization attempt calibrates afresh on the whole search split (about 1 s per sample for
PP-OCR at 320×320 with percentile histograms, more for wider models), so a further attempt
(more layers excluded) is made only when the last one cost at most a third of the time left;
and once a whole-split score is known to take over 3 s, an attempt is first scored on 16
samples, and one that fails the budget there (worst-sample cosine, top-1 flips: failing on a
subset proves failing on the whole) is not scored on the whole split.

Evaluator extensions used when present (``onnxopt.validate.evaluator.SplitEvaluator`` has
them; a minimal evaluator works without): ``score(..., limit=N)`` for cheap per-layer
sensitivities, ``latency(..., statistic="min")`` (interference from other processes only
adds time, so the fastest runs compare models best on a shared machine),
``describe_splits()`` for the report and ``data_fingerprint`` for the cache.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import onnx_ir as ir

from onnxopt import irutil
from onnxopt.errors import OnnxoptError, UsageError
from onnxopt.passbase import CandidateScore, OptimizerPass, PassContext, option
from onnxopt.registry import PassSpec, build_passes, register
from onnxopt.runtime import cpu as hostcpu

logger = logging.getLogger(__name__)

CONV_METHODS = ("spatial", "tucker", "cp", "separable")
MATRIX_METHODS = ("svd",)
ALL_METHODS = (*CONV_METHODS, *MATRIX_METHODS)
_QUANT_MODULES = {"int8": "onnxopt.passes.quantize_static", "fp16": "onnxopt.passes.fp16"}
_SENSITIVITY_EPS = 1e-4
AUTO_SENSITIVITY_SECONDS = 3.0  # sensitivities on the whole search split when a score costs less
AUTO_SENSITIVITY_SAMPLES = 16  # ... else on this many first samples
CACHE_VERSION = 1
# whole-model timings: as many rounds as fit in about this many seconds per model, between these bounds
# (a 1.5 s detector timed 2 × 23 rounds per model per comparison spent minutes on timing alone)
WHOLE_MODEL_SECONDS = 4.0
WHOLE_MODEL_MIN_RUNS = 5
LATENCY_PROBE_RUNS = 3
# the phases of the report's time table, in order ("final timing" and "holdout verification" run inside the
# final choice; each second is counted in the innermost phase)
PHASES = ("layer shapes", "original", "quantization baseline", "layer timing", "layer sensitivity", "search",
          "final candidates", "final timing", "holdout verification")
# a further quantization attempt (more layers excluded) only when the last one cost at most this share
# of the time left (each attempt calibrates afresh: minutes on a large detector)
AUTO_BASELINE_SHARE = 1 / 3


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class AutoOptions:
    methods: tuple[str, ...] = option(
        ALL_METHODS, "decomposition methods to try ('|'-separated): spatial, tucker, cp, separable (k×k convs), "
                     "svd (1×1 convs, Gemm, MatMul)")
    levels: tuple[float, ...] = option((0.9, 0.95, 0.98), "rank levels: singular-value energy kept, in (0, 1]")
    quantize: Literal["none", "int8", "fp16"] = option(
        "none", "quantize after decomposing, within the same budget; the result is never slower than the "
                "quantization alone")
    round: int | None = option(None, "round ranks up to a multiple of this (default: 16 on cpu, 8 on cuda)")
    refit: bool = option(False, "refit each decomposed layer's last factor on the search data (slower search)")
    min_layer_speedup: float = option(
        1.1, "a decomposed layer must run at least this much faster than the original layer, measured")
    min_speedup: float = option(
        1.02, "a lossy result must beat the next-slower candidate meeting the budget by this factor")
    min_macs: float = option(1e6, "skip layers with fewer MACs per sample")
    min_pointwise_channels: int = option(
        128, "1×1 convs, Gemm and MatMul are candidates when both weight dimensions reach this")
    max_layers: int = option(0, "consider only the N layers with the most MACs (0 = all)")
    per_layer: int = option(3, "time-saving candidates per layer whose sensitivity is measured")
    sensitivity_samples: int | None = option(
        None, "search samples the per-layer sensitivity is measured on (0 = all; default: all when scoring the "
              "whole search split takes under 3 s, else 16)")
    latency_runs: int = option(20, "timed rounds per latency measurement")
    patience: int = option(3, "stop adding layers after this many failed in a row")
    margin: float = option(
        0.25, "share of the budget's slack the search keeps in reserve, so that its answer also holds on the "
              "holdout split (0 = search right up to the budget)")
    include: tuple[str, ...] = option((), "only layers whose node name matches one of these globs")
    exclude: tuple[str, ...] = option((), "skip layers whose node name matches one of these globs")
    time_budget: float | None = option(None, "seconds the search may spend (default: the context's --time-budget)")
    cache_dir: str | None = option(None, "cache folder (default $XDG_CACHE_HOME/onnxopt/auto)")
    cache: bool = option(True, "read and write the measurement cache")

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(ALL_METHODS)}")
        if not self.methods:
            raise ValueError("give at least one method")
        if not self.levels or any(not (0 < level <= 1) for level in self.levels):
            raise ValueError("levels must be energies in (0, 1]")
        if self.round is not None and self.round < 1:
            raise ValueError("round must be >= 1")
        if self.min_layer_speedup < 1 or self.min_speedup < 1:
            raise ValueError("min_layer_speedup and min_speedup must be >= 1")
        if self.per_layer < 1 or self.latency_runs < 1 or self.patience < 1:
            raise ValueError("per_layer, latency_runs and patience must be >= 1")
        if (self.sensitivity_samples or 0) < 0 or self.max_layers < 0 or self.min_macs < 0:
            raise ValueError("sensitivity_samples, max_layers and min_macs must be >= 0")
        if not 0 <= self.margin < 1:
            raise ValueError("margin must be in [0, 1)")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError("time_budget must be > 0")


# --------------------------------------------------------------------------- records


@dataclass
class _Candidate:
    """One (layer, method, level): its measured latency gain and sensitivity."""

    layer: _Layer
    method: str
    level: float
    ranks: dict[str, int] | None = None
    reason: str | None = None  # why it is out (not applicable, slower, breaks the budget, ...)
    base_s: float | None = None  # single-layer latency, original layer (same measurement)
    cand_s: float | None = None
    score: dict[str, Any] | None = None  # alone: value, rel_l2, passed, failures, samples

    @property
    def label(self) -> str:
        return f"{self.method}@{self.level:g}"

    @property
    def speedup(self) -> float | None:
        if self.base_s is None or self.cand_s is None or not self.cand_s > 0:
            return None
        return self.base_s / self.cand_s

    @property
    def gain_s(self) -> float:
        if self.base_s is None or self.cand_s is None or not math.isfinite(self.cand_s):
            return 0.0
        return self.base_s - self.cand_s

    @property
    def sensitivity(self) -> float:
        """Relative L2 error of the model output with this layer alone decomposed."""
        if self.score is None or self.score.get("rel_l2") is None:
            return math.inf
        return float(self.score["rel_l2"])

    @property
    def key(self) -> float:
        """Gain per unit of sensitivity: what the search orders by."""
        return self.gain_s / (self.sensitivity + _SENSITIVITY_EPS)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "level": self.level}
        if self.ranks:
            out["ranks"] = self.ranks
        if self.speedup is not None:
            out["layer_speedup"] = round(self.speedup, 3)
            out["gain_ms"] = round(self.gain_s * 1e3, 4)
        if self.score is not None:
            out["sensitivity_rel_l2"] = _round(self.score.get("rel_l2"))
            out["alone_metric"] = _round(self.score.get("value"))
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class _Layer:
    name: str
    op: str
    kind: str  # "kxk", "pointwise" or "matrix"
    node: ir.Node
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] | None
    weight_shape: tuple[int, ...]
    macs: float
    key: str
    methods: tuple[str, ...]
    candidates: list[_Candidate] = field(default_factory=list)
    reason: str | None = None
    options: list[_Candidate] = field(default_factory=list)  # pass alone, sorted by key

    @property
    def escaped(self) -> str:
        return glob.escape(self.name)

    def describe(self) -> str:
        dims = "×".join(map(str, self.weight_shape))
        return f"{self.op} {dims} at input {'×'.join(map(str, self.input_shape))}"


@dataclass
class _Final:
    """A whole-model candidate of the final comparison."""

    label: str
    specs: list[PassSpec]
    selection: list[_Candidate]
    proto: Any = None
    search: CandidateScore | None = None
    holdout: CandidateScore | None = None
    latency_s: float | None = None
    reason: str | None = None


def _round(value: Any, digits: int = 6) -> Any:
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return round(value, digits)
    return value


def _supports(function: Any, keyword: str) -> bool:
    import inspect

    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _pass_spec(name: str, options: dict[str, Any]) -> PassSpec:
    """A spec for a pass the registry knows; quantization passes are imported if a package
    ``__init__`` does not register them yet."""
    from onnxopt.registry import get

    try:
        get(name)
    except UsageError:
        module = _QUANT_MODULES.get(name)
        if module is None:
            raise
        import importlib

        importlib.import_module(module)
        get(name)
    return PassSpec(name, options)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxopt" / "auto"


# --------------------------------------------------------------------------- cache


class _Cache:
    """JSON tables on disk, merged on write (written atomically)."""

    def __init__(self, folder: Path | None, model_hash: str):
        self.folder = folder
        self.files = {} if folder is None else {
            "latency": folder / "latency.json",
            "model": folder / f"{model_hash[:24]}.json",
        }
        self.tables: dict[str, dict[str, Any]] = {"latency": {}, "model": {}}
        self.dirty: dict[str, dict[str, Any]] = {"latency": {}, "model": {}}
        self.hits = 0
        self.misses = 0
        for table, path in self.files.items():
            self.tables[table] = self._read(path)

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, table: str, key: str | None) -> Any:
        if self.folder is None or key is None:
            return None
        value = self.tables[table].get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, table: str, key: str | None, value: Any) -> None:
        if self.folder is None or key is None:
            return
        self.tables[table][key] = value
        self.dirty[table][key] = value

    def save(self) -> str | None:
        """Write what changed; a problem is returned as a warning, never raised."""
        if self.folder is None:
            return None
        from onnxopt.io import write_text_atomic

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for table, path in self.files.items():
                if not self.dirty[table]:
                    continue
                entries = self._read(path)
                entries.update(self.dirty[table])
                write_text_atomic(path, json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1))
                self.dirty[table] = {}
        except (OSError, OnnxoptError) as exc:
            return f"cache not written: {exc}"
        return None


def _hash(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes | bytearray):
            digest.update(part)
        elif isinstance(part, np.ndarray):
            digest.update(str(part.dtype).encode() + str(part.shape).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


# --------------------------------------------------------------------------- the pass


@register
class SearchDecompositionPass(OptimizerPass, ir.passes.FunctionalPass):
    name = "auto"
    summary = ("fastest model within the accuracy budget: per-layer decomposition (and quantize=int8|fp16) "
               "chosen by latency measured on the target; needs --data and a budget")
    Options: ClassVar[type] = AutoOptions
    lossless = False
    needs_data = True
    needs_evaluator = True

    @classmethod
    def capability(cls) -> str:
        return super().capability() + ", needs an accuracy budget (searches with measurements)"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.context.evaluator is None:
            self.report.skip_pass("needs a candidate evaluator (run through 'onnxopt optimize' or "
                                  "onnxopt.api.prepare_context, with --data and a budget)")
            return ir.passes.PassResult(model.clone(), False)
        search = _Search(self, model)
        return search.run()


class _OutOfTime(Exception):
    pass


class _Search:
    """One run of the search (see the module docstring); fills the pass's report."""

    def __init__(self, owner: SearchDecompositionPass, model: ir.Model):
        self.owner = owner
        self.options: AutoOptions = owner.options
        self.context: PassContext = owner.context
        self.evaluator = owner.context.evaluator
        self.report = owner.report
        self.model = model
        self.start = time.perf_counter()
        budget = self.options.time_budget if self.options.time_budget is not None else self.context.time_budget
        self.deadline = None if budget is None else self.start + float(budget)
        self.target = getattr(self.evaluator, "target", "cpu") or "cpu"
        self.round = self.options.round or (8 if self.target == "cuda" else 16)
        self.steps: list[dict[str, Any]] = []
        self.pareto: list[dict[str, Any]] = []
        self.phase_seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)  # where the time went (innermost phase)
        self.phase_counts: dict[str, dict[str, int]] = {}  # scores and timed models per phase
        self._phases: list[list] = []  # open phases: [name, seconds spent in nested phases]
        self.whole_runs = self.options.latency_runs  # rounds per whole-model timing (bounded by cost)
        self.notes: list[str] = []
        self.stopped: str | None = None
        # measured costs, for the time reserve
        self.full_score_s = 0.0
        self.quant_build_s = 0.0
        self.original_s: float | None = None
        self.latency_kw = {"statistic": "min"} if _supports(self.evaluator.latency, "statistic") else {}
        self.limit_kw_ok = _supports(self.evaluator.score, "limit")
        # sub-passes run quietly, with the calibration data for refit and quantization
        self.sub_context = PassContext(
            calibration=self.context.calibration, calibration_description=self.context.calibration_description,
            jobs=self.context.jobs, providers=self.context.providers,
        )
        self.q_final: _Final | None = None  # the quantization the decomposition is searched under
        self.q_contenders: list[_Final] = []  # every quantization that met the budget
        self.accepted: list[_Candidate] = []
        self.finals: list[_Final] = []
        self.layers: list[_Layer] = []
        self.rest: list[_Layer] = []
        self.quant_excluded: tuple[str, ...] = ()
        self.quant_ok = False
        self.quant_domain = False  # per-layer latencies measured quantized; budget shared
        self.quant_score: CandidateScore | None = None
        self.threshold: float | None = None
        self._metric: str | None = None
        self.reduced: float | None = None  # the decomposition's share of the budget (value scale)
        self.search_samples: int | None = None

    # ------------------------------------------------------------------ plumbing

    def progress(self, message: str, done: int = 0, total: int = 0) -> None:
        self.context.progress(f"auto: {message}", done, total)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def reserve(self) -> float:
        """Seconds to keep for finishing: final builds, verifications and timing."""
        if self.deadline is None:
            return 0.0
        original = self.original_s or 0.0
        final_latency = original * 4 * (self.whole_runs + 4) + 2.0
        quant = self.quant_build_s if self.quant_domain else 0.0
        # before the first whole-split score, estimate one from the original's latency
        score = self.full_score_s or 1.5 * original * (self.search_samples or 100)
        return quant + 3 * score + final_latency

    def time_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.perf_counter()

    def check_time(self, what: str) -> None:
        if self.time_left() < self.reserve():
            if self.stopped is None:
                self.stopped = f"time budget reached during {what} after {self.elapsed():.0f}s"
                logger.info("auto: %s", self.stopped)
            raise _OutOfTime(what)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Account the time spent inside to ``name``, less the time of phases nested in it."""
        self.phase_seconds.setdefault(name, 0.0)
        self._phases.append([name, 0.0])
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            _, nested = self._phases.pop()
            self.phase_seconds[name] += spent - nested
            if self._phases:
                self._phases[-1][1] += spent

    def _count(self, what: str, n: int, seconds: float) -> None:
        """Add ``n`` builds, scores or timed models and their seconds to the innermost phase."""
        name = self._phases[-1][0] if self._phases else "other"
        counts = self.phase_counts.setdefault(name, {})
        counts[what] = counts.get(what, 0) + n
        counts[f"{what}_s"] = counts.get(f"{what}_s", 0.0) + seconds

    def step(self, phase: str, tried: str, score: CandidateScore | None = None, **extra: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"step": len(self.steps) + 1, "phase": phase, "tried": tried,
                                 "t": round(self.elapsed(), 1)}
        if score is not None:
            entry.update(metric=_round(score.value), passed=score.passed,
                         rel_l2=_round(score.details.get("rel_l2_error")))
            if not score.passed and score.failures:
                entry["failure"] = score.failures[0]
        entry.update({k: _round(v) for k, v in extra.items()})
        self.steps.append(entry)
        return entry

    def apply(self, specs: list[PassSpec], context: PassContext | None = None, base=None):
        """Run plain passes on a copy of ``base`` (default: the input model): (proto, reports)."""
        from onnxopt.pipeline import run_passes

        started = time.perf_counter()
        model = ir.from_proto(base if base is not None else self.base)
        passes = build_passes(specs, context if context is not None else self.sub_context)
        try:
            result, reports = run_passes(model, passes)
            return ir.to_proto(result), reports
        finally:
            self._count("builds", 1, time.perf_counter() - started)

    def score(self, proto, split: str = "search", limit: int | None = None) -> CandidateScore:
        start = time.perf_counter()
        with self.phase("holdout verification") if split == "holdout" else contextlib.nullcontext():
            if limit is not None and self.limit_kw_ok:
                result = self.evaluator.score(proto, split, limit=limit)
            else:
                result = self.evaluator.score(proto, split)
            self._count("scores", 1, time.perf_counter() - start)
        if limit is None and split == "search":
            self.full_score_s = max(self.full_score_s, time.perf_counter() - start)
        self._note(result, split, limit)
        return result

    def _note(self, result: CandidateScore, split: str, limit: int | None) -> None:
        """Learn the budget (threshold, metric) and the search split's size from a score."""
        if result.details.get("threshold") is not None:
            self.threshold = result.details["threshold"]
        if result.metric:
            self._metric = result.metric
        if limit is None and split == "search":
            split_info = result.details.get("split") or {}
            if split_info.get("samples"):
                self.search_samples = int(split_info["samples"])

    def latency(self, protos: list, runs: int | None = None) -> list[float]:
        runs = runs or self.options.latency_runs
        started = time.perf_counter()
        try:
            return list(self.evaluator.latency(protos, runs, **self.latency_kw))
        finally:
            self._count("models_timed", len(protos), time.perf_counter() - started)

    def cached_score(self, key: str | None, build, split: str = "search", limit: int | None = None):
        """A score from the cache or measured (``build()`` returns the proto)."""
        hit = self.cache.get("model", key)
        if hit is not None:
            result = CandidateScore(passed=hit["passed"], value=hit["value"], metric=hit["metric"],
                                    failures=hit["failures"], details=hit["details"])
            self._note(result, split, limit)
            return result, None
        proto = build()
        result = self.score(proto, split, limit)
        self.cache.put("model", key, {
            "passed": result.passed, "value": result.value if math.isfinite(result.value) else -1e30,
            "metric": result.metric, "failures": result.failures,
            "details": {k: result.details.get(k) for k in ("split", "threshold", "rel_l2_error", "cosine_min",
                                                           "top1_agreement")},
        })
        return result, proto

    def score_key(self, specs: list[PassSpec], split: str, limit: int | None = None) -> str | None:
        fingerprint = getattr(self.evaluator, "data_fingerprint", None)
        if not fingerprint or not self.options.cache:
            return None
        # the CPU is part of the key: integer kernels differ between CPUs (u8×s8 saturates without VNNI)
        return _hash("score", self.model_hash, fingerprint, split, limit, hostcpu.cpu_name(),
                     [(s.name, _jsonable(s.options)) for s in specs])

    # ------------------------------------------------------------------ run

    def run(self) -> ir.passes.PassResult:
        import onnx  # noqa: F401  (protobuf for the evaluator)

        self.base = ir.to_proto(self.model)
        self.model_hash = _hash(self.base.SerializeToString())
        folder = None
        if self.options.cache:
            folder = Path(self.options.cache_dir).expanduser() if self.options.cache_dir else default_cache_dir()
        self.cache = _Cache(folder, self.model_hash)
        self.report.figures["target"] = self.target
        self.report.figures["budget"] = self._budget_text()
        splits = getattr(self.evaluator, "describe_splits", None)
        if callable(splits):
            described = splits()
            self.report.figures["splits"] = described
            self.search_samples = int((described.get("search") or {}).get("samples") or 0) or None
        chosen: _Final | None = None
        try:
            with self.phase("layer shapes"):
                self.layers = self._enumerate()
            phases = [("original", self._measure_original), ("quantization baseline", self._quantize_baseline),
                      ("layer timing", self._measure_layers), ("layer sensitivity", self._measure_sensitivity),
                      ("search", self._search)]
            for name, phase in phases:
                try:
                    with self.phase(name):
                        phase()
                except _OutOfTime:
                    break
            with self.phase("final candidates"):
                chosen = self._finish()
        finally:
            warning = self.cache.save()
            if warning:
                self.report.warn(warning)
        return self._result(chosen)

    def _budget_text(self) -> str:
        tolerances = getattr(self.evaluator, "tolerances", None)
        if tolerances is not None and hasattr(tolerances, "to_dict"):
            return ", ".join(f"{k}={v:g}" for k, v in tolerances.to_dict().items() if v is not None)
        return "the evaluator's tolerances"

    # ------------------------------------------------------------------ 1. layers

    def _enumerate(self) -> list[_Layer]:
        graph = self.model.graph
        nodes = [n for n in graph if n.op_type in ("Conv", "Gemm", "MatMul") and n.domain in ("", "ai.onnx")]
        names: dict[str, int] = {}
        for node in nodes:
            name = node.name or (node.outputs[0].name if node.outputs else "")
            names[name] = names.get(name, 0) + 1
        wanted = [n.inputs[0].name for n in nodes if n.inputs and n.inputs[0] is not None]
        self._shapes_fixed = False
        shapes = self._layer_shapes(wanted) if nodes else {}
        layers = []
        for node in nodes:
            name = node.name or (node.outputs[0].name if node.outputs else "")
            result = self._layer(node, name, shapes, names)
            if isinstance(result, str):
                self.report.skip(name, result, op=node.op_type)
            else:
                layers.append(result)
        layers.sort(key=lambda layer: -layer.macs)
        if self.options.max_layers and len(layers) > self.options.max_layers:
            for layer in layers[self.options.max_layers:]:
                layer.reason = f"not among the {self.options.max_layers} layers with the most MACs (max_layers)"
            layers, rest = layers[: self.options.max_layers], layers[self.options.max_layers:]
            self.rest = rest
        else:
            self.rest = []
        self.report.figures["candidate_layers"] = len(layers)
        return layers

    def _layer(self, node: ir.Node, name: str, shapes: dict, names: dict[str, int]) -> _Layer | str:
        import fnmatch

        options = self.options
        if options.include and not any(fnmatch.fnmatchcase(name, p) for p in options.include):
            return "excluded by pattern (matches no include glob)"
        if any(fnmatch.fnmatchcase(name, p) for p in options.exclude):
            return "excluded by pattern (matches an exclude glob)"
        if not name or names.get(name, 0) > 1:
            return "node name is empty or not unique (include= cannot address it)"
        if node.metadata_props.get("onnxopt.decomposed"):
            return "already decomposed"
        if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            return "weight is not constant"
        weight = irutil.constant_array(node.inputs[1])
        if weight is None:
            return "weight is not constant"
        if not np.issubdtype(weight.dtype, np.floating):
            return f"weight dtype {weight.dtype} is not float"
        if irutil.use_count(node.inputs[1]) > 1:
            return "weight is shared with another node"
        if node.op_type == "Conv":
            if weight.ndim != 4:
                return f"{weight.ndim - 2}-D convolutions are not supported"
            attrs = irutil.conv_attributes(node, weight.shape)
            if attrs.group != 1:
                return f"group={attrs.group} (grouped/depthwise convs are not decomposed)"
        elif weight.ndim != 2:
            return f"weight is {weight.ndim}-D (only 2-D weights)"
        x_shape = shapes.get(node.inputs[0].name)
        if x_shape is None or not all(isinstance(d, int) and d > 0 for d in x_shape):
            if self._shapes_fixed:
                return ("input shape unknown: neither shape inference nor a run of the model at the data's "
                        "shapes gave it; a single-layer model cannot be timed")
            return ("input shape unknown (dynamic): a single-layer model cannot be timed; give the input's "
                    "shape (--input-shape NAME:DIMS) or data")
        y_shape = shapes.get(node.outputs[0].name)
        if y_shape is not None and not all(isinstance(d, int) and d > 0 for d in y_shape):
            y_shape = None
        if node.op_type == "Conv":
            F, C, kh, kw = weight.shape
            if y_shape is not None and len(y_shape) == 4:
                out_hw = (y_shape[2], y_shape[3])
            else:
                from onnxopt.passes._decompose import conv_out_hw

                out_hw = conv_out_hw(attrs, (x_shape[2], x_shape[3])) if len(x_shape) == 4 else None
                if out_hw is None:
                    return "output shape unknown"
            macs = float(F * C * kh * kw * out_hw[0] * out_hw[1] * x_shape[0])
            if (kh, kw) == (1, 1):
                if min(F, C) < options.min_pointwise_channels:
                    return f"1×1 conv {C}→{F}: below min_pointwise_channels={options.min_pointwise_channels}"
                kind, methods = "pointwise", tuple(m for m in options.methods if m in MATRIX_METHODS)
            else:
                kind, methods = "kxk", tuple(m for m in options.methods if m in CONV_METHODS)
            extra = {"attrs": {k: str(v) for k, v in sorted(node.attributes.items())}}
        else:
            K, N = weight.shape
            if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
                N, K = weight.shape
            if min(K, N) < options.min_pointwise_channels:
                return f"{node.op_type} {K}→{N}: below min_pointwise_channels={options.min_pointwise_channels}"
            rows = math.prod(x_shape[:-1]) if len(x_shape) > 1 else 1
            if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
                rows = x_shape[-1]
            macs = float(rows * K * N)
            kind, methods = "matrix", tuple(m for m in options.methods if m in MATRIX_METHODS)
            extra = {"attrs": {k: str(v) for k, v in sorted(node.attributes.items())}}
        if not methods:
            return f"no method among methods={'|'.join(options.methods)} applies to a {kind} layer"
        if macs < options.min_macs:
            return f"below min_macs ({macs:.3g} < {options.min_macs:.3g})"
        bias = irutil.constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        key = _hash("layer", node.op_type, weight, bias if bias is not None else b"", tuple(x_shape), extra)
        return _Layer(name, node.op_type, kind, node, tuple(int(d) for d in x_shape),
                      tuple(int(d) for d in y_shape) if y_shape else None, tuple(weight.shape), macs, key, methods)

    def _input_shapes(self) -> tuple[dict[str, tuple[int, ...]], dict[str, np.ndarray] | None]:
        """Concrete shapes of the graph inputs to time layers at, and the feeds they come from.

        The evaluator's first batch (``latency_feeds()``) is what every score and timing runs
        on, so its shapes come first; inputs it lacks take the user's ``--input-shape``
        (``context.input_shapes``)."""
        graph_inputs = {v.name: v for v in self.model.graph.inputs if not v.const_value}
        given = {k: tuple(int(d) for d in v) for k, v in (getattr(self.context, "input_shapes", None) or {}).items()
                 if k in graph_inputs}
        feeds = None
        getter = getattr(self.evaluator, "latency_feeds", None)
        if callable(getter):
            try:
                feeds = {k: np.asarray(v) for k, v in dict(getter()).items() if k in graph_inputs}
            except Exception as exc:  # the data may not decode: then shapes come from --input-shape alone
                from onnxopt.errors import one_line

                self.notes.append(f"layer shapes: the evaluator's first batch is not available ({one_line(exc)})")
        shapes = dict(given)
        origin = {name: "--input-shape" for name in given}
        for name, array in (feeds or {}).items():
            shape = tuple(int(d) for d in array.shape)
            if name in given and given[name] != shape:
                self.notes.append(f"layer shapes: input '{name}' is {'×'.join(map(str, shape))} in the data and "
                                  f"{'×'.join(map(str, given[name]))} in --input-shape; layers are timed at the "
                                  "data's shape (what the search scores and times)")
            shapes[name] = shape
            origin[name] = "data (first batch)"
        self.report.figures["layer_shapes"] = {
            "inputs": {name: list(shape) for name, shape in shapes.items()},
            "from": {name: origin[name] for name in shapes},
        }
        return shapes, feeds

    def _layer_shapes(self, wanted: list[str]) -> dict[str, tuple[int | None, ...]]:
        """Value name → shape, with the graph inputs fixed at the data's or the user's shapes.

        ONNX shape inference (with data propagation), and for values still unknown (shapes
        computed at run time: Resize to a computed size, Shape → Slice → Reshape chains) one
        run of the model on the first batch with those values as extra outputs. Without concrete input shapes: the
        dynamic batch fixed to 1, other dynamic dimensions unknown (as before)."""
        import onnx

        from onnxopt.analysis.shapes import collect_shapes, known_shape, static_shapes

        fixed, feeds = self._input_shapes()
        info = self.report.figures["layer_shapes"]
        if not fixed:
            info["inferred_by"] = "shape inference (dynamic batch fixed to 1)"
            return static_shapes(self.model, wanted)
        self._shapes_fixed = True
        light = onnx.ModelProto()
        light.CopyFrom(self.base)
        for tensor in light.graph.initializer:
            if len(tensor.raw_data) > 4096:  # shapes need dims, not the weights themselves
                tensor.ClearField("raw_data")
        _fix_input_dims(light, fixed)
        del light.graph.value_info[:]  # stale shapes from the export would contradict the fixed ones
        shapes: dict[str, tuple[int | None, ...]] = {}
        how = ["ONNX shape inference"]
        try:
            collect_shapes(onnx.shape_inference.infer_shapes(light, data_prop=True), shapes)
        except Exception as exc:
            logger.info("auto: ONNX shape inference failed (%s)", exc)
        # what ONNX shape inference leaves unknown comes from one run of the model (exact, and
        # cheaper than onnxruntime's symbolic inference on the models that need it)
        missing = [name for name in dict.fromkeys(wanted) if not known_shape(shapes.get(name))]
        if missing:
            ran = self._run_for_shapes(missing, fixed, feeds)
            if ran:
                shapes.update(ran)
                how.append(f"one run of the model ({len(ran)} values)")
        info["inferred_by"] = " + ".join(how)
        return shapes

    def _run_for_shapes(self, names: list[str], fixed: dict[str, tuple[int, ...]],
                        feeds: dict[str, np.ndarray] | None) -> dict[str, tuple[int, ...]]:
        """Shapes of ``names`` read off one onnxruntime run of the model (CPU, optimizations
        off) on the first batch, or seeded random inputs at the fixed shapes."""
        import onnx
        import onnxruntime as ort

        from onnxopt.io import runnable_bytes

        self.progress("running the model once to read its layers' shapes")
        full = onnx.ModelProto()
        full.CopyFrom(self.base)
        _fix_input_dims(full, fixed)
        outputs = {o.name for o in full.graph.output}
        full.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in outputs)
        try:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.intra_op_num_threads = getattr(self.evaluator, "threads", None) or 1
            options.log_severity_level = 3
            session = ort.InferenceSession(runnable_bytes(full), options, providers=["CPUExecutionProvider"])
            rng = np.random.default_rng(0)
            ready = {}
            for value in session.get_inputs():
                dtype = np.dtype(_ORT_NUMPY.get(value.type, np.float32))
                if feeds is not None and value.name in feeds:
                    ready[value.name] = feeds[value.name].astype(dtype, copy=False)
                elif value.name in fixed:
                    ready[value.name] = (rng.standard_normal(fixed[value.name]) if dtype.kind == "f" else
                                         np.zeros(fixed[value.name])).astype(dtype)
                else:
                    return {}
            values = session.run(names, ready)
        except Exception as exc:  # onnxruntime raises several unrelated types
            from onnxopt.errors import one_line

            self.notes.append(f"layer shapes: the model did not run at the given shapes ({one_line(exc)})")
            return {}
        return {name: tuple(int(d) for d in np.shape(value)) for name, value in zip(names, values, strict=True)}

    # ------------------------------------------------------------------ 2. original and quantization

    def _measure_original(self) -> None:
        self.progress("timing the original")
        key = None
        if self.options.cache:
            key = _hash("whole", self.model_hash, "original", self.target, self._latency_env())
        hit = self.cache.get("latency", key)
        if hit is not None:
            self.original_s = hit["s"]
        else:
            # a short probe first: a slow model gets fewer rounds in every whole-model timing
            self.original_s = self.latency([self.base], LATENCY_PROBE_RUNS)[0]
            runs = self._whole_model_runs(self.original_s)
            if runs > LATENCY_PROBE_RUNS:
                again = self.latency([self.base], runs)[0]
                self.original_s = min(self.original_s, again) if self.latency_kw else again
            self.cache.put("latency", key, {"s": self.original_s})
        self.whole_runs = self._whole_model_runs(self.original_s)
        self.report.figures["whole_model_timing_runs"] = self.whole_runs
        self.step("original", "original model", latency_ms=self.original_s * 1e3)

    def _whole_model_runs(self, seconds: float | None) -> int:
        """Rounds per whole-model timing: ``latency_runs``, fewer for a model so slow that they
        would take more than WHOLE_MODEL_SECONDS (at least WHOLE_MODEL_MIN_RUNS)."""
        runs = self.options.latency_runs
        if seconds is None or not math.isfinite(seconds) or seconds <= 0:
            return runs
        return min(runs, max(WHOLE_MODEL_MIN_RUNS, math.ceil(WHOLE_MODEL_SECONDS / seconds)))

    def _latency_env(self) -> dict[str, Any]:
        import onnxruntime

        return {"ort": onnxruntime.__version__, "cpu": hostcpu.cpu_name(), "threads": getattr(self.evaluator, "threads", None),
                "stat": self.latency_kw.get("statistic", "median"), "runs": self.options.latency_runs}

    def _quant_spec(self, exclude: tuple[str, ...] = ()) -> PassSpec:
        options: dict[str, Any] = {}
        if exclude:
            options["exclude"] = tuple(exclude)
        return _pass_spec(self.options.quantize, options)

    def _quantize_baseline(self) -> None:
        if self.options.quantize == "none":
            return
        weight_nodes = [layer for layer in self._weight_node_names()]
        attempts: list[tuple[str, ...]] = [()]
        if len(weight_nodes) >= 2:
            attempts.append((weight_nodes[0], weight_nodes[-1]))
            for share in (0.1, 0.25):
                k = max(2, int(round(len(weight_nodes) * share)))
                ends = tuple(dict.fromkeys(weight_nodes[:k] + weight_nodes[-k:]))
                if ends != attempts[-1]:
                    attempts.append(ends)
        attempt_s = 0.0  # what the last attempt cost (calibration, scores)
        stopped = False
        for index, names in enumerate(attempts):
            if index > 0:
                self.check_time("quantization baseline")
                spare = self.time_left() - self.reserve()
                if attempt_s > AUTO_BASELINE_SHARE * spare:
                    self.notes.append(
                        f"{self.options.quantize}: stopped excluding layers after {index} attempt(s): one more "
                        f"would take about {attempt_s:.0f}s, over {AUTO_BASELINE_SHARE:.0%} of the {spare:.0f}s "
                        "left for the search")
                    stopped = True
                    break
            exclude = tuple(glob.escape(n) for n in names)
            specs = [self._quant_spec(exclude)]
            label = self.options.quantize + (f" excluding {len(names)} layers" if names else " alone")
            self.progress(f"{label}: building and scoring")
            started = time.perf_counter()
            built: dict[str, Any] = {}

            def build(specs=specs, built=built):
                if "proto" not in built:  # built once for the screen and the whole split
                    proto, reports = self.apply(specs, self._quant_context())
                    built["proto"], built["report"] = proto, reports[0]
                return built["proto"]

            result, proto = None, None
            attempt_started = time.perf_counter()
            screen = self._screen_samples()  # from the first attempt on, the whole-split score's cost is known
            try:
                if screen:
                    # scoring the whole split costs seconds per sample on large models: an attempt that
                    # fails the budget on its first samples fails it on the whole split
                    first, _ = self.cached_score(self.score_key(specs, "search", screen), build, limit=screen)
                    report = built.get("report")
                    if report is not None and report.skipped_reason:
                        result = first
                    elif self._subset_breaks_budget(first, screen):
                        self.step("quantization", f"{label} (first {screen} samples)", first,
                                  excluded=list(names), note="breaks the budget: not scored on the whole split")
                        attempt_s = time.perf_counter() - attempt_started
                        continue
                if result is None:
                    result, proto = self.cached_score(self.score_key(specs, "search"), build)
            except OnnxoptError as exc:
                self.step("quantization", label, note=f"failed: {exc}")
                self.notes.append(f"{label}: failed ({exc})")
                break
            attempt_s = time.perf_counter() - attempt_started
            proto = built.get("proto", proto)
            report = built.get("report")
            if report is not None and report.skipped_reason:
                self.step("quantization", label, note=f"skipped: {report.skipped_reason}")
                self.notes.append(f"{self.options.quantize} does not apply: {report.skipped_reason}")
                break
            if proto is not None:
                self.quant_build_s = max(self.quant_build_s, time.perf_counter() - started)
            self.threshold = result.details.get("threshold", self.threshold)
            self._metric = result.metric or self._metric
            within = self._within(result, self._search_target())
            self.step("quantization", label, result, excluded=list(names), within_margin=within)
            if result.passed:  # within the budget: a contender of the final choice in any case
                self.q_contenders.append(_Final(label, specs, [], proto=proto, search=result))
            if within:
                self.quant_ok = True
                self.quant_excluded = exclude
                self.quant_score = result
                self.q_final = self.q_contenders[-1]
                break
        if not self.quant_ok:
            self.notes.append(f"{self.options.quantize} breaks the budget" + (
                " in the attempts made" if stopped else " even with the first/last layers excluded") +
                ": decomposition is searched alone")
            return
        # time it against the original: measured in the quantized domain only when it pays
        self._time_finals([self.q_final])
        q_s = self.q_final.latency_s
        speedup = self.original_s / q_s if q_s and self.original_s else None
        self.step("quantization", f"{self.q_final.label}: whole-model latency",
                  latency_ms=q_s * 1e3 if q_s else None, speedup=speedup)
        if speedup is not None and speedup > 1.0:
            self.quant_domain = True
            self.reduced = self._share_budget(self.quant_score)
        else:
            measured = f"{speedup:.2f}×" if speedup else "did not run"
            self.notes.append(f"{self.options.quantize} meets the budget but is not faster than the original "
                              f"on {self.target} ({measured}): layer latencies are measured unquantized")

    def _screen_samples(self) -> int | None:
        """Samples to screen quantization attempts on before scoring the whole search split:
        AUTO_SENSITIVITY_SAMPLES where a whole-split score would take over
        AUTO_SENSITIVITY_SECONDS and failing on a subset proves failing on the whole split
        (worst-sample cosine, top-1 flips); else None."""
        if not self.limit_kw_ok or getattr(self.evaluator, "metric", "cosine_min") not in ("cosine_min",
                                                                                            "top1_agreement"):
            return None
        samples = self.search_samples or 0
        if samples < 2 * AUTO_SENSITIVITY_SAMPLES:
            return None
        estimate = self.full_score_s or 1.3 * (self.original_s or 0.0) * samples
        return AUTO_SENSITIVITY_SAMPLES if estimate >= AUTO_SENSITIVITY_SECONDS else None

    def _subset_breaks_budget(self, result: CandidateScore, samples: int) -> bool:
        """Whether a score on the first ``samples`` samples proves that the whole search split
        misses the budget itself (not only the margin)."""
        threshold = result.details.get("threshold", self.threshold)
        if threshold is None:
            return False
        if not math.isfinite(result.value):
            return bool(result.failures)  # does not load or run: it will not on more samples either
        if result.metric == "cosine_min":  # the worst sample of a subset bounds the whole split's
            return result.value < threshold - 1e-12
        if result.metric == "top1_agreement" and self.search_samples:
            flips = round((1.0 - result.value) * samples)
            return flips > math.floor((1.0 - threshold) * self.search_samples + 1e-9)
        return False

    def _quant_context(self) -> PassContext:
        return PassContext(
            calibration=self.context.calibration, calibration_description=self.context.calibration_description,
            jobs=self.context.jobs, providers=self.context.providers,
            progress=lambda message, done, total: self.context.progress(f"auto: {message}", done, total),
        )

    def _weight_node_names(self) -> list[str]:
        names = []
        for node in self.model.graph:
            if node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose") and node.name:
                if len(node.inputs) > 1 and irutil.is_constant(node.inputs[1]):
                    names.append(node.name)
        return names

    def _search_target(self) -> float | None:
        """The budget with ``margin`` of its slack kept in reserve (value scale)."""
        threshold = self.threshold
        if threshold is None:
            return None
        margin = self.options.margin
        if self.metric == "neg_rel_l2_error":
            return threshold * (1.0 - margin)  # −e → −e·(1 − margin): stricter
        return threshold + margin * (1.0 - threshold)

    def _share_budget(self, quant: CandidateScore) -> float | None:
        """The value the decomposition alone must reach so that quantization still fits."""
        target = self._search_target()
        value = quant.value
        if target is None or not math.isfinite(value):
            return None
        if quant.metric == "top1_agreement":
            return 1.0 - max(0.0, (1.0 - target) - (1.0 - value))
        if quant.metric == "cosine_min":
            return 1.0 - max(0.0, 0.9 * ((1.0 - target) - (1.0 - value)))
        # relative L2 error (value = −error): independent errors add in quadrature
        budget, used = -target, -value
        return -0.9 * math.sqrt(max(0.0, budget * budget - used * used))

    @property
    def metric(self) -> str:
        return self._metric or ""

    def _within(self, result: CandidateScore, target: float | None = None, samples: int | None = None) -> bool:
        """Whether ``result`` meets ``target`` (default: the search target, or the
        decomposition's share when quantization shares the budget). ``samples``: the
        result is on that many first samples of the search split only — for agreement,
        more flips there than the whole split allows fail it (a safe test)."""
        if target is None:
            target = self.reduced if self.reduced is not None else self._search_target()
        keyword = {"top1_agreement": "top-1 agreement", "cosine_min": "cosine",
                   "neg_rel_l2_error": "relative L2"}.get(result.metric, "\0")
        if any(keyword not in failure for failure in result.failures):
            return False  # another tolerance, or a candidate that does not run
        if target is None:
            return result.passed
        if not math.isfinite(result.value):
            return False
        if result.metric == "top1_agreement" and self.search_samples:
            used = samples or self.search_samples
            flips = round((1.0 - result.value) * used)
            return flips <= math.floor((1.0 - target) * self.search_samples + 1e-9)
        return result.value >= target - 1e-12

    # ------------------------------------------------------------------ 3. per-layer latency

    def _tiny(self, layer: _Layer):
        import onnx
        from onnx import helper, numpy_helper

        from onnxopt import io

        node = layer.node
        x = node.inputs[0]
        inits = []
        names = [x.name]
        for value in node.inputs[1:]:
            if value is None:
                names.append("")
                continue
            array = irutil.constant_array(value)
            inits.append(numpy_helper.from_array(array, value.name))
            names.append(value.name)
        out = node.outputs[0].name
        proto = helper.make_node(node.op_type, names, [out], name=layer.name)
        proto.attribute.extend(ir.serde.serialize_attribute(a) for a in node.attributes.values())
        dtype = helper.np_dtype_to_tensor_dtype(np.dtype(irutil.constant_array(node.inputs[1]).dtype))
        graph = helper.make_graph(
            [proto], "layer", [helper.make_tensor_value_info(x.name, dtype, list(layer.input_shape))],
            [helper.make_tensor_value_info(out, dtype, list(layer.output_shape) if layer.output_shape else None)],
            inits,
        )
        opset = self.model.opset_imports.get("", None) or self.model.opset_imports.get("ai.onnx", 13)
        tiny = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        tiny.ir_version = max(7, min(self.base.ir_version or 7, onnx.IR_VERSION))
        io.clamp_ir_version(tiny)
        return tiny

    def _decompose_tiny(self, tiny, candidate: _Candidate):
        """(decomposed single-layer proto, ranks) or (None, reason)."""
        from onnxopt.pipeline import run_passes

        spec = PassSpec(candidate.method, self._decomposition_options(candidate, [candidate.layer], tiny=True))
        model = ir.from_proto(tiny)
        started = time.perf_counter()
        try:
            result, reports = run_passes(model, build_passes([spec], PassContext()))
        except OnnxoptError as exc:
            return None, f"decomposition failed: {exc}"
        finally:
            self._count("builds", 1, time.perf_counter() - started)
        report = reports[0]
        if not report.applied:
            reason = report.skipped[0]["reason"] if report.skipped else (report.skipped_reason or "not applied")
            return None, reason
        return ir.to_proto(result), dict(report.applied[0].get("ranks") or {})

    def _to_domain(self, proto, layer: _Layer):
        """The single-layer model as the final model would run it (quantized or not)."""
        if not self.quant_domain or self._excluded_from_quant(layer):
            return proto
        from onnxopt.pipeline import run_passes

        if self.options.quantize == "int8":
            spec = _pass_spec("int8", {"calib": "random", "samples": 2, "preprocess": False})
            proto = _with_quantized_consumer(proto)
        else:
            spec = _pass_spec(self.options.quantize, {})
        started = time.perf_counter()
        try:
            result, reports = run_passes(ir.from_proto(proto), build_passes([spec], PassContext()))
        finally:
            self._count("builds", 1, time.perf_counter() - started)
        if reports[0].skipped_reason:
            raise OnnxoptError(f"{self.options.quantize} of the single-layer model: {reports[0].skipped_reason}")
        return ir.to_proto(result)

    def _excluded_from_quant(self, layer: _Layer) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(layer.name, p) for p in self.quant_excluded)

    def _domain(self, layer: _Layer) -> str:
        return self.options.quantize if self.quant_domain and not self._excluded_from_quant(layer) else "none"

    def _latency_key(self, candidate: _Candidate) -> str | None:
        if not self.options.cache:
            return None
        return _hash("layer-latency", candidate.layer.key, candidate.method, candidate.level, self.round,
                     self._domain(candidate.layer), self.target, self._latency_env())

    def _measure_layers(self) -> None:
        total = len(self.layers)
        for index, layer in enumerate(self.layers):
            self.progress(f"timing {layer.name} ({layer.describe()})", index, total)
            try:
                self.check_time("per-layer latency")
            except _OutOfTime:
                for rest in self.layers[index:]:
                    rest.reason = rest.reason or "not measured: the time budget ran out"
                raise
            try:
                self._measure_layer(layer)
            except OnnxoptError as exc:
                layer.reason = f"could not be timed: {exc}"
        self.progress("layers timed", total, total)

    def _measure_layer(self, layer: _Layer) -> None:
        levels = sorted(set(self.options.levels))
        layer.candidates = [_Candidate(layer, m, lv) for m in layer.methods for lv in levels]
        by_method = {m: [c for c in layer.candidates if c.method == m] for m in layer.methods}
        tiny = None
        built: dict[int, Any] = {}

        def measure(group: list[_Candidate]) -> None:
            nonlocal tiny
            todo = []
            for candidate in group:
                hit = self.cache.get("latency", self._latency_key(candidate))
                if hit is not None:
                    candidate.ranks = hit.get("ranks")
                    candidate.reason = hit.get("reason")
                    candidate.base_s, candidate.cand_s = hit.get("base_s"), hit.get("cand_s")
                    continue
                todo.append(candidate)
            if not todo:
                return
            if tiny is None:
                tiny = self._tiny(layer)
            protos = []
            measured = []
            for candidate in todo:
                proto, ranks = self._decompose_tiny(tiny, candidate)
                if proto is None:
                    candidate.reason = f"not applicable: {ranks}"
                    self.cache.put("latency", self._latency_key(candidate), {"reason": candidate.reason})
                    continue
                candidate.ranks = ranks
                twin = self._same_ranks(candidate)
                if twin is not None:
                    candidate.reason = f"same ranks as {twin.label}"
                    candidate.base_s, candidate.cand_s = twin.base_s, twin.cand_s
                    self.cache.put("latency", self._latency_key(candidate), {
                        "ranks": ranks, "reason": candidate.reason, "base_s": twin.base_s, "cand_s": twin.cand_s})
                    continue
                protos.append(self._to_domain(proto, layer))
                measured.append(candidate)
            if not measured:
                return
            base = built.get(0)
            if base is None:
                base = built[0] = self._to_domain(tiny, layer)
            times = self.latency([base, *protos])
            for candidate, seconds in zip(measured, times[1:], strict=True):
                candidate.base_s, candidate.cand_s = times[0], seconds
                self.cache.put("latency", self._latency_key(candidate), {
                    "ranks": candidate.ranks, "base_s": times[0], "cand_s": seconds})

        # stage 1: each method at its most aggressive level
        first = [cands[0] for cands in by_method.values()]
        measure(first)
        # stage 2: the other levels of the methods that paid there
        rest = []
        for cands in by_method.values():
            head = cands[0]
            if head.reason and head.reason.startswith("not applicable") and "MACs would not drop" in head.reason:
                for c in cands[1:]:
                    c.reason = f"not applicable: MACs do not drop already at {head.label}"
                continue
            if head.speedup is None or head.speedup < self.options.min_layer_speedup:
                for c in cands[1:]:
                    c.reason = (f"not measured: {head.label} already does not save time"
                                if head.speedup is not None else f"not measured: {head.label} {head.reason}")
                continue
            rest.extend(cands[1:])
        measure(rest)
        threshold = self.options.min_layer_speedup
        for candidate in layer.candidates:
            if candidate.reason is None and (candidate.speedup is None or candidate.speedup < threshold):
                speed = candidate.speedup
                candidate.reason = ("does not run" if speed is None or speed == 0 else
                                    f"measured {speed:.2f}× on {self.target} (< {threshold:g}×)" +
                                    (" — slower" if speed < 1 else ""))
        saving = [c for c in layer.candidates if c.reason is None]
        if not saving:
            layer.reason = "no method saves time: " + _method_summary(layer)

    @staticmethod
    def _same_ranks(candidate: _Candidate) -> _Candidate | None:
        for other in candidate.layer.candidates:
            if other is candidate:
                return None
            if other.method == candidate.method and other.ranks == candidate.ranks and other.cand_s is not None:
                return other
        return None

    # ------------------------------------------------------------------ 4. sensitivity

    def _decomposition_options(self, candidate: _Candidate, layers: list[_Layer], tiny: bool = False) -> dict:
        options: dict[str, Any] = {"include": tuple(layer.escaped for layer in layers), "energy": candidate.level}
        if candidate.method != "separable":
            options["round"] = self.round
        if self.options.refit and not tiny:
            options["refit"] = True
        return options

    def _specs(self, selection: list[_Candidate]) -> list[PassSpec]:
        """One decomposition pass per (method, level), with include= its layers; sorted."""
        groups: dict[tuple[str, float], list[_Candidate]] = {}
        for candidate in selection:
            groups.setdefault((candidate.method, candidate.level), []).append(candidate)
        specs = []
        for (method, level) in sorted(groups, key=lambda k: (ALL_METHODS.index(k[0]), k[1])):
            members = sorted(groups[(method, level)], key=lambda c: c.layer.name)
            specs.append(PassSpec(method, self._decomposition_options(members[0], [c.layer for c in members])))
        return specs

    def _measure_sensitivity(self) -> None:
        samples = self.options.sensitivity_samples
        if samples is None:  # auto: the whole split when that is cheap, else the first 16 samples
            estimate = self.full_score_s or 1.3 * (self.original_s or 0.0) * (self.search_samples or 100)
            samples = 0 if estimate < AUTO_SENSITIVITY_SECONDS else AUTO_SENSITIVITY_SAMPLES
        samples = samples or None
        if samples is not None and not self.limit_kw_ok:
            self.notes.append("the evaluator scores whole splits only: sensitivities use the whole search split")
            samples = None
        if self.search_samples is None:
            splits = getattr(self.evaluator, "describe_splits", None)
            if callable(splits):
                self.search_samples = int(splits().get("search", {}).get("samples") or 0) or None
        if samples is not None and self.search_samples is not None:
            samples = min(samples, self.search_samples)
        used = samples or self.search_samples
        self.report.figures["sensitivity_samples"] = used
        work = []
        for layer in self.layers:
            if layer.reason:
                continue
            saving = sorted((c for c in layer.candidates if c.reason is None), key=lambda c: -c.gain_s)
            chosen: list[_Candidate] = []
            if saving:
                chosen.append(saving[0])
                safest = max((c for c in saving if c.method == saving[0].method), key=lambda c: c.level)
                for other in [safest, *saving]:
                    if len(chosen) >= self.options.per_layer:
                        break
                    if other not in chosen and (other is safest or other.method not in {c.method for c in chosen}):
                        chosen.append(other)
            for candidate in saving:
                if candidate not in chosen:
                    candidate.reason = f"not scored: {self.options.per_layer} faster candidates of this layer were"
            work.extend(chosen)
        # biggest gains first, so a short time budget measures what matters most
        work.sort(key=lambda c: -c.gain_s)
        fingerprint = getattr(self.evaluator, "data_fingerprint", None)
        for index, candidate in enumerate(work):
            layer = candidate.layer
            self.progress(f"sensitivity of {layer.name} {candidate.label}", index, len(work))
            try:
                self.check_time("per-layer sensitivity")
            except _OutOfTime:
                for rest in work[index:]:
                    rest.reason = rest.reason or "not scored: the time budget ran out"
                self._settle_layers()
                raise
            key = None
            if fingerprint and self.options.cache:
                key = _hash("sensitivity", self.model_hash, fingerprint, layer.key, candidate.method, candidate.level,
                            self.round, self.options.refit, samples)
            hit = self.cache.get("model", key)
            if hit is not None:
                candidate.score = hit
            else:
                try:
                    proto, _ = self.apply(self._specs([candidate]))
                except OnnxoptError as exc:
                    candidate.reason = f"decomposition failed in the model: {exc}"
                    continue
                result = self.score(proto, "search", samples)
                candidate.score = {
                    "value": result.value if math.isfinite(result.value) else -1e30,
                    "rel_l2": result.details.get("rel_l2_error"), "passed": result.passed,
                    "failures": result.failures[:2], "metric": result.metric,
                    "samples": (result.details.get("split") or {}).get("samples", used),
                    "threshold": result.details.get("threshold"),
                }
                self.cache.put("model", key, candidate.score)
            result = CandidateScore(candidate.score["passed"], candidate.score["value"],
                                    candidate.score.get("metric", ""), list(candidate.score.get("failures", [])),
                                    {"threshold": candidate.score.get("threshold", self.threshold)})
            if self.threshold is None and result.details["threshold"] is not None:
                self.threshold = result.details["threshold"]
            self._metric = self._metric or result.metric
            if candidate.score.get("rel_l2") is None:
                candidate.reason = "alone: " + (candidate.score["failures"][0] if candidate.score["failures"]
                                                else "no output error measured")
            elif not self._within(result, samples=int(candidate.score.get("samples") or used or 0)):
                share = "its share of the budget" if self.reduced is not None else "the budget less the margin"
                candidate.reason = f"alone it breaks {share} ({result.metric} {result.value:.4g}" + (
                    f" on {candidate.score.get('samples')} samples)" if samples else ")")
        self._settle_layers()

    def _settle_layers(self) -> None:
        for layer in self.layers:
            if layer.reason:
                continue
            layer.options = sorted((c for c in layer.candidates if c.reason is None and c.score is not None),
                                   key=lambda c: -c.key)
            if not layer.options:
                scored = [c for c in layer.candidates if c.score is not None or
                          (c.reason or "").startswith("not scored")]
                layer.reason = "every time-saving candidate was rejected: " + "; ".join(
                    f"{c.label} {c.reason}" for c in scored) if scored else "no candidate left"

    # ------------------------------------------------------------------ 5. search

    def _estimate(self, selection: list[_Candidate]) -> float | None:
        base = self.q_final.latency_s if self.quant_domain and self.q_final else self.original_s
        if not base:
            return None
        saved = sum(c.gain_s for c in selection)
        # single-layer gains are measured at the layer alone; clamp to keep the estimate sane
        return base / max(base - saved, base * 0.05)

    def _verify(self, selection: list[_Candidate], what: str) -> bool:
        specs = self._specs(selection)
        result, _ = self.cached_score(self.score_key(specs, "search"), lambda: self.apply(specs)[0])
        ok = self._within(result)
        estimate = self._estimate(selection)
        self.step("search", what, result, layers=len(selection), meets_share=ok,
                  estimated_speedup=estimate)
        self.pareto.append({"setting": _describe(selection), "layers": len(selection), "metric": _round(result.value),
                            "passed": ok, "speedup": _round(estimate, 3), "measured": False})
        return ok

    def _search(self) -> None:
        layers = [layer for layer in self.layers if not layer.reason and layer.options]
        layers.sort(key=lambda layer: -layer.options[0].key)
        self.accepted = []
        if not layers:
            return
        n = len(layers)
        initial = [layer.options[0] for layer in layers]
        self.progress(f"verifying all {n} layers", 0, n)
        self.check_time("search")
        if self._verify(initial, f"all {n} layers, each at its best option"):
            self.accepted = list(initial)
            self._upgrade()
            return
        lo, hi = 0, n  # prefix lo meets the budget (0 trivially), prefix hi does not
        while hi - lo > 1:
            self.check_time("search")
            mid = (lo + hi) // 2
            self.progress(f"bisecting: first {mid} layers", lo, n)
            if self._verify(initial[:mid], f"first {mid} layers (bisection {lo}..{hi})"):
                lo = mid
                self.accepted = list(initial[:lo])
            else:
                hi = mid
        self.accepted = list(initial[:lo])
        failures = 0
        for position in range(lo, n):
            layer = layers[position]
            if failures >= self.options.patience:
                layer.reason = (f"not tried: {self.options.patience} layers in a row did not fit the remaining "
                                "budget (patience)")
                continue
            options = layer.options[1:] if position == lo else layer.options
            if position == lo:
                tried = [layer.options[0]]
                layer.options[0].reason = "the combined model broke the budget with it"
            else:
                tried = []
            current = layer.options[0].sensitivity
            fitted = False
            for candidate in options:
                if position == lo and candidate.sensitivity >= current:
                    continue  # back off only to safer options
                self.check_time("search")
                self.progress(f"adding {layer.name} {candidate.label}", position, n)
                if self._verify([*self.accepted, candidate], f"+ {layer.name} {candidate.label}"):
                    self.accepted.append(candidate)
                    fitted = True
                    break
                candidate.reason = "the combined model broke the budget with it"
                tried.append(candidate)
            if fitted:
                failures = 0
            else:
                failures += 1
                labels = ", ".join(c.label for c in tried) or "no safer option"
                layer.reason = f"dropped: the combined model broke the budget with every option tried ({labels})"
        self._upgrade()

    def _upgrade(self) -> None:
        """Spend what is left of the budget on faster options of accepted layers: each layer
        entered the search with its best gain *per sensitivity*, often a safer level than its
        fastest scored option; swap, by extra gain per extra sensitivity, while it fits."""
        swaps = []
        for current in self.accepted:
            for faster in current.layer.options:
                extra = faster.gain_s - current.gain_s
                if extra > 0 and faster is not current:
                    cost = max(faster.sensitivity - current.sensitivity, _SENSITIVITY_EPS)
                    swaps.append((extra / cost, current, faster))
        swaps.sort(key=lambda item: -item[0])
        failures = 0
        for _, current, faster in swaps:
            if current not in self.accepted or failures >= self.options.patience:
                continue
            self.check_time("search")
            trial = [faster if c is current else c for c in self.accepted]
            self.progress(f"upgrading {current.layer.name} to {faster.label}")
            if self._verify(trial, f"{current.layer.name}: {current.label} → {faster.label}"):
                self.accepted = trial
                failures = 0
            else:
                failures += 1

    # ------------------------------------------------------------------ 6. final choice

    def _time_finals(self, finals: list[_Final]) -> None:
        """Whole-model latency of the given candidates, measured together with the original in
        one interleaved measurement (ratios across separate measurements were off by up to
        40 % on this shared machine), twice, keeping each model's fastest run. Cached as a
        group: a re-run with the same candidates reuses the figures."""
        key = None
        if self.options.cache:
            key = _hash("whole", self.model_hash, [[(s.name, _jsonable(s.options)) for s in f.specs] for f in finals],
                        self.target, self._latency_env())
        hit = self.cache.get("latency", key)
        if hit is not None and len(hit.get("s", [])) == len(finals):
            for final, seconds in zip(finals, hit["s"], strict=True):
                final.latency_s = seconds
                if seconds is None:
                    final.reason = final.reason or "does not run"
            return
        ready = []
        for final in finals:
            if final.proto is None:
                try:
                    final.proto = self.apply(final.specs, self._quant_context())[0]
                except OnnxoptError as exc:
                    final.reason = f"could not be built: {exc}"
                    continue
            ready.append(final)
        if not ready:
            return
        protos = [self.base, *(final.proto for final in ready)]
        runs = self.whole_runs
        times = [min(a, b) for a, b in zip(self.latency(protos, runs), self.latency(protos, runs), strict=True)]
        for final, seconds in zip(ready, times[1:], strict=True):
            # scaled by the original's time in the same measurement: the ratio is what is stable
            final.latency_s = self.original_s * seconds / times[0] if self.original_s and times[0] else seconds
            if not math.isfinite(final.latency_s):
                final.reason = "does not run"
                final.latency_s = None
        self.cache.put("latency", key, {"s": [final.latency_s for final in finals]})

    def _finish(self) -> _Final | None:
        finals: list[_Final] = [_Final("original", [], [], proto=self.base, latency_s=self.original_s)]
        q = self.q_final
        finals.extend(self.q_contenders)
        if self.accepted:
            specs = self._specs(self.accepted)
            d = _Final("decomposition", specs, list(self.accepted))
            d.search, d.proto = self.cached_score(self.score_key(specs, "search"), lambda: self.apply(specs)[0])
            finals.append(d)
            if self.quant_domain and q is not None:
                finals.extend(self._decompose_and_quantize(list(self.accepted)))
        self.finals = finals
        contenders = []
        for final in finals[1:]:
            # the margin steered the search; the final choice holds candidates to the budget itself
            if final.search is None or not final.search.passed:
                detail = final.search.failures[0] if final.search is not None and final.search.failures else ""
                final.reason = final.reason or "breaks the budget on the search split" + (f" ({detail})" if detail else "")
            else:
                contenders.append(final)
        self.progress("timing the final candidates")
        with self.phase("final timing"):
            self._time_finals(contenders)
        for final in contenders:
            if final.latency_s:
                self.pareto.append({"setting": final.label, "layers": len(final.selection),
                                    "metric": _round(final.search.value), "passed": True,
                                    "speedup": _round(self.original_s / final.latency_s, 3), "measured": True})
                self.step("final", f"{final.label}: whole-model latency", final.search,
                          latency_ms=final.latency_s * 1e3, speedup=self.original_s / final.latency_s)
        passing = [finals[0], *(f for f in contenders if f.latency_s)]
        passing.sort(key=lambda f: f.latency_s if f.latency_s else math.inf)
        # from the fastest: a lossy candidate must beat the next one by min_speedup, and pass holdout
        for index, final in enumerate(passing):
            if final.label == "original":
                for slower in passing[index + 1:]:
                    slower.reason = slower.reason or (
                        f"not faster than the original ({self.original_s / slower.latency_s:.3f}×)")
                return None
            slower = passing[index + 1] if index + 1 < len(passing) else None
            if slower is not None and slower.latency_s and final.latency_s * self.options.min_speedup > slower.latency_s:
                final.reason = (f"not enough faster than {slower.label} "
                                f"({slower.latency_s / final.latency_s:.3f}× < min_speedup {self.options.min_speedup:g})")
                continue
            if final.proto is None:
                try:
                    final.proto = self.apply(final.specs, self._quant_context())[0]
                except OnnxoptError as exc:
                    final.reason = f"could not be built: {exc}"
                    continue
            self.progress(f"verifying {final.label} on the holdout split")
            holdout = self.score(final.proto, "holdout")
            final.holdout = holdout
            self.step("final", f"{final.label} on the holdout split", holdout,
                      speedup=self.original_s / final.latency_s if final.latency_s else None)
            if holdout.passed:
                return final
            final.reason = "breaks the budget on the holdout split: " + (holdout.failures[0] if holdout.failures else "")
        return None

    def _decompose_and_quantize(self, accepted: list[_Candidate]) -> list[_Final]:
        """Decomposition followed by the quantization; halve the decomposition (most sensitive
        layers out) when the pair breaks the budget."""
        out = []
        selection = list(accepted)
        attempt = 0
        while selection:
            attempt += 1
            excluded = list(self.quant_excluded)
            excluded += [f"{layer.escaped}/*" for layer in (c.layer for c in selection)
                         if self._excluded_from_quant(layer)]
            specs = [*self._specs(selection), self._quant_spec(tuple(excluded))]
            label = f"decomposition ({len(selection)} layers) + {self.options.quantize}"
            final = _Final(label, specs, list(selection))
            self.progress(f"building {label}")
            try:
                if attempt > 1:
                    self.check_time("decomposition + quantization")
                result, proto = self.cached_score(self.score_key(specs, "search"),
                                                  lambda specs=specs: self.apply(specs, self._quant_context())[0])
            except _OutOfTime:
                break
            except OnnxoptError as exc:
                final.reason = f"failed: {exc}"
                out.append(final)
                break
            final.search, final.proto = result, proto
            self.step("final", label, result, estimated_speedup=None)
            out.append(final)
            if self._within(result, self._search_target()) or attempt >= 2:
                break
            # keep the half with the best gain per sensitivity
            selection = sorted(selection, key=lambda c: -c.key)[: len(selection) // 2]
        return out

    # ------------------------------------------------------------------ result and report

    def _result(self, chosen: _Final | None) -> ir.passes.PassResult:
        self._write_report(chosen)
        if chosen is None:
            return ir.passes.PassResult(self.model.clone(), False)
        if self.context.save_config:
            self._save_config(chosen)
        return ir.passes.PassResult(ir.from_proto(chosen.proto), True)

    def _write_report(self, chosen: _Final | None) -> None:
        report = self.report
        in_result = {id(c) for c in chosen.selection} if chosen else set()
        for layer in [*self.layers, *self.rest]:
            tried = [c.summary() for c in layer.candidates]
            picked = next((c for c in layer.candidates if id(c) in in_result), None)
            if picked is not None:
                report.apply(layer.name, op=layer.op, shape=layer.describe(), **picked.summary(), tried=tried)
                continue
            reason = layer.reason
            if reason is None:
                if any(c in self.accepted for c in layer.candidates):
                    reason = ("chosen by the search, but the final result " +
                              (f"is '{chosen.label}'" if chosen else "is the original") + self._why_not(chosen))
                elif not layer.candidates:
                    reason = "not measured: the time budget ran out"
                else:
                    reason = "not chosen by the search"
            report.skip(layer.name, reason, op=layer.op, shape=layer.describe(), tried=tried)
        finals = self.finals
        report.figures["final_candidates"] = [
            {"label": f.label, "speedup": _round(self.original_s / f.latency_s, 3) if f.latency_s and self.original_s
             else None,
             "search_metric": _round(f.search.value) if f.search else (1.0 if f.label == "original" else None),
             "holdout_metric": _round(f.holdout.value) if f.holdout else None,
             "passed_search": f.search.passed if f.search else f.label == "original",
             "passed_holdout": f.holdout.passed if f.holdout else None,
             "reason": f.reason} for f in finals]
        report.figures["result"] = chosen.label if chosen else "original (unchanged)"
        if chosen is not None and chosen.latency_s and self.original_s:
            report.figures["speedup"] = round(self.original_s / chosen.latency_s, 3)
            # against the plain quantization when it met the budget, else the one searched under
            alone = [f for f in self.q_contenders if f.label.endswith(" alone") and f.latency_s]
            q = alone[0] if alone else self.q_final
            if q is not None and q.latency_s:
                report.figures[f"speedup_vs_{self.options.quantize}"] = round(q.latency_s / chosen.latency_s, 3)
        if chosen is not None and chosen.holdout is not None:
            report.figures["holdout_metric"] = _round(chosen.holdout.value)
            report.figures["holdout_split"] = (chosen.holdout.details.get("split") or {})
        if chosen is None:
            report.figures["explanation"] = self._explain_nothing()
        report.figures["pipeline"] = [str(s) for s in chosen.specs] if chosen else []
        report.figures["steps"] = self.steps
        report.figures["pareto"] = _pareto(self.pareto)
        report.figures["seconds_by_phase"], report.figures["phases"] = self._phase_table()
        report.figures["seconds"] = round(self.elapsed(), 1)
        report.figures["time_budget"] = (None if self.deadline is None else round(self.deadline - self.start, 1))
        if self.stopped:
            report.figures["stopped"] = self.stopped
            report.warn(self.stopped + ": finished with the best model verified by then")
        report.figures["cache"] = {"folder": str(self.cache.folder) if self.cache.folder else None,
                                   "hits": self.cache.hits, "misses": self.cache.misses}
        report.figures["rank_rounding"] = self.round
        report.figures["latency_domain"] = self.options.quantize if self.quant_domain else "float"
        if self.notes:
            report.figures["notes"] = self.notes
        if self.options.quantize == "fp16" and self.target == "cpu":
            report.warn("fp16 targets GPUs: on a CPU it usually runs slower (onnxruntime's CPU provider has "
                        "few float16 kernels)")

    def _phase_table(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """{phase: seconds} and one row per phase: its seconds and share of the pass, and how
        many models it built (passes run: calibration, decomposition, refit), scored and
        timed, with the seconds each took. Each second is counted once, in the innermost
        phase (holdout verification and final timing are nested in the final choice);
        "other" is the rest (cache, report)."""
        total = max(self.elapsed(), 1e-9)
        seconds = {name: round(value, 2) for name, value in self.phase_seconds.items()}
        seconds["other"] = round(max(0.0, total - sum(self.phase_seconds.values())), 2)
        rows = []
        for name, value in seconds.items():
            counts = self.phase_counts.get(name, {})
            row: dict[str, Any] = {"phase": name, "seconds": value, "share": round(value / total, 3)}
            for what in ("builds", "scores", "models_timed"):
                row[what] = counts.get(what, 0)
                row[f"{what}_s"] = round(counts.get(f"{what}_s", 0.0), 2)
            rows.append(row)
        return seconds, rows

    def _why_not(self, chosen: _Final | None) -> str:
        finals = {f.label: f for f in self.finals}
        parts = []
        for label, final in finals.items():
            if label.startswith("decomposition") and final.reason:
                parts.append(f"{label}: {final.reason}")
        return (": " + "; ".join(parts)) if parts else ""

    def _explain_nothing(self) -> str:
        finals = self.finals
        lines = [f"{f.label}: {f.reason}" for f in finals if f.label != "original" and f.reason]
        layers_saving = sum(1 for layer in self.layers if any(c.speedup and c.speedup >= self.options.min_layer_speedup
                                                             for c in layer.candidates))
        head = (f"kept the original: of {len(self.layers)} candidate layers, {layers_saving} had a decomposition "
                f"that ran faster on {self.target}")
        if not self.accepted:
            head += "; none fit the budget" if layers_saving else "; decomposition does not pay on this model here"
        return head + ("; " + "; ".join(lines) if lines else "")

    def _save_config(self, chosen: _Final) -> None:
        import yaml

        from onnxopt.io import write_text_atomic

        entries = []
        for spec in chosen.specs:
            entry: dict[str, Any] = {"name": spec.name}
            entry.update({k: list(v) if isinstance(v, tuple) else v for k, v in spec.options.items()})
            entries.append(entry)
        header = (f"# written by onnxopt auto: '{chosen.label}', {self.report.figures.get('speedup', '?')}× on "
                  f"{self.target}, budget {self._budget_text()}\n"
                  "# reproduces what auto did from its input model (passes before auto in the pipeline are "
                  "not included)\n")
        text = header + yaml.safe_dump({"passes": entries}, sort_keys=False, allow_unicode=True)
        write_text_atomic(self.context.save_config, text)
        self.report.figures["saved_config"] = str(self.context.save_config)


_ORT_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def _fix_input_dims(proto, fixed: dict[str, tuple[int, ...]]) -> None:
    """Set the graph inputs' dimensions to ``fixed`` (same rank only); a dynamic leading
    dimension of any other input becomes 1."""
    initializers = {t.name for t in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shape = fixed.get(value.name)
        if shape is not None and len(shape) == len(dims):
            for dim, size in zip(dims, shape, strict=True):
                dim.Clear()
                dim.dim_value = int(size)
        elif dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            dims[0].Clear()
            dims[0].dim_value = 1


def _with_quantized_consumer(proto):
    """The single-layer model with its output fed to a cheap op the QDQ quantizer quantizes.

    onnxruntime fuses ``DQ → Conv → Q`` into an integer kernel only when the conv's output
    is quantized, and the quantizer quantizes it only for a quantized consumer: a lone conv
    keeps a float output, runs unfused — slower than float — and made decompositions look
    3–14× faster than they are in the whole quantized model (measured on the YOLO
    detector). In a real model a conv's output always feeds something; a 1×1 MaxPool (4-D)
    or an Add of the output to itself (otherwise) stands in for it, costing both the
    original and the decomposed layer the same."""
    import onnx
    from onnx import helper

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    output = copy.graph.output[0]
    name = output.name
    inner = f"{name}/before_consumer"
    for node in copy.graph.node:
        for index, value in enumerate(node.output):
            if value == name:
                node.output[index] = inner
    rank = len(output.type.tensor_type.shape.dim) if output.type.tensor_type.HasField("shape") else 0
    if rank == 4:
        copy.graph.node.append(helper.make_node("MaxPool", [inner], [name], name="consumer", kernel_shape=[1, 1]))
    else:
        copy.graph.node.append(helper.make_node("Add", [inner, inner], [name], name="consumer"))
    return copy


def _method_summary(layer: _Layer) -> str:
    """One phrase per method: its best measured layer speedup, or why it was not measured."""
    parts = []
    for method in layer.methods:
        cands = [c for c in layer.candidates if c.method == method]
        timed = [c for c in cands if c.speedup is not None and c.reason is None or
                 (c.speedup is not None and (c.reason or "").startswith("measured"))]
        if timed:
            best = max(timed, key=lambda c: c.speedup)
            parts.append(f"{best.label} {best.speedup:.2f}×")
        elif cands:
            reason = (cands[0].reason or "").removeprefix("not applicable: ")
            parts.append(f"{method}: {reason}")
    return "; ".join(parts)


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(options.items())}


def _describe(selection: list[_Candidate]) -> str:
    if not selection:
        return "no layer"
    counts: dict[str, int] = {}
    for candidate in selection:
        counts[candidate.label] = counts.get(candidate.label, 0) + 1
    return ", ".join(f"{n}× {label}" for label, n in sorted(counts.items()))


def _pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of (setting, speedup, metric), each flagged when no other row beats it on both."""
    unique: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        unique.setdefault((row["setting"], row["layers"], row["measured"]), dict(row))
    out = list(unique.values())

    def number(value: Any) -> float:
        return value if isinstance(value, int | float) else -math.inf

    for row in out:  # measured and estimated speedups are not compared with each other
        row["pareto"] = row["passed"] and not any(
            other is not row and other["passed"] and other["measured"] == row["measured"]
            and number(other["speedup"]) >= number(row["speedup"]) and number(other["metric"]) >= number(row["metric"])
            and (number(other["speedup"]) > number(row["speedup"]) or number(other["metric"]) > number(row["metric"]))
            for other in out)
    out.sort(key=lambda r: -number(r["speedup"]))
    return out


__all__ = ["AutoOptions", "SearchDecompositionPass", "default_cache_dir"]
