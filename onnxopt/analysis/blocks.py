"""Which MatMul/Gemm nodes of a transformer belong to attention, which to the MLP.

Each MatMul/Gemm gets a label from the graph's structure first (:func:`structural_labels`),
its node name where the structure says nothing (:func:`name_label`):

* attention: the score MatMul feeding a ``Softmax`` (Q·Kᵀ), the context MatMul it feeds
  (probabilities · V), and the constant-weight projections reached around those two
  (Q, K, V or a fused QKV, and the output projection) through Reshape/Transpose/bias/
  scale-like ops only; by name ``attention``, ``attn``, ``/self/``, ``mha``, ``multi_head``;
* MLP: two constant-weight MatMul/Gemm outside attention joined by an activation,
  ``x·W1 → act → ·W2``; by name ``intermediate``, ``/output/``, ``mlp``, ``ffn``, … (an
  attention name wins: ``/attention/output/dense`` is attention).

A model without any attention label (a CNN, an LSTM) has no blocks. ``onnxopt profile``
sums the kernel time of each kind; ``check --hints`` counts the svd/int8 candidates in each.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import onnx

ATTENTION = "attention"
MLP = "mlp"
LINEAR_OPS = ("MatMul", "Gemm")

_ATTENTION_NAME = re.compile(r"attention|attn|/self/|mha|multi_?head", re.IGNORECASE)
_MLP_NAME = re.compile(r"intermediate|/output/|mlp|ffn|feed_?forward|\bfc[12]\b|/fc[12]/|dense_h_to_4h|dense_4h_to_h|c_fc",
                       re.IGNORECASE)
# Ops between a projection and the attention MatMuls (head split/merge, bias, scaling,
# masking) and between a Softmax and its MatMuls.
_THROUGH = frozenset({"Reshape", "Transpose", "Add", "Sub", "Mul", "Div", "Where", "Cast", "Squeeze", "Unsqueeze",
                      "Split", "Slice", "Identity", "Dropout", "Concat", "Gather", "Sqrt"})
# Ops between the two linear layers of an MLP (activations, bias).
_ACTIVATION = frozenset({"Relu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Erf", "Sigmoid", "Tanh", "HardSigmoid",
                         "HardSwish", "LeakyRelu", "Elu", "Selu", "Softplus", "Mish", "Add", "Mul", "Div", "Pow",
                         "Identity", "Cast", "Dropout", "Clip"})
_DEPTH = 8


def name_label(name: str) -> str | None:
    """``"attention"``, ``"mlp"`` or None from a node name's patterns (module docstring)."""
    if _ATTENTION_NAME.search(name):
        return ATTENTION
    if _MLP_NAME.search(name):
        return MLP
    return None


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.nodes = [n for n in model.graph.node if n.op_type != "Constant"]
        self.constants = {t.name for t in model.graph.initializer}
        self.constants.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)

    def weighted(self, node: onnx.NodeProto) -> bool:
        """A MatMul/Gemm with a constant weight (input 1)."""
        return node.op_type in LINEAR_OPS and len(node.input) > 1 and node.input[1] in self.constants

    def up(self, tensors: Iterable[str], through: frozenset[str]) -> list[onnx.NodeProto]:
        """The first MatMul/Gemm on each path upstream of ``tensors`` through ``through`` ops."""
        found, seen = [], set()
        frontier = [t for t in tensors if t and t not in self.constants]
        for _ in range(_DEPTH):
            following = []
            for tensor in frontier:
                node = self.producer.get(tensor)
                if node is None or id(node) in seen:
                    continue
                seen.add(id(node))
                if node.op_type in LINEAR_OPS:
                    found.append(node)
                elif node.op_type in through:
                    following.extend(t for t in node.input if t and t not in self.constants)
            frontier = following
        return found

    def down(self, tensors: Iterable[str], through: frozenset[str]) -> list[onnx.NodeProto]:
        """The first MatMul/Gemm on each path downstream of ``tensors`` through ``through`` ops."""
        found, seen = [], set()
        frontier = list(tensors)
        for _ in range(_DEPTH):
            following = []
            for tensor in frontier:
                for node in self.consumers.get(tensor, ()):
                    if id(node) in seen:
                        continue
                    seen.add(id(node))
                    if node.op_type in LINEAR_OPS:
                        found.append(node)
                    elif node.op_type in through:
                        following.extend(o for o in node.output if o)
            frontier = following
        return found


