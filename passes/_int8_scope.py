"""What the ``int8`` pass quantizes: the op types (``ops=``) and the nodes that stay float by structure.

``ops=all`` is onnxruntime's own default: every op type its QDQ and QLinear registries
know — right for convolutional networks, whose Conv → Relu → Add chains run as integer
kernels end to end. ``ops=linear`` quantizes the layers with a stored weight (MatMul,
Gemm, Conv, ConvTranspose) and Softmax, and leaves a MatMul of two activations (attention
scores, attention-weighted values) in float. ``ops=auto`` picks ``linear`` for graphs
with attention (:func:`attention_softmax`: a Softmax computed from a MatMul of two
activations) and ``all`` otherwise: in a transformer the residual stream (Add,
LayerNormalization) carries outlier channels that one per-tensor 8-bit range clips or
blurs, and onnxruntime's CPU provider has no integer LayerNormalization kernel, so
quantizing them costs accuracy for nothing.

Whatever the op types: :func:`mask_path_nodes` (nodes that read a tensor computed from the
attention mask alone stay float when calibration saw only real tokens),
:func:`sentinel_nodes` (nodes that read or write a tensor with no 8-bit range) and
:func:`mixed_range_nodes` (a Concat of unlike ranges, and what carries its output on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import onnx

from onnxopt.analysis.inputs import MASK_NAME, base_name

#: ``ops=linear``: layers with a stored weight, and Softmax (its window range: :mod:`._calibration`).
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Softmax")
#: Ops between an attention MatMul and its Softmax: scaling, masking, reshaping.
_ATTENTION_PATH_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Where", "Reshape", "Transpose", "Cast", "Identity", "Squeeze", "Unsqueeze",
    "Expand", "Max", "Min", "Clip", "Tanh",
})
_ATTENTION_DEPTH = 8  # nodes from a Softmax back to its MatMul


def constant_values(proto: onnx.ModelProto) -> set[str]:
    """Names of values fixed by the graph: initializers, Constant outputs, and what is computed from them alone."""
    constants = {t.name for t in proto.graph.initializer} | {""}
    for node in proto.graph.node:  # topological order: one sweep
        if node.op_type == "Constant" or (node.input and all(i in constants for i in node.input)):
            constants.update(node.output)
    return constants


def activation_matmuls(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMuls whose two inputs are both activations (no stored weight)."""
    constants = constant_values(proto)
    return [n for n in proto.graph.node
            if n.op_type == "MatMul" and len(n.input) == 2 and not (set(n.input) & constants)]


