"""Per-node profile: where a model's time goes, and which nodes a pass could target.

onnxruntime's own profiler (``SessionOptions.enable_profiling``) writes a Chrome-trace JSON
file with one ``"Node"`` event per kernel phase (``<name>_fence_before``,
``<name>_kernel_time``, ``<name>_fence_after``) and one ``"Session"`` ``model_run`` event
per run. We keep only the ``_kernel_time`` events of the timed runs (the warm-up runs are
excluded by their ``model_run`` windows), sum them per node, and join them with the static
MACs and parameter counts of :func:`onnxopt.analysis.node_costs`.

Mapping trace names back to the graph. onnxruntime optimises the graph before it runs it,
so the trace names do not always match the model's node names. What we have seen (and
handle, in this order):

1. the node's own name — also kept by some fusions (Conv+Relu -> ``FusedConv`` keeps the
   Conv's name);
2. affixes added by rewrites: ``"fused <name>"`` (FusedGemm), ``<name>/MatMulAddFusion``,
   ``<name>/QuickGeluFusion/``, ``<x>_token_<n>`` — stripped; as a last resort, the
   longest prefix cut at a ``/`` that is a node name is taken (cutting at ``_`` too would
   match ``conv_1_out`` to a node ``conv``);
3. the NCHWc layout transformer names a convolution after its *output tensor* plus
   ``_nchwc`` (``/Relu_output_0_nchwc`` is a Conv fused with the Relu that produced
   ``/Relu_output_0``). The tensor's producer is found, and if its op type is not the one
   that ran (Relu vs Conv), the nearest upstream node of the right type — the node the
   activation was fused into — is taken, preferring one whose weight shape matches the
   kernel's and that no other kernel has claimed. onnxruntime's op may be renamed
   (MatMul+Add runs as Gemm, Resize as the NCHWc Upsample): see ``_OP_ALIASES``. A
   BatchNormalization it runs as an NCHWc Conv is named ``<BN output>_bn_nchwc``.

Nodes that onnxruntime adds (``ReorderInput``/``ReorderOutput`` layout conversions, memory
copies) have no graph node: their time is reported as *unmatched*, in its own rows and as an
"unmatched" op type, so the shares always add up to 1. Graph nodes with no kernel of their
own (fused into another node, or folded away) are listed as ``not_timed``; their cost is in
the node they were fused into.

MACs come from :func:`onnxopt.analysis.node_costs`. Where its static shape inference cannot
resolve a Conv/Gemm/MatMul's shapes (e.g. ResNet-56's shortcut pads are computed by a
Slice/Reshape chain, which hides every later shape), they are computed from the output
shape onnxruntime records for the kernel in the trace and the node's constant weight;
``macs_source`` says which ("static" or "trace").

Unnamed graph nodes are given the names ``node_costs`` uses for them (``<op_type>_<index>``)
before profiling, so that they can be matched too.

Pass targets marked per node (on the original graph node):

* dense k×k Conv (group 1, kernel larger than 1×1, constant weight):
  ``"decompose (tucker/cp/spatial) / int8"``
* 1×1 Conv (group 1), Gemm or MatMul with a constant 2-D weight whose smaller side is at
  least :data:`SVD_MIN_DIM`: ``"svd / int8"`` — a rank-r factorisation only saves work when
  r < mn / (m + n), which leaves no room on small matrices;
* any other Conv, Gemm or MatMul: ``"int8"``.

For a transformer, ``blocks`` sums the MatMul/Gemm kernel time inside attention blocks and
inside MLP blocks (:mod:`onnxopt.blocks`: by structure — the MatMuls around a Softmax and
their projections are attention — or by node names).

On CUDA, kernel times in onnxruntime's trace are host-side times; treat them as indicative.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.analysis import attribute as _attr
from onnxopt.analysis import node_costs
from onnxopt.errors import InputError, UsageError
from onnxopt.runtime import create_session

log = logging.getLogger(__name__)

SVD_MIN_DIM = 64
"""Smallest side of a weight matrix for which an SVD (low-rank) split is suggested."""

MARK_DECOMPOSE = "decompose (tucker/cp/spatial) / int8"
MARK_SVD = "svd / int8"
MARK_INT8 = "int8"
UNMATCHED = "unmatched"

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


@dataclass(frozen=True)
class NodeTime:
    """Kernel time of one graph node (or of one unmatched kernel) over the timed runs.

    ``name``/``op_type`` are the graph node's when ``matched``; otherwise the trace's kernel
    name and onnxruntime's op name. ``kernels`` are the trace names mapped to the node.
    """

    name: str
    op_type: str
    matched: bool
    total_ms: float
    mean_ms: float
    share: float
    macs: int | None = None
    params: int | None = None
    target: str | None = None
    kernels: tuple[str, ...] = ()
    ort_ops: tuple[str, ...] = ()
    macs_source: str | None = None  # "static" (node_costs), "trace", or None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "matched": self.matched,
            "total_ms": self.total_ms,
            "mean_ms": self.mean_ms,
            "share": self.share,
            "macs": self.macs,
            "macs_source": self.macs_source,
            "params": self.params,
            "target": self.target,
            "kernels": list(self.kernels),
            "ort_ops": list(self.ort_ops),
        }


@dataclass(frozen=True)
class OpTypeTime:
    """Kernel time summed over the nodes of one op type (``"unmatched"`` for the rest)."""

    op_type: str
    nodes: int
    total_ms: float
    mean_ms: float
    share: float
    macs: int | None
    params: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "op_type": self.op_type,
            "nodes": self.nodes,
            "total_ms": self.total_ms,
            "mean_ms": self.mean_ms,
            "share": self.share,
            "macs": self.macs,
            "params": self.params,
        }


@dataclass(frozen=True)
class ProfileResult:
    """Ranked per-node and per-op-type kernel times; ``to_dict()`` is JSON-able.

    ``kernel_ms`` is the mean per run of the summed kernel times and ``run_ms`` the mean
    ``model_run`` duration (the difference is the executor's own overhead).
    """

    provider: str
    runs: int
    warmup: int
    threads: int | None
    kernel_ms: float
    run_ms: float
    nodes: list[NodeTime]
    op_types: list[OpTypeTime]
    unmatched_ms: float
    unmatched_share: float
    not_timed: list[str] = field(default_factory=list)
    #: MatMul/Gemm time by transformer block (:func:`onnxopt.blocks.block_times`): keys
    #: attention, mlp, other; None for a model without attention.
    blocks: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "runs": self.runs,
            "warmup": self.warmup,
            "threads": self.threads,
            "kernel_ms_per_run": self.kernel_ms,
            "run_ms": self.run_ms,
            "unmatched_ms_per_run": self.unmatched_ms,
            "unmatched_share": self.unmatched_share,
            "nodes": [n.to_dict() for n in self.nodes],
            "op_types": [o.to_dict() for o in self.op_types],
            "not_timed": list(self.not_timed),
            "blocks": self.blocks,
        }


# --- the graph side --------------------------------------------------------------------


def _constant_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Shapes of the graph's constants: initializers and ``Constant`` node outputs."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = _attr(node, "value", None)
            if isinstance(value, onnx.TensorProto):
                shapes[node.output[0]] = tuple(value.dims)
    return shapes


def target_mark(node: onnx.NodeProto, constants: dict[str, tuple[int, ...]]) -> str | None:
    """Which optimisation pass could target this node (see the module docstring)."""
    if node.op_type not in ("Conv", "Gemm", "MatMul"):
        return None
    weight = constants.get(node.input[1]) if len(node.input) > 1 else None
    if node.op_type == "Conv":
        group = int(_attr(node, "group", 1))
        kernel = tuple(_attr(node, "kernel_shape", ())) or (weight[2:] if weight else ())
        if group == 1 and weight is not None and kernel:
            if math.prod(kernel) > 1:
                return MARK_DECOMPOSE
            if min(weight[0], weight[1]) >= SVD_MIN_DIM:
                return MARK_SVD
        return MARK_INT8
    if weight is not None and len(weight) == 2 and min(weight) >= SVD_MIN_DIM:
        return MARK_SVD
    return MARK_INT8


def _name_unnamed(model: onnx.ModelProto) -> bool:
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


class _Graph:
    """Name, tensor-producer and weight-shape lookups used to map trace names."""

    def __init__(self, model: onnx.ModelProto):
        self.nodes = {n.name: n for n in model.graph.node if n.op_type != "Constant"}
        self.producer = {}
        for node in model.graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
        self.constants = _constant_shapes(model)
        self.claimed: set[str] = set()

    def weight_shape(self, node: onnx.NodeProto) -> tuple[int, ...] | None:
        return self.constants.get(node.input[1]) if len(node.input) > 1 else None

    def resolve(self, kernel: str, ort_op: str, kernel_weight: tuple | None) -> str | None:
        """The graph node a trace kernel name belongs to, or None (see module docstring)."""
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


# --- the trace side --------------------------------------------------------------------


@dataclass
class _Kernel:
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


def _timed_kernels(events: list[dict], runs: int) -> tuple[dict[str, _Kernel], list[float]]:
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
    kernels: dict[str, _Kernel] = {}
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
            kernel = kernels[base] = _Kernel(
                base,
                str(args.get("op_name", "")),
                _shape_from_args(args, "input_type_shape", 1),
                _shape_from_args(args, "output_type_shape", 0),
            )
        kernel.total_us += float(event.get("dur", 0))
        kernel.first_ts = min(kernel.first_ts, ts)
    run_ms = [(end - start) / 1000.0 for start, end in windows]
    return kernels, run_ms


def _load(model: onnx.ModelProto | bytes | str | os.PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    if isinstance(model, bytes | bytearray):
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(bytes(model))
        except Exception as exc:  # noqa: BLE001 - protobuf raises several types
            raise InputError(f"not a valid ONNX model: {exc}") from None
        return proto
    from onnxopt.io import load_proto

    return load_proto(model)


def profile_model(
    model: onnx.ModelProto | bytes | str | os.PathLike,
    feeds: dict[str, np.ndarray],
    *,
    provider: str = "cpu",
    runs: int = 20,
    threads: int | None = None,
    warmup: int = 3,
) -> ProfileResult:
    """Profile ``model`` on ``feeds`` with onnxruntime's profiler; rank nodes by time.

    The trace is written to a temporary folder and deleted after parsing. MACs come from
    :func:`onnxopt.analysis.node_costs` for the shapes in ``feeds``.

    Raises:
        UsageError: ``runs`` < 1 or ``warmup`` < 0.
        InputError: the model cannot be loaded or run on ``feeds``.
    """
    if runs < 1:
        raise UsageError(f"runs must be at least 1, got {runs}")
    if warmup < 0:
        raise UsageError(f"warmup must be 0 or more, got {warmup}")
    proto = _load(model)
    _name_unnamed(proto)
    costs = node_costs(proto, {name: tuple(np.shape(v)) for name, v in feeds.items()})
    graph = _Graph(proto)

    with tempfile.TemporaryDirectory(prefix="onnxopt-profile-") as tmp:
        session = create_session(
            proto.SerializeToString(),
            provider,
            threads=threads,
            enable_profiling=True,
            profile_prefix=str(Path(tmp) / "ort"),
            tf32=True,
        )
        names = [i.name for i in session.get_inputs()]
        missing = [n for n in names if n not in feeds]
        if missing:
            raise InputError(f"no data for model input(s) {', '.join(missing)}")
        own = {n: feeds[n] for n in names}
        try:
            for _ in range(warmup + runs):
                session.run(None, own)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise InputError(f"onnxruntime failed to run the model: {message}") from None
        finally:
            trace = session.end_profiling()
        trace_path = Path(trace) if Path(trace).is_absolute() else Path.cwd() / trace
        try:
            events = json.loads(trace_path.read_text())
        finally:
            trace_path.unlink(missing_ok=True)

    kernels, run_ms = _timed_kernels(events, runs)
    result = _summarise(kernels, run_ms, graph, costs, provider, runs, warmup, threads)
    from onnxopt.blocks import block_labels, block_times

    blocks = block_times(block_labels(proto), result.nodes, result.kernel_ms)
    return dataclasses.replace(result, blocks=blocks) if blocks else result


def _summarise(
    kernels: dict[str, _Kernel],
    run_ms: list[float],
    graph: _Graph,
    costs: dict,
    provider: str,
    runs: int,
    warmup: int,
    threads: int | None,
) -> ProfileResult:
    """Map kernels to graph nodes, then build the ranked node and op-type tables."""
    by_node: dict[str, list[_Kernel]] = collections.defaultdict(list)
    unmatched: list[_Kernel] = []
    # Exact names first, so that they claim their nodes before the tensor-based guesses.
    ordered = sorted(kernels.values(), key=lambda k: (k.name not in graph.nodes, k.first_ts))
    for kernel in ordered:
        node = graph.resolve(kernel.name, kernel.ort_op, kernel.weight)
        if node is None:
            unmatched.append(kernel)
            log.debug("unmatched kernel %s (%s)", kernel.name, kernel.ort_op)
            continue
        graph.claimed.add(node)
        by_node[node].append(kernel)

    total_us = sum(k.total_us for k in kernels.values())
    n_runs = max(len(run_ms), 1)

    def share(us: float) -> float:
        return us / total_us if total_us > 0 else 0.0

    rows: list[NodeTime] = []
    for name, ks in by_node.items():
        node = graph.nodes[name]
        cost = costs.get(name)
        us = sum(k.total_us for k in ks)
        macs = cost.macs if cost else None
        source = "static" if macs is not None else None
        if macs is None and node.op_type in ("Conv", "Gemm", "MatMul"):
            macs = _trace_macs(node, graph.weight_shape(node), ks[0].output)
            source = "trace" if macs is not None else None
        rows.append(
            NodeTime(
                name=name,
                op_type=node.op_type,
                matched=True,
                total_ms=us / 1000.0,
                mean_ms=us / 1000.0 / n_runs,
                share=share(us),
                macs=macs,
                params=cost.params if cost else None,
                target=target_mark(node, graph.constants),
                kernels=tuple(k.name for k in ks),
                ort_ops=tuple(dict.fromkeys(k.ort_op for k in ks)),
                macs_source=source,
            )
        )
    for kernel in unmatched:
        rows.append(
            NodeTime(
                name=kernel.name,
                op_type=kernel.ort_op or "?",
                matched=False,
                total_ms=kernel.total_us / 1000.0,
                mean_ms=kernel.total_us / 1000.0 / n_runs,
                share=share(kernel.total_us),
                kernels=(kernel.name,),
                ort_ops=(kernel.ort_op,),
            )
        )
    rows.sort(key=lambda r: (-r.total_ms, r.name))

    op_types = _op_type_rows(rows, costs, graph, n_runs, total_us)
    unmatched_us = sum(k.total_us for k in unmatched)
    not_timed = [name for name in graph.nodes if name not in by_node]
    return ProfileResult(
        provider=provider,
        runs=len(run_ms),
        warmup=warmup,
        threads=threads,
        kernel_ms=total_us / 1000.0 / n_runs,
        run_ms=float(np.mean(run_ms)) if run_ms else 0.0,
        nodes=rows,
        op_types=op_types,
        unmatched_ms=unmatched_us / 1000.0 / n_runs,
        unmatched_share=unmatched_us / total_us if total_us > 0 else 0.0,
        not_timed=not_timed,
    )


def _trace_macs(
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


def _op_type_rows(
    rows: list[NodeTime], costs: dict, graph: _Graph, n_runs: int, total_us: float
) -> list[OpTypeTime]:
    """Per op type: timed nodes, time and share; MACs/params over all nodes of the type."""
    time_ms: dict[str, float] = collections.defaultdict(float)
    timed: dict[str, int] = collections.defaultdict(int)
    for row in rows:
        key = row.op_type if row.matched else UNMATCHED
        time_ms[key] += row.total_ms
        timed[key] += 1
    row_macs = {row.name: row.macs for row in rows if row.matched}
    macs: dict[str, int | None] = {}
    params: dict[str, int] = collections.defaultdict(int)
    for name, node in graph.nodes.items():
        cost = costs.get(name)
        if cost is None:
            continue
        op = node.op_type
        node_macs = row_macs.get(name, cost.macs)
        if op not in macs:
            macs[op] = 0
        macs[op] = None if macs[op] is None or node_macs is None else macs[op] + node_macs
        params[op] += cost.params
    total_ms = total_us / 1000.0
    out = [
        OpTypeTime(
            op_type=op,
            nodes=timed[op],
            total_ms=ms,
            mean_ms=ms / n_runs,
            share=ms / total_ms if total_ms > 0 else 0.0,
            macs=macs.get(op) if op != UNMATCHED else None,
            params=params.get(op, 0),
        )
        for op, ms in time_ms.items()
    ]
    out.sort(key=lambda o: (-o.total_ms, o.op_type))
    return out
