"""Per-node profile: where a model's time goes, and which nodes a pass could target.

:func:`profile_model` runs the model under onnxruntime's profiler, maps each kernel of the
trace back to a graph node (:mod:`onnxopt.bench.trace`) and joins the times with the
static MACs and parameter counts of :func:`onnxopt.analysis.node_costs`. Kernels that
onnxruntime adds (layout reorders, memory copies) are reported as *unmatched* rows and op
type, so the shares add up to 1; graph nodes with no kernel of their own (fused or folded
away) are listed as ``not_timed``. Unnamed nodes get the keys ``node_costs`` uses
(``<op_type>_<index>``) before profiling.

Each Conv/Gemm/MatMul is marked with the passes that could target it
(:func:`onnxopt.analysis.decomposition_target`): :data:`MARK_DECOMPOSE`, :data:`MARK_SVD`
or :data:`MARK_INT8`. For a transformer, ``blocks`` sums the MatMul/Gemm kernel time in
attention and in MLP blocks (:mod:`onnxopt.analysis.blocks`). On CUDA, the trace's kernel
times are host-side times: indicative only.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.analysis import TARGET_DECOMPOSE, TARGET_SVD, decomposition_target, node_costs
from onnxopt.analysis import attribute as _attr
from onnxopt.analysis.blocks import ATTENTION, LINEAR_OPS, MLP, block_labels
from onnxopt.bench.trace import Kernel, TraceGraph, name_unnamed, timed_kernels, trace_macs
from onnxopt.errors import InputError, UsageError
from onnxopt.runtime import create_session, first_line

log = logging.getLogger(__name__)

MARK_DECOMPOSE = "decompose (tucker/cp/spatial) / int8"
MARK_SVD = "svd / int8"
MARK_INT8 = "int8"
UNMATCHED = "unmatched"
_MARKS = {TARGET_DECOMPOSE: MARK_DECOMPOSE, TARGET_SVD: MARK_SVD}


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
    #: MatMul/Gemm time by transformer block (:func:`block_times`): keys
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


def target_mark(node: onnx.NodeProto, constants: dict[str, tuple[int, ...]]) -> str | None:
    """Which passes could target this node: the mark of its
    :func:`~onnxopt.analysis.decomposition_target`, :data:`MARK_INT8` for any other Conv,
    Gemm or MatMul, None for other ops. ``constants``: shapes of the graph's constants."""
    if node.op_type not in ("Conv", "Gemm", "MatMul"):
        return None
    weight = constants.get(node.input[1]) if len(node.input) > 1 else None
    kernel = tuple(_attr(node, "kernel_shape", ())) or None
    target = decomposition_target(node.op_type, weight, int(_attr(node, "group", 1)), kernel)
    return _MARKS.get(target, MARK_INT8)


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
    name_unnamed(proto)
    costs = node_costs(proto, {name: tuple(np.shape(v)) for name, v in feeds.items()})
    graph = TraceGraph(proto)

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
            raise InputError(f"onnxruntime failed to run the model: {first_line(exc)}") from None
        finally:
            trace = session.end_profiling()
        trace_path = Path(trace) if Path(trace).is_absolute() else Path.cwd() / trace
        try:
            events = json.loads(trace_path.read_text())
        finally:
            trace_path.unlink(missing_ok=True)

    kernels, run_ms = timed_kernels(events, runs)
    result = _summarise(kernels, run_ms, graph, costs, provider, runs, warmup, threads)
    blocks = block_times(block_labels(proto), result.nodes, result.kernel_ms)
    return dataclasses.replace(result, blocks=blocks) if blocks else result


def _summarise(
    kernels: dict[str, Kernel],
    run_ms: list[float],
    graph: TraceGraph,
    costs: dict,
    provider: str,
    runs: int,
    warmup: int,
    threads: int | None,
) -> ProfileResult:
    """Map kernels to graph nodes, then build the ranked node and op-type tables."""
    by_node: dict[str, list[Kernel]] = collections.defaultdict(list)
    unmatched: list[Kernel] = []
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
            macs = trace_macs(node, graph.weight_shape(node), ks[0].output)
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


def _op_type_rows(
    rows: list[NodeTime], costs: dict, graph: TraceGraph, n_runs: int, total_us: float
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


def block_times(labels: Mapping[str, str], rows: Iterable[Any], kernel_ms: float) -> dict[str, Any] | None:
    """Mean MatMul/Gemm kernel time per run by block, from profile rows (``name``,
    ``op_type``, ``matched``, ``mean_ms``, ``macs``); None without labels."""
    if not labels:
        return None
    sums: dict[str, dict[str, Any]] = {kind: {"ms": 0.0, "nodes": 0, "macs": 0}
                                       for kind in (ATTENTION, MLP, "other")}
    for row in rows:
        if not row.matched or row.op_type not in LINEAR_OPS:
            continue
        entry = sums[labels.get(row.name, "other")]
        entry["ms"] += row.mean_ms
        entry["nodes"] += 1
        entry["macs"] = None if entry["macs"] is None or row.macs is None else entry["macs"] + row.macs
    for entry in sums.values():
        entry["share"] = entry["ms"] / kernel_ms if kernel_ms > 0 else 0.0
    return sums


def describe_block_times(blocks: Mapping[str, Any]) -> str:
    """One line: ``attention vs MLP (MatMul/Gemm kernel time): attention 3.1 ms/run (21.0%, 18 nodes) …``."""
    def part(kind: str, label: str) -> str:
        entry = blocks[kind]
        return f"{label} {entry['ms']:.3f} ms/run ({100 * entry['share']:.1f}%, {entry['nodes']} nodes)"

    text = f"attention vs MLP (MatMul/Gemm kernel time): {part(ATTENTION, 'attention')}, {part(MLP, 'MLP')}"
    if blocks["other"]["nodes"]:
        text += f", {part('other', 'other')}"
    attention, mlp = blocks[ATTENTION]["ms"], blocks[MLP]["ms"]
    if attention > 0 and mlp > 0:
        text += f"; MLP/attention {mlp / attention:.2f}×"
    return text
