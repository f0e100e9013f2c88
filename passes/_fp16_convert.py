"""float32 → float16 with onnxconverter-common, and the repairs its output needs (the ``fp16`` pass).

:class:`Float16Converter` converts all but the blocked op types and nodes, then repairs
what the converter (1.16) gets wrong, so that onnxruntime loads the result:

* a ``Cast(to=float)`` whose output it retyped float16 (its issue 320): ``to`` becomes float16;
* inputs that must stay float32 (Resize ``scales``), or that share a type variable with
  float16 inputs (an initializer read by a blocked and a converted node): a float32/float16
  copy or a Cast, from each op's schema;
* cascaded Casts it creates (``Cast(fp32→fp16) → Cast(fp16→fp32)``; onnxruntime keeps such
  down-casts since 1.17, its issue 20346) collapse, to nothing for an exact round trip, and
  duplicate Casts of one tensor merge;
* with ``keep_io_types``, a blocked node's graph output left float16 gets a Cast back;
* constants clamp at the float16 maximum 65504 (not its default 1e4); constants read only by
  blocked nodes stay float32.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt.irutil import constant_array, unique_name

from . import _quant_common as qc

FP16_MAX = 65504.0
_MIN_POSITIVE = 1e-7
_FLOAT = ir.DataType.FLOAT
_FLOAT16 = ir.DataType.FLOAT16


@dataclass(frozen=True)
class Float16Converter:
    """Converts a model with the same op block list and ``keep_io_types`` each time."""

    op_block: frozenset[str]  # op types that stay float32
    keep_io_types: bool  # float32 graph inputs and outputs, Casts at the boundary

    def is_blocked(self, node: ir.Node | onnx.NodeProto, node_block: frozenset[str]) -> bool:
        return node.op_type in self.op_block or node.name in node_block

    def convert(self, base: onnx.ModelProto, node_block: frozenset[str]) -> onnx.ModelProto:
        """``base`` in float16 but for the blocked op types and the nodes named in ``node_block``."""
        from onnx_ir.passes.common import RemoveUnusedNodesPass
        from onnxconverter_common import float16

        proto = copy.deepcopy(base)
        qc.strip_initializer_value_info(proto)
        original_casts = {n.name for n in base.graph.node if n.op_type == "Cast"}
        node_block = node_block | constants_feeding_only(proto, lambda n: self.is_blocked(n, node_block))
        with qc.quiet("float16 converter"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = float16.convert_float_to_float16(
                proto,
                min_positive_val=_MIN_POSITIVE,
                max_finite_val=FP16_MAX,
                keep_io_types=self.keep_io_types,
                op_block_list=sorted(self.op_block),
                node_block_list=sorted(node_block),
                check_fp16_ready=False,
            )
        model = ir.from_proto(converted)
        blocked = {n.name for n in model.graph if self.is_blocked(n, node_block)}
        if self.keep_io_types:
            float_outputs = [o.name for o in base.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
            restore_float_outputs(model, set(float_outputs))
        fix_cast_targets(model, blocked, original_casts)
        unify_input_types(model, blocked)
        collapse_casts(model, original_casts)
        dedupe_casts(model)
        RemoveUnusedNodesPass()(model)
        result = ir.to_proto(model)
        result.ir_version = max(result.ir_version, base.ir_version)
        return result


def fix_cast_targets(model: ir.Model, blocked: set[str], original_casts: set[str]) -> None:
    """Cast(to=float) whose output the converter retyped float16 (onnxconverter-common issue 320)."""
    for node in model.graph:
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or node.name in blocked:
            continue
        if node.name not in original_casts:
            continue
        to = node.attributes.get("to")
        if to is not None and to.as_int() == _FLOAT and node.outputs[0].dtype == _FLOAT16:
            node.attributes["to"] = ir.AttrInt64("to", int(_FLOAT16))
            node.meta["fp16_modified"] = True



def unify_input_types(model: ir.Model, blocked: set[str]) -> None:
    """Make each node's float inputs agree with its schema (and each other) after conversion."""
    graph = model.graph
    opsets = dict(model.opset_imports)
    for node in list(graph):
        schema = _schema(node, opsets)
        if schema is None:
            continue
        target = _FLOAT if node.name in blocked else _FLOAT16
        groups: dict[str, list[tuple[int, ir.Value, ir.DataType]]] = {}
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            formal = _formal_input(schema, index)
            dtype = _dtype_of(value)
            if formal is None or dtype not in (_FLOAT, _FLOAT16):
                continue
            if formal.type_str == "tensor(float)":  # e.g. Resize scales: always float32
                if dtype != _FLOAT:
                    _retype_input(graph, node, index, value, _FLOAT)
                continue
            groups.setdefault(formal.type_str, []).append((index, value, dtype))
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        for type_var, members in groups.items():
            if len({dtype for _, _, dtype in members}) < 2:
                continue
            wanted = target if "tensor(float16)" in allowed.get(type_var, {"tensor(float16)"}) else _FLOAT
            for index, value, dtype in members:
                if dtype != wanted:
                    _retype_input(graph, node, index, value, wanted)



