"""Small onnx_ir helpers shared by graph-surgery passes.

Weights reach a node either as an initializer or as the output of a ``Constant`` node
(several real exports keep every weight in ``Constant`` nodes); :func:`constant_array`
reads both, so passes do not care which.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

PROTOBUF_LIMIT = 2**31 - 1  # bytes: passes that round-trip through protobuf tools stop here


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents, from an initializer or a ``Constant`` node; else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        tensor = ir.convenience.get_const_tensor(value)
        if tensor is not None:
            return tensor.numpy()
    return None


def is_constant(value: ir.Value | None) -> bool:
    return constant_array(value) is not None


def use_count(value: ir.Value) -> int:
    """How many node inputs read the value (a graph output counts as a use)."""
    return len(value.uses()) + (1 if value.is_graph_output() else 0)


@dataclass(frozen=True)
class ConvAttributes:
    """Conv attributes with ONNX defaults filled in, for a kernel of ``len(kernel)`` dims."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # begin_0, begin_1, ..., end_0, end_1, ...
    group: int
    auto_pad: str

    def as_attributes(self, axes: Iterable[int] | None = None, kernel: tuple[int, ...] | None = None,
                      keep_spatial: bool = True, group: int = 1) -> dict:
        """Attributes for a factor conv.

        ``keep_spatial``: the factor carries this conv's strides, dilations and padding on
        ``axes`` (all axes by default); on the other axes, and for 1×1 factors
        (``keep_spatial=False``), it gets stride 1, dilation 1 and no padding.
        """
        rank = len(self.kernel)
        own = set(range(rank) if axes is None else axes) if keep_spatial else set()
        strides = [self.strides[i] if i in own else 1 for i in range(rank)]
        dilations = [self.dilations[i] if i in own else 1 for i in range(rank)]
        attrs = {
            "kernel_shape": list(kernel if kernel is not None else self.kernel),
            "strides": strides,
            "dilations": dilations,
            "group": group,
        }
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER") and own:
            # SAME padding is computed per axis from that axis' kernel, stride and dilation,
            # so each factor padding its own axes reproduces the original padding.
            attrs["auto_pad"] = self.auto_pad
        elif self.auto_pad == "VALID" or not own:
            attrs["pads"] = [0] * (2 * rank)
        else:
            attrs["pads"] = [self.pads[i] if i in own else 0 for i in range(rank)] + [
                self.pads[rank + i] if i in own else 0 for i in range(rank)
            ]
        return attrs


def conv_attributes(node: ir.Node, weight_shape: tuple[int, ...]) -> ConvAttributes:
    kernel = tuple(int(k) for k in weight_shape[2:])
    rank = len(kernel)

    def ints(name: str, default: list[int]) -> tuple[int, ...]:
        attr = node.attributes.get(name)
        return tuple(int(v) for v in attr.as_ints()) if attr is not None else tuple(default)

    auto_pad_attr = node.attributes.get("auto_pad")
    auto_pad = auto_pad_attr.as_string() if auto_pad_attr is not None else "NOTSET"
    group_attr = node.attributes.get("group")
    return ConvAttributes(
        kernel=kernel,
        strides=ints("strides", [1] * rank),
        dilations=ints("dilations", [1] * rank),
        pads=ints("pads", [0] * (2 * rank)),
        group=int(group_attr.as_int()) if group_attr is not None else 1,
        auto_pad=auto_pad or "NOTSET",
    )


def unique_name(graph: ir.Graph, base: str) -> str:
    """A value/initializer name not yet used in the graph."""
    taken = _taken_names(graph)
    if base not in taken:
        return base
    for i in itertools.count(1):
        candidate = f"{base}_{i}"
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable")


def _taken_names(graph: ir.Graph) -> set[str]:
    names = set(graph.initializers)
    names.update(v.name for v in graph.inputs if v.name)
    for node in graph:
        names.update(v.name for v in node.outputs if v.name)
    return names


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    name = unique_name(graph, name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def replace_node(graph: ir.Graph, old: ir.Node, new_nodes: list[ir.Node]) -> None:
    """Put ``new_nodes`` where ``old`` was; the last new node's output takes over old's output.

    The old output value's name is kept, so graph outputs and downstream names are stable.
    """
    old_output = old.outputs[0]
    new_output = new_nodes[-1].outputs[0]
    name = old_output.name
    ir.convenience.replace_nodes_and_values(graph, old, [old], new_nodes, [old_output], [new_output])
    new_output.name = name


def selected(name: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Glob filter on node names: included (all when ``include`` is empty) and not excluded."""
    if include and not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


def opset_version(model: ir.Model, domain: str = "") -> int:
    return model.opset_imports.get(domain, model.opset_imports.get("ai.onnx", 0))
