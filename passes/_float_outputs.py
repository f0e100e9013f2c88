"""Float where nothing integer reads it, for the ``int8`` pass: graph outputs and float readers.

onnxruntime's QDQ quantizer puts ``Q → DQ`` on a graph output, which only coarsens it
(logits on a uint8 grid, clamped at the calibrated maximum). :func:`float_outputs` gives
each output the float result instead; per output, against the model the quantizer saw:

* the output's producer is unchanged: it writes the output directly;
* a Relu or Clip was folded into the pair (the quantizer deletes such an activation and
  lets the Q's 0..max range clamp): a float copy of it writes the output, since dropping
  the pair alone would drop the activation;
* anything else: the pair stays (the library's form), and the report says so.

Layers that read the output keep reading the dequantized tensor: their integer kernels stay
fused and compute what the quantized model computed.

:func:`float_readers`: the quantizer rewires *every* reader of a tensor it quantizes to the
``DQ`` output. Where a float node produced the tensor for a quantized layer, the float
readers beside that layer (a transformer's residual Add beside the Q/K/V projections that
read the same LayerNorm output) get the float tensor back: the rounding is the integer
kernel's input format, not something a float op should inherit.
"""

from __future__ import annotations

import onnx

#: Activations onnxruntime's QDQ quantizer deletes when their input is quantized: the range
#: of the Q that follows them (from 0, or Clip's bounds) does their work instead.
FOLDED_ACTIVATIONS = ("Relu", "Clip")


def _index(proto: onnx.ModelProto):
    """(the nodes, value -> the node producing it, value -> the nodes reading it)."""
    nodes = list(proto.graph.node)
    producers = {o: n for n in nodes for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return nodes, producers, readers


def float_outputs(proto: onnx.ModelProto, float_proto: onnx.ModelProto, report=None) -> int:
    """Make ``proto``'s graph outputs float where the rules above allow (``float_proto``: the
    model the quantizer saw); returns how many floating-point outputs are float now (made
    so, or never quantized). Outputs whose pair stays are listed in
    ``report.figures["quantized_outputs"]``."""
    nodes, producers, readers = _index(proto)
    float_producers = {o: n for n in float_proto.graph.node for o in n.output}
    outputs = [o.name for o in proto.graph.output]
    taken = {v for n in nodes for v in (*n.input, *n.output)} | {t.name for t in proto.graph.initializer}
    kept = []
    for name in dict.fromkeys(outputs):
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or len(readers.get(q.output[0], [])) != 1:
            continue
        source = q.input[0]
        producer = producers.get(source)
        original = float_producers.get(name)
        if producer is None or source in outputs or original is None:
            continue
        activation = None
        if original.name != producer.name:
            upstream = float_producers.get(original.input[0]) if original.input else None
            if original.op_type not in FOLDED_ACTIVATIONS or upstream is None or upstream.name != producer.name \
                    or not _copy_constant_inputs(original, proto, float_proto):
                kept.append(f"{name} ({original.op_type} became {producer.op_type} + QuantizeLinear)")
                continue
            activation = original
        internal = readers.get(name, [])
        if internal:  # layers reading the output keep the dequantized tensor
            dequantized = _unique(name + "_dequantized", taken)
            dq.output[0] = dequantized
            for node in internal:
                for i, value in enumerate(node.input):
                    if value == name:
                        node.input[i] = dequantized
        else:
            proto.graph.node.remove(dq)
            proto.graph.node.remove(q)
        if activation is None:  # the producer writes the output itself
            producer.output[list(producer.output).index(source)] = name
            for node in readers.get(source, []):
                for i, value in enumerate(node.input):
                    if value == source and (node is not q or internal):
                        node.input[i] = name
        else:  # a float copy of the folded activation writes it
            copy = onnx.NodeProto()
            copy.CopyFrom(activation)
            copy.input[0] = source
            del copy.output[:]
            copy.output.append(name)
            position = list(proto.graph.node).index(producer) + 1
            proto.graph.node.insert(position, copy)
    if kept and report is not None:
        report.figures["quantized_outputs"] = "; ".join(kept)
    return _count_float(proto, float_proto)


def _count_float(proto: onnx.ModelProto, float_proto: onnx.ModelProto) -> int:
    """How many of the float model's floating-point graph outputs no DequantizeLinear writes in ``proto``."""
    floating = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    wanted = {o.name for o in float_proto.graph.output if o.type.tensor_type.elem_type in floating}
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    return sum(1 for o in dict.fromkeys(x.name for x in proto.graph.output)
               if o in wanted and producers.get(o) != "DequantizeLinear")


def _copy_constant_inputs(node: onnx.NodeProto, proto: onnx.ModelProto, float_proto: onnx.ModelProto) -> bool:
    """Make the constant inputs of ``node`` (Clip's bounds) exist in ``proto``; False where one is computed."""
    present = {t.name for t in proto.graph.initializer} | {o for n in proto.graph.node for o in n.output}
    initializers = {t.name: t for t in float_proto.graph.initializer}
    constants = {n.output[0]: n for n in float_proto.graph.node if n.op_type == "Constant"}
    for name in node.input[1:]:
        if not name or name in present:
            continue
        if name in initializers:
            proto.graph.initializer.append(initializers[name])
        elif name in constants:
            proto.graph.node.insert(0, constants[name])
        else:
            return False
    return True


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate


def float_readers(proto: onnx.ModelProto, quantized: set[str]) -> int:
    """Give the float readers of ``x → Q → DQ`` the tensor ``x`` where a float node (or the
    graph's input) produced ``x``; ``quantized``: the names of the nodes the quantizer
    quantized. A pair left without readers is removed. Returns how many inputs were rewired."""
    nodes, producers, readers = _index(proto)
    outputs = {o.name for o in proto.graph.output}
    rewired = 0
    for q in nodes:
        if q.op_type != "QuantizeLinear":
            continue
        source = q.input[0]
        producer = producers.get(source)
        if producer is not None and (producer.name in quantized or producer.op_type == "DequantizeLinear"):
            continue
        for dq in readers.get(q.output[0], []):
            if dq.op_type != "DequantizeLinear" or dq.output[0] in outputs:
                continue
            for node in readers.get(dq.output[0], []):
                if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                    continue
                for i, name in enumerate(node.input):
                    if name == dq.output[0]:
                        node.input[i] = source
                        rewired += 1
    _remove_unread_pairs(proto)
    return rewired


def _remove_unread_pairs(proto: onnx.ModelProto) -> None:
    """Remove DequantizeLinear nodes nothing reads, then the QuantizeLinear nodes that fed only them."""
    outputs = {o.name for o in proto.graph.output}
    for op in ("DequantizeLinear", "QuantizeLinear"):
        read = {name for n in proto.graph.node for name in n.input} | outputs
        for node in [n for n in proto.graph.node if n.op_type == op and n.output[0] not in read]:
            proto.graph.node.remove(node)
