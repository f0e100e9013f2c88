"""Rules about the graph's names and stored tensors: duplicate and missing names, shadowed
inputs, dead weights, NaN/Inf weights."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onnxopt.check.context import CheckRun, ort_version
from onnxopt.check.findings import ERROR, WARNING
from onnxopt.check.registry import follow_up, rule
from onnxopt.check.text import human_bytes, quoted_names
from onnxopt.check.walk import all_graphs, constant_float_attrs, constant_tensors, float_types, names_read

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class NodeNameDuplicates:
    """Node names used more than once in one graph, and those onnxruntime is expected to
    refuse (shared by at least two nodes that are not ``Constant``: onnxruntime turns
    ``Constant`` nodes into initializers when it loads a graph, before it checks names)."""

    where: str
    names: list[str]
    refused: list[str]


def _node_name_duplicates(graph: onnx.GraphProto, where: str) -> NodeNameDuplicates | None:
    counts = Counter(n.name for n in graph.node if n.name)
    names = [name for name, count in counts.items() if count > 1]
    if not names:
        return None
    kept = Counter(n.name for n in graph.node if n.name in names
                   and not (n.op_type == "Constant" and n.domain in ("", "ai.onnx")))
    return NodeNameDuplicates(where, names, [name for name, count in kept.items() if count > 1])


@rule("duplicate-names", ERROR,
      "a tensor defined twice, or duplicate node names onnxruntime refuses (else a warning)")
def duplicate_names(run: CheckRun) -> None:
    """A tensor name defined twice (node outputs, graph inputs, initializers) is an error
    here; duplicate node names are kept for :func:`judge_node_names`, which runs after
    ``ort-session`` and lets onnxruntime decide."""
    node_duplicates = []
    for graph in all_graphs(run.model.graph):
        where = "" if graph is run.model.graph else f" in subgraph '{graph.name}'"
        duplicates = _node_name_duplicates(graph, where)
        if duplicates is not None:
            node_duplicates.append(duplicates)
        # Every tensor has one definition: a graph input, an initializer or a node output.
        # (An initializer listed as a graph input too is legal: see input-shadowed.)
        definitions: Counter[str] = Counter()
        initializers = [t.name for t in graph.initializer]
        inputs = [i.name for i in graph.input]
        definitions.update(set(inputs) | set(initializers))
        for node in graph.node:
            definitions.update(o for o in node.output if o)
        twice_defined = [name for name, count in definitions.items() if count > 1]
        twice_defined += [n for n, c in Counter(initializers).items() if c > 1 and n not in twice_defined]
        twice_defined += [n for n, c in Counter(inputs).items() if c > 1 and n not in twice_defined]
        if twice_defined:
            run.add("duplicate-names", f"{len(twice_defined)} tensor name(s) defined more than once{where} "
                                       f"({quoted_names(twice_defined)})")
    run.node_name_duplicates = node_duplicates


_SAME_NODE_NAME = re.compile(r"two nodes with same node name \((.*?)\)")


@follow_up("duplicate-node-names", "duplicate-names", after=("ort-session",))
def judge_node_names(run: CheckRun) -> None:
    """Duplicate node names: an error only where onnxruntime refuses them.

    When ``ort-session`` created a session, its verdict decides: its refusal naming one of
    the duplicates becomes this error (and ``ort-session`` does not repeat it), a loaded
    session makes it a warning. Otherwise the level is predicted (onnxruntime 1.31 refuses
    two nodes of one graph with one name unless they are ``Constant`` nodes, see
    :class:`NodeNameDuplicates`) and the message says it was not verified.
    """
    if not run.node_name_duplicates:
        return
    version = ort_version()
    session_tried, loaded_ok = run.session_tried, run.session is not None
    refusal = None
    if session_tried and not loaded_ok:
        for index, finding in enumerate(run.findings):
            match = _SAME_NODE_NAME.search(finding.message) if finding.rule == "ort-session" else None
            if match:
                refusal = match.group(1)
                del run.findings[index]  # one root cause, one finding: reported below
                if not any(f.rule == "ort-session" and f.level == ERROR for f in run.findings):
                    run.failed_rules.discard("ort-session")
                break
    for item in run.node_name_duplicates:
        text = f"{len(item.names)} node name(s) used more than once{item.where} ({quoted_names(item.names)})"
        if refusal is not None and refusal in item.names:
            run.add("duplicate-names", f"{text}; onnxruntime {version} refuses the model: "
                                       f"two nodes with same node name ({refusal})")
            continue
        if session_tried and loaded_ok:
            run.add("duplicate-names", f"{text}; onnxruntime {version} loads the model (checked), but tools that "
                                       "address nodes by name (profiles, quantization exclusion lists) may mix "
                                       "them up", WARNING)
            continue
        why = "no onnxruntime session was created" if not session_tried else "onnxruntime stopped at another problem"
        if item.refused:
            run.add("duplicate-names", f"{text}; onnxruntime refuses two nodes of one graph with one name "
                                       f"({quoted_names(item.refused)}) (not verified: {why})")
        else:
            run.add("duplicate-names", f"{text}: all Constant nodes, which onnxruntime folds into initializers "
                                       f"when it loads a model, so it accepts them (not verified: {why})", WARNING)


@rule("node-names", WARNING, "nodes without a name")
def node_names(run: CheckRun) -> None:
    """Nodes without a name: legal, but profiles, quantization exclusion lists and per-layer
    reports cannot address them."""
    total = unnamed = 0
    first = None
    for graph in all_graphs(run.model.graph):
        for index, node in enumerate(graph.node):
            total += 1
            if not node.name:
                unnamed += 1
                first = first or f"#{index} {node.op_type}"
    if unnamed:
        run.add("node-names", f"{unnamed} of {total} nodes have no name (first: {first}); profiles, "
                              "quantization exclusion lists and per-layer reports cannot address them")


@rule("input-shadowed", WARNING, "graph inputs that also have an initializer (IR >= 4)")
def input_shadowed(run: CheckRun) -> None:
    """A graph input with an initializer of the same name (IR ≥ 4) becomes an overridable
    default that onnxruntime will not constant-fold."""
    model = run.model
    if model.ir_version < 4:  # IR < 4 requires every initializer to be listed as an input
        return
    initializers = {t.name for t in model.graph.initializer}
    shadowed = [i.name for i in model.graph.input if i.name in initializers]
    if shadowed:
        run.add("input-shadowed", f"{len(shadowed)} graph input(s) also have an initializer "
                                  f"({quoted_names(shadowed)}): callers may override them, so onnxruntime will "
                                  "not constant-fold them; drop them from the graph inputs unless that is intended")


@rule("unused-initializer", WARNING, "initializers or Constant nodes that nothing reads")
def unused_initializer(run: CheckRun) -> None:
    """Initializers or ``Constant`` nodes nothing reads (dead weight)."""
    unused: list[str] = []
    unused_constants: list[str] = []
    wasted = 0
    for graph in all_graphs(run.model.graph):
        read = names_read(graph)
        for tensor in graph.initializer:
            if tensor.name not in read:
                unused.append(tensor.name)
                wasted += tensor.ByteSize()
        for node in graph.node:
            if node.op_type == "Constant" and node.output and not any(o in read for o in node.output):
                unused_constants.append(node.name or node.output[0])
                wasted += node.ByteSize()
    parts = []
    if unused:
        parts.append(f"{len(unused)} initializer(s) ({quoted_names(unused)})")
    if unused_constants:
        parts.append(f"{len(unused_constants)} Constant node(s) ({quoted_names(unused_constants)})")
    if parts:
        run.add("unused-initializer", f"{' and '.join(parts)} are read by no node and no graph output "
                                      f"({human_bytes(wasted)} of dead weight)")


@rule("non-finite-weights", ERROR, "NaN or Inf in weights or constants")
def non_finite_weights(run: CheckRun) -> None:
    """NaN or ±Inf in an initializer or a constant tensor attribute."""
    from onnx import numpy_helper

    floats = float_types()
    bad: list[str] = []
    for label, tensor in constant_tensors(run.model):
        if tensor.data_type not in floats:
            continue
        values = numpy_helper.to_array(tensor)
        finite = np.isfinite(values)
        if not finite.all():
            nan = int(np.isnan(values).sum())
            inf = int((~finite).sum()) - nan
            counts = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n)
            bad.append(f"{label} has {counts} among {values.size} values")
    for label, values in constant_float_attrs(run.model):
        array = np.asarray(values, dtype=np.float64)
        if not np.isfinite(array).all():
            bad.append(f"{label} has a NaN or Inf value")
    if bad:
        more = f"; and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
        run.add("non-finite-weights", "; ".join(bad[:3]) + more)
