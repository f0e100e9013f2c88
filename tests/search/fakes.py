"""A seeded conv net and a deterministic fake CandidateEvaluator for the ``auto`` tests.

The fake reads everything from the model it is given, so the search can be tested without
any timing or accuracy noise:

* latency = Σ over weight nodes of (MACs × ``ns_per_mac`` × 0.4 if the node is quantized)
  + ``overhead`` per weight node — decomposition wins when the overhead is small, loses
  when it is large;
* score value (larger is better, "cosine-like") = 1 − Σ over decomposed layers of
  ``error_fn(layer, original weight size / factor weight size)`` (default
  ``sensitivity[layer] × that ratio``: fewer parameters, more error) − Σ over quantized
  original layers of ``quant_error[layer]`` (default ``quant_error_default``); the
  threshold is ``threshold``; the holdout split subtracts ``holdout_penalty`` more.

An optional :class:`FakeClock` advances by ``score_seconds`` per score and
``latency_seconds`` per timed model, for time-budget tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt.passbase import CandidateScore
from tests.helpers import make_model

LAYERS = ("conv1", "conv2", "conv3")


def low_rank_kernel(F: int, C: int, k: int, rng: np.random.Generator, decay: float = 20.0) -> np.ndarray:
    """A kernel with a decaying CP spectrum, so energy levels 0.9/0.95/0.98 give distinct ranks."""
    rank = min(F, C)
    weights = np.exp(-np.arange(rank) / decay)
    a = rng.standard_normal((F, rank))
    b = rng.standard_normal((C, rank))
    kh = rng.standard_normal((k, rank))
    kw = rng.standard_normal((k, rank))
    W = np.einsum("r,fr,cr,ir,jr->fcij", weights, a, b, kh, kw)
    W += 0.01 * rng.standard_normal(W.shape)
    return (W / np.abs(W).max()).astype(np.float32)


def conv_net(channels=(32, 64, 64, 64), hw: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x [1, 32, hw, hw] → (Conv 3×3 → Relu)×3 named conv1..3 → GlobalAveragePool → Flatten → Gemm 64→10."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    previous = "x"
    for i, (c, f) in enumerate(zip(channels[:-1], channels[1:]), start=1):
        name = f"conv{i}"
        inits.append(numpy_helper.from_array(low_rank_kernel(f, c, 3, rng), f"{name}.weight"))
        inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(f)).astype(np.float32), f"{name}.bias"))
        nodes.append(helper.make_node("Conv", [previous, f"{name}.weight", f"{name}.bias"], [f"{name}_out"],
                                      name=name, pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"{name}_out"], [f"{name}_relu"], name=f"{name}_relu"))
        previous = f"{name}_relu"
    nodes.append(helper.make_node("GlobalAveragePool", [previous], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
    inits.append(numpy_helper.from_array(rng.standard_normal((10, channels[-1])).astype(np.float32), "fc.weight"))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels[0], hw, hw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits,
    )
    model = make_model(graph, opset=13)
    onnx.checker.check_model(model)
    return model


def calibration(model: onnx.ModelProto, count: int = 4, seed: int = 1):
    """A PassContext.calibration callable: ``count`` seeded random batches for ``model``."""
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    batches = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]
    return lambda: iter(batches)


@dataclass
class FakeClock:
    now: float = 0.0

    def perf_counter(self) -> float:
        return self.now


class FakeTime:
    """Stands in for the ``time`` module inside ``onnxopt.search.clock`` (every reading of the search's time)."""

    def __init__(self, clock: FakeClock):
        self.clock = clock

    def perf_counter(self) -> float:
        return self.clock.now


@dataclass
class FakeEvaluator:
    original: onnx.ModelProto
    sensitivity: dict[str, float] = field(default_factory=dict)
    error_fn: Callable[[str, float], float] | None = None
    quant_error: dict[str, float] = field(default_factory=dict)
    quant_error_default: float = 0.0
    threshold: float = 0.99
    holdout_penalty: float = 0.0
    overhead: float = 1e-4  # seconds per weight node
    ns_per_mac: float = 1.0
    quant_speed: float = 0.4
    clock: FakeClock | None = None
    score_seconds: float = 10.0
    latency_seconds: float = 1.0
    target: str = "cpu"
    data_fingerprint: str = "fake-data"
    calls: dict[str, int] = field(default_factory=lambda: {"score": 0, "latency": 0, "latency_models": 0})
    input_shapes: dict[str, tuple[int, ...]] | None = None  # fix dynamic graph inputs when costing a model
    scored: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.original_sizes = {n.name: _weight_size(self.original, n) for n in self.original.graph.node
                               if n.op_type in ("Conv", "Gemm", "MatMul")}

    def describe_splits(self) -> dict:
        return {"search": {"samples": 100, "description": "100 fake samples"},
                "holdout": {"samples": 50, "description": "50 other fake samples"}}

    # -- accuracy

    def _value(self, model: onnx.ModelProto) -> float:
        decomposed: dict[str, int] = {}
        quantized: set[str] = set()
        dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        for node in model.graph.node:
            if node.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            layer = node.name.split("/")[0]
            if "/" in node.name:
                decomposed[layer] = decomposed.get(layer, 0) + _weight_size(model, node)
            if len(node.input) > 1 and node.input[1] in dq_outputs:
                quantized.add(layer)
        error = 0.0
        for layer, size in decomposed.items():
            ratio = self.original_sizes[layer] / max(size, 1)
            error += self.error_fn(layer, ratio) if self.error_fn else self.sensitivity.get(layer, 0.0) * ratio
        for layer in quantized:
            error += self.quant_error.get(layer, self.quant_error_default)
        return 1.0 - error

    def score(self, model: onnx.ModelProto, split: str = "search", *, limit: int | None = None) -> CandidateScore:
        self.calls["score"] += 1
        if self.clock is not None:
            self.clock.now += self.score_seconds
        value = self._value(model) - (self.holdout_penalty if split == "holdout" else 0.0)
        passed = value >= self.threshold
        failures = [] if passed else [f"output 'logits': cosine {value:.4f} < min {self.threshold}"]
        samples = (100 if split == "search" else 50) if limit is None else min(limit, 100)
        self.scored.append({"split": split, "limit": limit, "value": value})
        return CandidateScore(passed, value, "cosine_min", failures, {
            "threshold": self.threshold, "rel_l2_error": max(1.0 - value, 0.0) + 1e-6,
            "split": {"name": split, "samples": samples, "description": f"{samples} fake samples"},
        })

    # -- latency

    def cost(self, model: onnx.ModelProto) -> float:
        if self.input_shapes:
            model = _fix_inputs(model, self.input_shapes)
        inferred = onnx.shape_inference.infer_shapes(model)
        shapes = {}
        for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            shapes[value.name] = dims
        dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        total = 0.0
        for node in model.graph.node:
            if node.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            out = shapes.get(node.output[0], [])
            spatial = math.prod(out[2:]) if node.op_type == "Conv" and len(out) > 2 else (out[0] if out else 1)
            macs = _weight_size(model, node) * max(spatial, 1)
            speed = self.quant_speed if len(node.input) > 1 and node.input[1] in dq_outputs else 1.0
            total += macs * self.ns_per_mac * 1e-9 * speed + self.overhead
        return total

    def latency(self, models, runs: int | None = None, *, statistic: str = "median") -> list[float]:
        self.calls["latency"] += 1
        self.calls["latency_models"] += len(models)
        if self.clock is not None:
            self.clock.now += self.latency_seconds * len(models)
        return [self.cost(m) for m in models]


def _fix_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in shapes and len(dims) == len(shapes[value.name]):
            for dim, size in zip(dims, shapes[value.name], strict=True):
                dim.Clear()
                dim.dim_value = size
    return copy


def _weight_size(model: onnx.ModelProto, node: onnx.NodeProto) -> int:
    """Elements of the node's weight (input 1), through a DequantizeLinear if quantized."""
    if len(node.input) < 2:
        return 0
    name = node.input[1]
    producers = {o: n for n in model.graph.node for o in n.output}
    if name in producers and producers[name].op_type == "DequantizeLinear":
        name = producers[name].input[0]
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return math.prod(tensor.dims)
    producer = producers.get(name)
    if producer is not None and producer.op_type == "Constant":
        return math.prod(producer.attribute[0].t.dims)
    return 0
