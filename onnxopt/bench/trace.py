"""onnxruntime's profiler trace, read back onto the graph: kernel times per graph node.

The trace (``SessionOptions.enable_profiling``, Chrome-trace JSON) has one ``"Node"``
event per kernel phase and one ``"Session"`` ``model_run`` event per run;
:func:`timed_kernels` keeps the ``_kernel_time`` events of the timed runs (warm-up runs
fall outside their ``model_run`` windows) and sums them per kernel. onnxruntime optimises
the graph before it runs it, so kernel names do not always match node names;
:meth:`TraceGraph.resolve` maps them back: the node's own name (also kept by some fusions),
then the name without the affixes rewrites add (``"fused <name>"``, ``<name>/…Fusion``,
``_token_<n>``), then the NCHWc layout transformer's ``<output tensor>_nchwc`` (the
tensor's producer, or the nearest upstream node of the op that ran: the one an activation
was fused into), then the longest prefix cut at a ``/`` that is a node name. A kernel that
maps to no node (layout reorders, memory copies) is *unmatched*.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from typing import Any

import onnx

from onnxopt.analysis import attribute as _attr
from onnxopt.errors import InputError

_KERNEL_SUFFIX = "_kernel_time"
_BN_NCHWC = "_bn_nchwc"
# Affixes onnxruntime's graph rewrites add to node names (see the module docstring).
_AFFIXES = (
    re.compile(r"^fused "),
    re.compile(r"_bn_nchwc$"),
    re.compile(r"_nchwc$"),
    re.compile(r"_token_\d+$"),
    re.compile(r"/[A-Za-z]+Fusion/?$"),
)
# Ops that onnxruntime fuses into a preceding Conv/Gemm/MatMul kernel; the upstream walk
# for "<tensor>_nchwc" kernels only passes through these.
_FUSABLE = {
    "Relu",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "Tanh",
    "Mul",
    "Add",
    "Sum",
    "BatchNormalization",
    "HardSwish",
    "Identity",
}
_WALK_DEPTH = 4


def constant_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Shapes of the graph's constants: initializers and ``Constant`` node outputs."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = _attr(node, "value", None)
            if isinstance(value, onnx.TensorProto):
                shapes[node.output[0]] = tuple(value.dims)
    return shapes


def name_unnamed(model: onnx.ModelProto) -> bool:
    """Give unnamed nodes the key ``node_costs`` uses for them; True if any was named."""
    named = False
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            if name in taken:  # keep names unique for onnxruntime
                name = f"{name}__onnxopt"
            node.name = name
            taken.add(name)
            named = True
    return named


class TraceGraph:
    """Name, tensor-producer and weight-shape lookups used to map trace names."""

    def __init__(self, model: onnx.ModelProto):
        self.nodes = {n.name: n for n in model.graph.node if n.op_type != "Constant"}
        self.producer = {}
        for node in model.graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
        self.constants = constant_shapes(model)
        self.claimed: set[str] = set()

    def weight_shape(self, node: onnx.NodeProto) -> tuple[int, ...] | None:
        return self.constants.get(node.input[1]) if len(node.input) > 1 else None

    def resolve(self, kernel: str, ort_op: str, kernel_weight: tuple | None) -> str | None:
        """The graph node a trace kernel name belongs to, or None (see the module docstring)."""
        # onnxruntime's NCHWc transformer names a BatchNormalization it runs as a Conv
        # "<BN output tensor>_bn_nchwc": that kernel is the BN, whatever op it ran.
        if kernel.endswith(_BN_NCHWC):
            producer = self.producer.get(kernel[: -len(_BN_NCHWC)])
            if producer is not None and producer.op_type == "BatchNormalization":
                return producer.name
        candidate = kernel
        for _ in range(4):  # affixes can stack: "fused X_token_3"
            found = self._match(candidate, ort_op, kernel_weight)
            if found:
                return found
            stripped = candidate
            for affix in _AFFIXES:
                stripped = affix.sub("", stripped)
            if stripped == candidate:
                break
            candidate = stripped
        return self._longest_prefix(candidate)

    def _match(self, text: str, ort_op: str, kernel_weight: tuple | None) -> str | None:
        """A node named ``text`` running the same op, else the producer of tensor ``text``.

        A string can be both a node name and a tensor name ("conv2d_relu" is the Relu and
        its output); when the kernel ran another op (a Conv fused with that Relu) the
        tensor reading, which walks up to the Conv, is the right one.
        """
        node = self.nodes.get(text)
        if node is not None and _compatible(ort_op, node.op_type):
            return text
        if text in self.producer:
            found = self._from_tensor(text, ort_op, kernel_weight)
            if found:
                return found
        return text if node is not None else None

    def _longest_prefix(self, text: str) -> str | None:
        cuts = [m.start() for m in re.finditer("/", text)]
        for cut in reversed(cuts):
            prefix = text[:cut]
            if prefix in self.nodes:
                return prefix
        return None

    def _from_tensor(self, tensor: str, ort_op: str, kernel_weight: tuple | None) -> str | None:
        producer = self.producer[tensor]
        if producer.op_type == "Constant":
            return None
        if _compatible(ort_op, producer.op_type):
            return producer.name
        # The kernel ran an op the producer is not: an activation (or Add, BN) was fused
        # into an upstream Conv/Gemm/MatMul. Walk up through fusable ops to find it.
        candidates: list[onnx.NodeProto] = []
        frontier = [producer]
        seen = {producer.name}
        for _ in range(_WALK_DEPTH):
            next_frontier = []
            for node in frontier:
                if node.op_type not in _FUSABLE:
                    continue
                for name in node.input:
                    up = self.producer.get(name)
                    if up is None or up.op_type == "Constant" or up.name in seen:
                        continue
                    seen.add(up.name)
                    if _compatible(ort_op, up.op_type):
                        candidates.append(up)
                    else:
                        next_frontier.append(up)
            if candidates:
                break
            frontier = next_frontier
        if not candidates:
            return None  # e.g. a layout reorder named after the tensor: report it as unmatched
        free = [c for c in candidates if c.name not in self.claimed]
        if not free:
            # Every upstream candidate already has its own kernel, so this kernel is the
            # producer itself rewritten (e.g. BatchNormalization run as an NCHWc Conv).
            return producer.name

        def rank(node: onnx.NodeProto) -> bool:
            return not (kernel_weight is not None and self.weight_shape(node) == kernel_weight)

        return min(free, key=rank).name


# onnxruntime op (after dropping a "Fused" prefix) -> graph ops it can stand for.
_OP_ALIASES = {
    "Gemm": {"MatMul"},  # MatMul + Add -> Gemm
    "Upsample": {"Resize"},  # the NCHWc transformer runs Resize as nchwc Upsample
}


def _compatible(ort_op: str, graph_op: str) -> bool:
    """Whether a kernel of onnxruntime op ``ort_op`` can stand for a ``graph_op`` node."""
    if not ort_op:
        return True
    op = ort_op.removeprefix("Fused")
    if graph_op in _OP_ALIASES.get(op, ()):
        return True
    return op == graph_op or op.removeprefix("QLinear") == graph_op


@dataclass
class Kernel:
    name: str
    ort_op: str
    weight: tuple[int, ...] | None
    output: tuple[int, ...] | None = None
    total_us: float = 0.0
    first_ts: float = math.inf


def _shape_from_args(args: dict[str, Any], key: str, index: int) -> tuple[int, ...] | None:
    """Shape ``index`` of a kernel event's ``input_type_shape``/``output_type_shape``.

    onnxruntime records them as ``[{"float": [1, 16, 32, 32]}, ...]``.
    """
    shapes = args.get(key) or []
    if len(shapes) > index and isinstance(shapes[index], dict):
        for dims in shapes[index].values():
            if isinstance(dims, list):
                try:
                    return tuple(int(d) for d in dims)
                except (TypeError, ValueError):
                    return None
    return None


def timed_kernels(events: list[dict], runs: int) -> tuple[dict[str, Kernel], list[float]]:
    """Kernel events of the last ``runs`` model runs, summed per kernel name (µs)."""
    windows = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    windows = windows[-runs:] if runs else windows
    if not windows:
        raise InputError("onnxruntime's profile has no model runs")
    starts = [w[0] for w in windows]
    kernels: dict[str, Kernel] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(_KERNEL_SUFFIX):
            continue
        ts = float(event.get("ts", 0))
        slot = bisect.bisect_right(starts, ts) - 1
        if slot < 0 or ts > windows[slot][1]:
            continue  # a warm-up run (or outside every timed run)
        base = name[: -len(_KERNEL_SUFFIX)]
        args = event.get("args") or {}
        kernel = kernels.get(base)
        if kernel is None:
            kernel = kernels[base] = Kernel(
                base,
                str(args.get("op_name", "")),
                _shape_from_args(args, "input_type_shape", 1),
                _shape_from_args(args, "output_type_shape", 0),
            )
        kernel.total_us += float(event.get("dur", 0))
        kernel.first_ts = min(kernel.first_ts, ts)
    run_ms = [(end - start) / 1000.0 for start, end in windows]
    return kernels, run_ms


def trace_macs(
    node: onnx.NodeProto, weight: tuple[int, ...] | None, output: tuple[int, ...] | None
) -> int | None:
    """MACs from the kernel's output shape (from the trace) and the constant weight.

    Conv: N · F · prod(spatial) · (C/group) · prod(kernel), with F from the weight (an
    NCHWc kernel may report its channels padded to the block size). Gemm / MatMul with a
    2-D constant weight: prod(output) · K.
    """
    if not weight or not output or any(d <= 0 for d in output):
        return None
    if node.op_type == "Conv":
        if len(output) != len(weight) or len(output) < 3:
            return None
        return output[0] * weight[0] * math.prod(output[2:]) * math.prod(weight[1:])
    if len(weight) != 2:
        return None
    if node.op_type == "Gemm":
        k = weight[1] if int(_attr(node, "transB", 0)) else weight[0]
    else:
        k = weight[0]
    return math.prod(output) * k