def _retype_input(graph: ir.Graph, node: ir.Node, index: int, value: ir.Value, dtype: ir.DataType) -> None:
    array = constant_array(value)
    numpy_type = np.float16 if dtype == _FLOAT16 else np.float32
    if array is not None:
        name = _unique_value_name(graph, f"{value.name}_{'fp16' if dtype == _FLOAT16 else 'fp32'}")
        copy_value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(dtype),
                              const_value=ir.tensor(array.astype(numpy_type), name=name))
        graph.register_initializer(copy_value)
        node.replace_input_with(index, copy_value)
        return
    cast = ir.node("Cast", [value], {"to": int(dtype)}, name=_unique_node_name(graph, f"{node.name}_input{index}_cast"))
    cast.outputs[0].name = _unique_value_name(graph, f"{node.name}_input{index}_cast")
    cast.outputs[0].type = ir.TensorType(dtype)
    cast.outputs[0].shape = value.shape
    cast.meta["fp16_inserted"] = True
    graph.insert_before(node, cast)
    node.replace_input_with(index, cast.outputs[0])



def collapse_casts(model: ir.Model, original_casts: set[str]) -> None:
    """Cast(a→m) → Cast(m→b) with m a float type, one of them made by the conversion: read a directly."""
    graph = model.graph
    for node in list(graph):
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
            continue
        first = node.inputs[0].producer() if node.inputs[0] is not None else None
        if first is None or first.op_type != "Cast" or first.domain not in ("", "ai.onnx"):
            continue
        middle = ir.DataType(first.attributes["to"].as_int())
        if middle not in (_FLOAT, _FLOAT16):
            continue
        made = [n.name not in original_casts or n.meta.get("fp16_modified") for n in (first, node)]
        if not any(made):
            continue
        source = first.inputs[0]
        target = ir.DataType(node.attributes["to"].as_int())
        output = node.outputs[0]
        if _dtype_of(source) != target:
            node.replace_input_with(0, source)
        elif not output.is_graph_output():
            output.replace_all_uses_with(source)
            graph.remove(node, safe=True)
        elif source.producer() is not None and not source.is_graph_output():
            # The round trip ends at a graph output: the source takes the output's place and name.
            name = output.name
            graph.outputs[graph.outputs.index(output)] = source
            output.replace_all_uses_with(source)
            graph.remove(node, safe=True)
            output.name = None
            source.name = name
        else:
            node.replace_input_with(0, source)



def _unique_value_name(graph: ir.Graph, base: str) -> str:
    return unique_name(graph, base)


def _unique_node_name(graph: ir.Graph, base: str) -> str:
    names = {n.name for n in graph}
    name, k = base, 0
    while name in names:
        k += 1
        name = f"{base}_{k}"
    return name


def _schema(node: ir.Node, opsets: dict[str, int]):
    domain = "" if node.domain == "ai.onnx" else node.domain
    version = opsets.get(domain, opsets.get("ai.onnx" if domain == "" else domain))
    if version is None:
        return None
    try:
        return onnx.defs.get_schema(node.op_type, version, domain)
    except Exception:  # unknown or custom op: nothing to check against
        return None


def _formal_input(schema, index: int):
    inputs = schema.inputs
    if not inputs:
        return None
    if index < len(inputs):
        return inputs[index]
    last = inputs[-1]
    return last if last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic else None


def _dtype_of(value: ir.Value) -> ir.DataType | None:
    if value.dtype is not None:
        return value.dtype
    array = constant_array(value)
    if array is not None:
        try:
            return ir.DataType.from_numpy(array.dtype)
        except TypeError:
            return None
    return None


def constants_feeding_only(proto: onnx.ModelProto, blocked) -> frozenset[str]:
    """Constant nodes all of whose consumers stay float32: keep their values exact."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in proto.graph.output}
    found = set()
    for node in proto.graph.node:
        if node.op_type != "Constant" or not node.output or node.output[0] in outputs:
            continue
        users = consumers.get(node.output[0], [])
        if users and all(blocked(user) for user in users):
            found.add(node.name)
    return frozenset(found)


def restore_float_outputs(model: ir.Model, names: set[str]) -> None:
    """keep_io_types: a blocked node producing a graph output leaves it float16 (converter bug)."""
    graph = model.graph
    for index, output in enumerate(list(graph.outputs)):
        if output.name not in names or output.dtype != _FLOAT16:
            continue
        name = output.name
        output.name = _unique_value_name(graph, f"{name}_fp16")
        cast = ir.node("Cast", [output], {"to": int(_FLOAT)}, name=_unique_node_name(graph, f"{name}_cast_to_float"))
        cast.outputs[0].name = name
        cast.outputs[0].type = ir.TensorType(_FLOAT)
        cast.outputs[0].shape = output.shape
        graph.append(cast)
        graph.outputs[index] = cast.outputs[0]


def dedupe_casts(model: ir.Model) -> None:
    """Merge Casts of the same tensor to the same type (keep_io_types adds one per consumer)."""
    graph = model.graph
    seen: dict[tuple[int, int], ir.Node] = {}
    for node in list(graph):
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or node.inputs[0] is None:
            continue
        key = (id(node.inputs[0]), node.attributes["to"].as_int())
        kept = seen.get(key)
        if kept is None:
            seen[key] = node
            continue
        output = node.outputs[0]
        if output.is_graph_output():
            continue
        output.replace_all_uses_with(kept.outputs[0])
        graph.remove(node, safe=True)