def attention_softmax(proto: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(a Softmax, the MatMul of two activations it is computed from through scaling/masking/
    reshaping ops), or None: what attention looks like in a graph."""
    products = {n.output[0]: n for n in activation_matmuls(proto)}
    producers = {o: n for n in proto.graph.node for o in n.output}
    for softmax in proto.graph.node:
        if softmax.op_type != "Softmax":
            continue
        frontier, seen = [softmax.input[0]], set()
        for _ in range(_ATTENTION_DEPTH):
            following = []
            for tensor in frontier:
                if tensor in products:
                    return softmax, products[tensor]
                node = producers.get(tensor)
                if node is not None and node.op_type in _ATTENTION_PATH_OPS and node.name not in seen:
                    seen.add(node.name)
                    following.extend(i for i in node.input if i)
            frontier = following
    return None


def choose_ops(choice: str, proto: onnx.ModelProto, all_ops: list[str]) -> tuple[list[str], str]:
    """(the op types to quantize, how the report says it) for ``ops=choice``."""
    if choice == "all":
        return all_ops, "all (every op type onnxruntime's quantizer knows)"
    if choice == "linear":
        return list(LINEAR_OPS), "linear (layers with a stored weight, and Softmax)"
    found = attention_softmax(proto)
    if found is None:
        return all_ops, "all (auto: no attention in the graph)"
    softmax, matmul = found
    return list(LINEAR_OPS), (f"linear (auto: attention, Softmax '{softmax.name}' over MatMul '{matmul.name}' "
                              "of two activations): layers with a stored weight, and Softmax")


def linear_exclusions(proto: onnx.ModelProto) -> dict[str, str]:
    """Under ``ops=linear``: node name -> why it stays float (the MatMuls of two activations)."""
    return {n.name: "MatMul of two activations (attention scores or weighted values): float under ops=linear"
            for n in activation_matmuls(proto)}


def mask_inputs(proto: onnx.ModelProto) -> list[str]:
    """Graph inputs named as an attention mask (:data:`onnxopt.analysis.inputs.MASK_NAME`)."""
    return [i.name for i in proto.graph.input if MASK_NAME.fullmatch(base_name(i.name))]


def mask_path_nodes(proto: onnx.ModelProto, masks: Iterable[str], op_types: Iterable[str]) -> dict[str, str]:
    """Node name -> reason, for the nodes of a quantized op type (not Softmax) that read a
    tensor computed from the attention mask(s) and constants alone.

    Calibrated on real tokens only, such a tensor never shows its masked values (a bias of
    −10000 or −3.4e38): a range from calibration would clamp them and unmask the padding."""
    masks = set(masks)
    if not masks:
        return {}
    derived = set(masks)
    constants = constant_values(proto)
    wanted = set(op_types) - {"Softmax"}
    found = {}
    for node in proto.graph.node:
        inputs = [i for i in node.input if i and i not in constants]
        reads_mask = any(i in derived for i in inputs)
        if reads_mask and node.op_type in wanted:
            found[node.name] = "reads the attention mask's values (calibrated on real tokens only, never masked)"
        if inputs and all(i in derived for i in inputs):
            derived.update(node.output)
    return found


def sentinel_nodes(proto: onnx.ModelProto, sentinels: dict[str, float], op_types: Iterable[str]) -> dict[str, str]:
    """Node name -> reason, for the nodes of a quantized op type that read or write a sentinel
    tensor (:mod:`._calibration`): its values reach ±1e30 or beyond, no 8-bit grid holds them.
    A Softmax reading one is not among them: its input range is the softmax window."""
    wanted = set(op_types)
    found = {}
    for node in proto.graph.node:
        if node.op_type not in wanted:
            continue
        touched = [t for t in (*(node.input if node.op_type != "Softmax" else ()), *node.output) if t in sentinels]
        if touched:
            name = touched[0]
            found[node.name] = (f"'{name}' reaches {sentinels[name]:.3g} in calibration (an attention mask's "
                                "filler?): no 8-bit range holds it")
    return found


#: a Concat whose inputs' calibrated ranges differ more than this stays float: on its output's
#: one 8-bit grid the narrowest input would keep fewer than 256 / 16 = 16 levels
MIXED_RANGE_RATIO = 16.0
#: ops that move values without computing: they carry a mixed tensor on, and quantizing one
#: would put it on one grid again
_DATA_MOVEMENT = frozenset({"Concat", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split",
                            "Gather", "Identity", "Expand", "Tile"})


def mixed_range_nodes(proto: onnx.ModelProto, width: Callable[[str], float | None],
                      op_types: Iterable[str]) -> dict[str, str]:
    """Node name -> reason, for a Concat whose inputs' calibrated ranges (``width``: highest −
    lowest, None where unknown) differ more than :data:`MIXED_RANGE_RATIO` times, and for the
    data-movement nodes that carry its output on; each only where its op type is quantized.

    QDQ gives a Concat's output one scale for all its inputs: a detector head that joins box
    offsets (a range of a few units) with object scores (0..0.02) rounds the scores to 0."""
    wanted = set(op_types)
    mixed: set[str] = set()
    found: dict[str, str] = {}
    for node in proto.graph.node:  # topological order
        if node.op_type == "Concat":
            widths = [width(i) for i in node.input if i]
            if len(widths) > 1 and None not in widths and min(widths) > 0:
                ratio = max(widths) / min(widths)
                if ratio > MIXED_RANGE_RATIO:
                    mixed.update(node.output)
                    if node.op_type in wanted:
                        found[node.name] = (f"joins inputs whose ranges differ {ratio:.0f}×: one 8-bit grid "
                                            "would blur the narrow ones")
                    continue
        if node.op_type in _DATA_MOVEMENT and any(i in mixed for i in node.input):
            mixed.update(node.output)
            if node.op_type in wanted:
                found[node.name] = "carries on the output of a Concat of unlike ranges"
    return found
