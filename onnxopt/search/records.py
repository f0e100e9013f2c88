"""What the search's phases hand each other: layers, their candidates, whole-model finalists.

A :class:`Layer` is a decomposable node at its real input shape; its :class:`Candidate` s
are (method, level) pairs that gather a measured single-layer latency gain and a
sensitivity (the relative L2 output error with that layer alone decomposed). The search
orders by gain per sensitivity, gain_s / (rel_l2 + 1e-4). A :class:`Final` is a whole model
of the final comparison; :class:`QuantBaseline` is what the quantization phase found.
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from onnxopt import irutil
from onnxopt.passbase import CandidateScore
from onnxopt.registry import PassSpec

SENSITIVITY_EPS = 1e-4


def round_figure(value: Any, digits: int = 6) -> Any:
    """A float for the report: rounded, and infinities/NaN as strings (JSON has none)."""
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return round(value, digits)
    return value


@dataclass
class Candidate:
    """One (layer, method, level): its measured latency gain and sensitivity."""

    layer: Layer
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
        return self.gain_s / (self.sensitivity + SENSITIVITY_EPS)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "level": self.level}
        if self.ranks:
            out["ranks"] = self.ranks
        if self.speedup is not None:
            out["layer_speedup"] = round(self.speedup, 3)
            out["gain_ms"] = round(self.gain_s * 1e3, 4)
        if self.score is not None:
            out["sensitivity_rel_l2"] = round_figure(self.score.get("rel_l2"))
            out["alone_metric"] = round_figure(self.score.get("value"))
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class Layer:
    name: str
    op: str
    kind: str  # "kxk", "pointwise" or "matrix"
    node: ir.Node
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] | None
    weight_shape: tuple[int, ...]
    macs: float
    key: str  # hash of the weight, bias, input shape and attributes: the latency cache's key
    methods: tuple[str, ...]
    candidates: list[Candidate] = field(default_factory=list)
    reason: str | None = None
    options: list[Candidate] = field(default_factory=list)  # pass alone, sorted by key

    @property
    def escaped(self) -> str:
        return glob.escape(self.name)

    def describe(self) -> str:
        dims = "×".join(map(str, self.weight_shape))
        return f"{self.op} {dims} at input {'×'.join(map(str, self.input_shape))}"


@dataclass
class Final:
    """A whole-model candidate of the final comparison."""

    label: str
    specs: list[PassSpec]
    selection: list[Candidate]
    proto: Any = None
    search: CandidateScore | None = None
    holdout: CandidateScore | None = None
    latency_s: float | None = None
    reason: str | None = None
    recovery: dict[str, Any] | None = None  # before and after the recover pass (see search.recovery)
    context: Any = None  # the PassContext to build it with (None: the search's quant_context)


@dataclass
class QuantBaseline:
    """What the quantization baseline phase found (empty for ``quantize=none``)."""

    contenders: list[Final] = field(default_factory=list)  # every quantization that met the budget
    chosen: Final | None = None  # the one the decomposition is searched under
    excluded: tuple[str, ...] = ()  # globs (escaped node names) it leaves in float
    options: dict = field(default_factory=dict)  # further options of its pass (keep_float)
    domain: bool = False  # faster than the original: layers are timed quantized, the budget is shared
    reduced: float | None = None  # the decomposition's share of the budget (value scale)
    build_s: float = 0.0  # the longest build of a quantized model
    timed_out: bool = False

    def excludes(self, layer: Layer) -> bool:
        return not irutil.selected(layer.name, (), self.excluded)

    def quantizes(self, layer: Layer) -> bool:
        """Whether the final model runs ``layer`` quantized (so it is timed quantized)."""
        return self.domain and not self.excludes(layer)


def method_summary(layer: Layer) -> str:
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


def describe_selection(selection: list[Candidate]) -> str:
    if not selection:
        return "no layer"
    counts: dict[str, int] = {}
    for candidate in selection:
        counts[candidate.label] = counts.get(candidate.label, 0) + 1
    return ", ".join(f"{n}× {label}" for label, n in sorted(counts.items()))
