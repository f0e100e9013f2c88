"""Run an ONNX graph in torch, with chosen initializers as trainable parameters.

:class:`GraphModule` walks the main graph's nodes (ONNX keeps them in topological order)
and calls :data:`onnxopt.recover.ops.OPS`. Initializers named in ``trainable`` become
``nn.Parameter``s (float32) keyed by their initializer name; the other initializers and
``Constant`` nodes are constant tensors. A trainable integer initializer q read by a
``DequantizeLinear`` (scale s, zero point z) is a float parameter p: for 8- and 16-bit
weights p = q, so a learning rate is in quanta per step whatever the channel's scale; for
int32 biases (their quantum s is far below a float weight's step) p = s·(q − z), in value
units as for float weights. The graph reads clamp(round(p)), resp. clamp(round(p / s) + z),
rounding straight-through; :meth:`GraphModule.stored_values` gives those integers.
Quantization scales named in ``scales`` train in the log domain, p = log s (a step is a
relative change, and a scale stays positive); the graph reads exp(p).
:func:`write_back` copies values into the SAME initializers of a model copy, dtype and
shape kept, so the graph, its names and its report stay as they were. ``forward``
evaluates only the nodes the requested values depend on, freeing each after its last use.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from onnxopt.recover import spatial  # noqa: F401  (registers pooling, Pad and Resize into OPS)
from onnxopt.recover.ops import OPS, OpContext, Unsupported
from onnxopt.recover.quantization import RANGES, per_axis, round_ste

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def unsupported_ops(model: onnx.ModelProto, nodes: Iterable[onnx.NodeProto] | None = None) -> list[str]:
    """The op types (``domain::op`` outside the default domain) this engine cannot run, sorted."""
    nodes = model.graph.node if nodes is None else nodes
    return sorted({_op_key(n) for n in nodes if n.domain not in _DEFAULT_DOMAINS or n.op_type not in OPS})


def _attributes(node: onnx.NodeProto) -> dict:
    values = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = _tensor(numpy_helper.to_array(value))
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        values[attribute.name] = value
    return values


def _tensor(array: np.ndarray) -> torch.Tensor:
    array = np.array(array)  # writable, native byte order
    if array.dtype == np.float64:
        array = array.astype(np.float32)  # the engine computes in float32
    return torch.from_numpy(array)


@dataclass
class _Node:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    context: OpContext
    supported: bool


class GraphModule(torch.nn.Module):
    """An ONNX model as a torch module; ``trainable`` initializers are its parameters."""

    def __init__(self, model: onnx.ModelProto, trainable: Iterable[str] = (), scales: Iterable[str] = ()):
        super().__init__()
        graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 0)
        scales = list(dict.fromkeys(scales))
        trainable = set(trainable) - set(scales)
        self.weights = torch.nn.ParameterList()
        self.parameter_names: list[str] = []  # weights[i] is initializer parameter_names[i]
        self.constants: dict[str, torch.Tensor] = {}
        # quantized parameter name -> (unit, offset, lowest, highest, dtype): q = clamp(round(p / unit) + offset)
        self.quantized: dict[str, tuple[torch.Tensor, torch.Tensor, int, int, torch.dtype]] = {}
        integers = []
        for initializer in graph.initializer:
            array = numpy_helper.to_array(initializer)
            if initializer.name in trainable and np.issubdtype(array.dtype, np.floating):
                self.weights.append(torch.nn.Parameter(torch.from_numpy(np.array(array, np.float32))))
                self.parameter_names.append(initializer.name)
            else:
                self.constants[initializer.name] = _tensor(array)
                if initializer.name in trainable:
                    integers.append(initializer.name)
        for name in integers:
            self._add_quantized(graph, name)
        self.log_scales: set[str] = set()  # parameters that hold log s
        for name in scales:
            value = self.constants.pop(name, None)
            if value is None or not value.is_floating_point() or not bool((value > 0).all()):
                raise ValueError(f"'{name}' is not a positive float initializer: it cannot train as a scale")
            self.weights.append(torch.nn.Parameter(torch.log(value.float())))
            self.parameter_names.append(name)
            self.log_scales.add(name)
        missing = trainable - set(self.parameter_names)
        if missing:
            raise ValueError(f"not initializers of the model: {', '.join(sorted(missing))}")
        self.nodes: list[_Node] = []
        for node in graph.node:
            supported = node.domain in _DEFAULT_DOMAINS and node.op_type in OPS
            context = OpContext(opset, len(node.output), node.op_type)
            self.nodes.append(_Node(node.name, _op_key(node), list(node.input), list(node.output),
                                    _attributes(node), context, supported))
        self.graph_outputs = [v.name for v in graph.output]
        self._plans: dict[tuple, tuple[list[int], dict[int, list[str]]]] = {}

    def _add_quantized(self, graph: onnx.GraphProto, name: str) -> None:
        """Make the integer initializer ``name``, read by a DequantizeLinear, a parameter."""
        q = self.constants[name]
        reader = next((n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == name), None)
        scale = self.constants.get(reader.input[1]) if reader is not None else None
        if q.dtype not in RANGES or scale is None:
            raise ValueError(f"initializer '{name}' is {q.dtype}: only floats, and integers read by a "
                             "DequantizeLinear with a constant scale, train")
        axis = _attributes(reader).get("axis", 1)
        zero_name = reader.input[2] if len(reader.input) > 2 else ""
        zero = self.constants[zero_name].float() if zero_name else torch.zeros(())
        scale, zero = per_axis(scale.float(), axis, q.dim()), per_axis(zero, axis, q.dim())
        if q.dtype != torch.int32:  # train in quanta: p = q
            scale, zero = torch.ones(()), torch.zeros(())
        low, high = RANGES[q.dtype]
        del self.constants[name]
        self.weights.append(torch.nn.Parameter((q.float() - zero) * scale))
        self.parameter_names.append(name)
        self.quantized[name] = (scale, zero, low, high, q.dtype)

    def named_initializers(self) -> dict[str, torch.nn.Parameter]:
        """Initializer name -> its trainable parameter."""
        return dict(zip(self.parameter_names, self.weights))

    def quanta_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters that count quanta (8- and 16-bit weights)."""
        return [p for name, p in zip(self.parameter_names, self.weights)
                if name in self.quantized and self.quantized[name][4] != torch.int32]

    def scale_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters that are log scales (their learning rate differs)."""
        return [p for name, p in zip(self.parameter_names, self.weights) if name in self.log_scales]

    def _graph_value(self, name: str, parameter: torch.Tensor) -> torch.Tensor:
        """What the graph reads for a parameter: itself, its fake-quantized integers, or exp of a log scale."""
        if name in self.log_scales:
            return torch.exp(parameter)
        if name not in self.quantized:
            return parameter
        scale, zero, low, high, _ = self.quantized[name]
        return torch.clamp(round_ste(parameter / scale) + zero, low, high)

    def stored_values(self, weights: Iterable[torch.Tensor] | None = None) -> dict[str, np.ndarray]:
        """Initializer name -> the values to store (integers for quantized ones) of ``weights``
        (default: the current parameters), in :attr:`parameter_names` order."""
        weights = self.weights if weights is None else weights
        values = {}
        with torch.no_grad():
            for name, weight in zip(self.parameter_names, weights):
                value = self._graph_value(name, weight)
                dtype = self.quantized[name][4] if name in self.quantized else torch.float32
                values[name] = value.to(dtype).numpy().copy()
        return values

    def missing_ops(self, outputs: list[str], fed: Iterable[str]) -> list[str]:
        """The op types the engine lacks among the nodes that ``outputs`` depend on, sorted."""
        order, _ = self._plan(tuple(outputs), tuple(sorted(fed)))
        return sorted({self.nodes[i].op_type for i in order if not self.nodes[i].supported})

    def _plan(self, outputs: tuple[str, ...], fed: tuple[str, ...]) -> tuple[list[int], dict[int, list[str]]]:
        """Indices of the nodes the outputs need, and per node the values to free after it."""
        key = (outputs, fed)
        if key in self._plans:
            return self._plans[key]
        known = set(fed) | set(self.parameter_names) | set(self.constants)
        needed, order = set(outputs), []
        for index in reversed(range(len(self.nodes))):
            node = self.nodes[index]
            if any(o in needed and o not in fed for o in node.outputs):
                order.append(index)
                needed.update(i for i in node.inputs if i)
        order.reverse()
        produced = {o for i in order for o in self.nodes[i].outputs}
        absent = sorted(n for n in needed if n not in known and n not in produced)
        if absent:
            raise KeyError(f"values neither fed nor computed: {', '.join(absent)}")
        last_use: dict[str, int] = {}
        for index in order:
            for name in self.nodes[index].inputs:
                last_use[name] = index
        free: dict[int, list[str]] = {}
        for name, index in last_use.items():
            if name in produced and name not in outputs:
                free.setdefault(index, []).append(name)
        self._plans[key] = (order, free)
        return order, free

    def forward(self, feeds: Mapping[str, torch.Tensor], outputs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The values named in ``outputs`` (graph outputs or intermediates; default: graph outputs)."""
        outputs = list(outputs or self.graph_outputs)
        order, free = self._plan(tuple(outputs), tuple(sorted(feeds)))
        values: dict[str, torch.Tensor] = dict(self.constants)
        values.update({name: self._graph_value(name, p) for name, p in self.named_initializers().items()})
        values.update({k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))
                       for k, v in feeds.items()})
        for index in order:
            node = self.nodes[index]
            if not node.supported:
                raise Unsupported(f"{node.op_type} (node '{node.name}') is not supported by the recovery engine")
            inputs = [values[name] if name else None for name in node.inputs]
            results = OPS[node.op_type](inputs, node.attrs, node.context)
            for name, result in zip(node.outputs, results):
                if name:
                    values[name] = result
            for name in free.get(index, ()):
                values.pop(name, None)
        return {name: values[name] for name in outputs}


def write_back(model: onnx.ModelProto, params: Mapping[str, torch.Tensor | np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``params`` hold the given values.

    Each keeps its name, dtype and shape (a shape mismatch raises ``ValueError``; float
    values for an integer initializer are rounded and saturated); the rest is an exact copy.
    """
    result = copy.deepcopy(model)
    remaining = dict(params)
    for initializer in result.graph.initializer:
        if initializer.name not in remaining:
            continue
        value = remaining.pop(initializer.name)
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        dtype = helper.tensor_dtype_to_np_dtype(initializer.data_type)
        shape = tuple(initializer.dims)
        if tuple(value.shape) != shape:
            raise ValueError(f"initializer '{initializer.name}': shape {tuple(value.shape)} != {shape}")
        value = np.asarray(value)
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(value.dtype, np.integer):
            limits = np.iinfo(dtype)  # round half to even and saturate, never wrap around
            value = np.clip(np.rint(value.astype(np.float64)), limits.min, limits.max)
        initializer.CopyFrom(numpy_helper.from_array(value.astype(dtype), initializer.name))
    if remaining:
        raise ValueError(f"not initializers of the model: {', '.join(sorted(remaining))}")
    return result
