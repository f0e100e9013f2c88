"""Graph surgery of the decomposition passes: a layer's node replaced by its factor chain.

The chain reads the original layer's input; the last factor keeps the original output
value (downstream nodes and graph outputs are untouched) and reuses the original bias
value unless the factor brings its own. New nodes are named ``<layer>/<method>_<role>``
and marked ``metadata_props["onnxopt.decomposed"] = <method>`` (and
``onnxopt.decomposed_from`` = the layer's name), which every decomposition pass skips;
weights keep the layer's dtype; an initializer or ``Constant`` nothing reads any more is
removed.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxopt import irutil
from onnxopt.passes._layers import MARK, SOURCE, Decomposition, Layer


def factor_stem(layer: Layer, method: str, role: str) -> str:
    """Name of a factor's node, and stem of its initializers' names."""
    return f"{layer.name}/{method}_{role}"


def emit_factors(graph: ir.Graph, layer: Layer, decomposition: Decomposition, method: str) -> list[ir.Node]:
    """Replace ``layer``'s node by the decomposition's factor nodes; returns them in order."""
    previous = layer.node.inputs[0]
    nodes = []
    factors = decomposition.factors
    for index, factor in enumerate(factors):
        stem = factor_stem(layer, method, factor.role)
        weight = irutil.add_initializer(graph, f"{stem}.weight", factor.weight.astype(layer.dtype, copy=False))
        inputs: list[ir.Value | None] = [previous, weight]
        if factor.bias is not None:
            inputs.append(irutil.add_initializer(graph, f"{stem}.bias", factor.bias.astype(layer.dtype)))
        elif index == len(factors) - 1 and layer.bias_value is not None:
            inputs.append(layer.bias_value)
        node = ir.Node(
            "", factor.op_type, inputs, ir.convenience.convert_attributes(factor.attributes),
            num_outputs=1, name=stem, metadata_props={MARK: method, SOURCE: layer.name},
        )
        node.outputs[0].name = irutil.unique_name(graph, stem)
        node.outputs[0].type = layer.node.outputs[0].type
        nodes.append(node)
        previous = node.outputs[0]
    irutil.replace_node(graph, layer.node, nodes)
    drop_if_unused(graph, layer.weight_value)
    return nodes


def drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove an initializer or ``Constant`` node that nothing reads any more."""
    if value is None or irutil.use_count(value) > 0 or value.is_graph_input():
        return
    if value.name in graph.initializers and graph.initializers[value.name] is value:
        graph.initializers.pop(value.name)
        return
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.graph is graph:
        graph.remove(producer, safe=True)