def _node_key(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def structural_labels(model: onnx.ModelProto) -> dict[str, str]:
    """Labels from the graph's structure alone (module docstring), keyed like
    :func:`onnxopt.analysis.node_costs` (``<op_type>_<index>`` for unnamed nodes)."""
    graph = _Graph(model)
    keys = {id(node): _node_key(node, index) for index, node in enumerate(model.graph.node)}
    attention: dict[int, onnx.NodeProto] = {}
    for softmax in (n for n in graph.nodes if n.op_type == "Softmax"):
        scores = [n for n in graph.up(softmax.input[:1], _THROUGH) if not graph.weighted(n)]
        contexts = [n for n in graph.down(softmax.output[:1], _THROUGH) if not graph.weighted(n)]
        if not scores or not contexts:
            continue  # a classifier's Softmax, not attention
        core = scores + contexts
        attention.update((id(n), n) for n in core)
        for node in core:
            others = [t for t in node.input if t and t not in softmax.output]
            for projection in graph.up(others, _THROUGH):
                if graph.weighted(projection):
                    attention[id(projection)] = projection
        for context in contexts:
            for projection in graph.down(context.output[:1], _THROUGH):
                if graph.weighted(projection):
                    attention[id(projection)] = projection
    labels = {keys[i]: ATTENTION for i in attention}
    for node in graph.nodes:
        if not graph.weighted(node) or id(node) in attention or not _activation_follows(graph, node):
            continue
        following = [n for n in graph.down(node.output[:1], _ACTIVATION)
                     if graph.weighted(n) and id(n) not in attention]
        if following:  # x·W1 → activation → ·W2
            labels[keys[id(node)]] = MLP
            for second in following:
                labels[keys[id(second)]] = MLP
    return labels


_BIAS_LIKE = frozenset({"Add", "Identity", "Cast", "Dropout", "Mul", "Div"})


def _activation_follows(graph: _Graph, node: onnx.NodeProto) -> bool:
    """Whether a non-linear activation reads ``node``'s output, directly or after a bias
    Add (or a scale) or two."""
    frontier = list(node.output[:1])
    for _ in range(3):
        following = []
        for tensor in frontier:
            for consumer in graph.consumers.get(tensor, ()):
                if consumer.op_type in _ACTIVATION - _BIAS_LIKE:
                    return True
                if consumer.op_type in _BIAS_LIKE:
                    following.extend(consumer.output)
        frontier = following
    return False


def block_labels(model: onnx.ModelProto) -> dict[str, str]:
    """``{node key: "attention" | "mlp"}`` for the MatMul/Gemm nodes of a model with
    attention (structure first, then names); empty when nothing is attention."""
    structural = structural_labels(model)
    labels: dict[str, str] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in LINEAR_OPS:
            continue
        key = _node_key(node, index)
        label = structural.get(key) or name_label(node.name)
        if label is not None:
            labels[key] = label
    return labels if ATTENTION in labels.values() else {}


def linear_candidates_hint(model: onnx.ModelProto, costs: Mapping[str, Any]) -> str | None:
    """``check --hints``'s line on the MatMul/Gemm layers ``svd`` and ``int8-dynamic`` target:
    a constant float weight that :func:`onnxopt.analysis.decomposition_target` gives to
    ``svd`` (2-D, smaller side at least :data:`onnxopt.analysis.SVD_MIN_DIM`).
    MACs are ``costs``' (:func:`onnxopt.analysis.node_costs`: dynamic sequence dims at
    :data:`onnxopt.analysis.DEFAULT_SEQUENCE`); None when no layer qualifies."""
    from onnxopt.analysis import DEFAULT_SEQUENCE, SVD_MIN_DIM, TARGET_SVD, assumed_dims, decomposition_target
    from onnxopt.report import human_count

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    weights = {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    weights[node.output[0]] = (tuple(attr.t.dims), attr.t.data_type)
    labels = block_labels(model)
    found = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in LINEAR_OPS or len(node.input) < 2:
            continue
        shape, dtype = weights.get(node.input[1], ((), None))
        if dtype not in floats or decomposition_target(node.op_type, shape) != TARGET_SVD:
            continue
        key = _node_key(node, index)
        cost = costs.get(key)
        found.append((key, shape, cost.macs if cost is not None else None, labels.get(key)))
    if not found:
        return None
    counted = [c.macs for c in costs.values() if c.op_type in ("Conv", "ConvTranspose", *LINEAR_OPS)]
    total = None if any(m is None for m in counted) else sum(counted)
    macs = None if any(f[2] is None for f in found) else sum(f[2] for f in found)
    where = f"at sequence length {DEFAULT_SEQUENCE}, batch 1" if assumed_dims(model) else "at batch 1"
    text = (f"{len(found)} MatMul/Gemm layer(s) with a constant float weight (smaller side ≥ {SVD_MIN_DIM}) are "
            "candidates for 'svd' (low-rank factors) and 'int8-dynamic' (int8 weights, activations quantized "
            "at run time)")
    if macs is not None:
        share = f" of the {human_count(total)} ({100 * macs / total:.0f}%)" if total else ""
        text += f": {human_count(macs)} MACs{share} {where}"
    kinds = [(label, [f for f in found if f[3] == label]) for label in (ATTENTION, MLP)]
    if any(group for _, group in kinds):
        names = {ATTENTION: "attention", MLP: "MLP"}
        text += "; " + ", ".join(f"{len(group)} in {names[label]} blocks" for label, group in kinds if group)
    largest = sorted(found, key=lambda f: -(f[2] or 0))[:3]
    text += "; largest: " + ", ".join(
        f"'{key}' {shape[0]}×{shape[1]}" + (f" ({human_count(m)} MACs)" if m is not None else "")
        for key, shape, m, _ in largest)
    return text
