"""Tiny seeded models for the decomposition-pass tests, and a helper that runs one pass."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxopt.registry import build_options, get
from tests.helpers import make_model


def conv_model(
    C: int = 6, F: int = 8, kernel: tuple[int, ...] = (3, 3), hw: tuple[int, ...] = (13, 11), *,
    strides=None, pads=None, auto_pad: str | None = None, dilations=None, group: int = 1,
    bias: bool = True, weight: str = "initializer", shared: bool = False, seed: int = 0,
    name: str = "conv", weight_array: np.ndarray | None = None,
) -> onnx.ModelProto:
    """x [1, C, *hw] → Conv → y; ``weight`` is "initializer", "constant" (a Constant node)
    or "input" (a graph input: not constant). ``shared`` adds a second Conv on the same weight."""
    rng = np.random.default_rng(seed)
    W = weight_array if weight_array is not None else rng.standard_normal((F, C // group, *kernel)).astype(np.float32)
    B = rng.standard_normal(F).astype(np.float32)
    attrs = {}
    if strides is not None:
        attrs["strides"] = list(strides)
    if pads is not None:
        attrs["pads"] = list(pads)
    if auto_pad is not None:
        attrs["auto_pad"] = auto_pad
    if dilations is not None:
        attrs["dilations"] = list(dilations)
    if group != 1:
        attrs["group"] = group
    inputs = ["x", "W"] + (["B"] if bias else [])
    nodes = [helper.make_node("Conv", inputs, ["y"], name=name, **attrs)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * (2 + len(kernel)))]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, *hw])]
    initializers = [numpy_helper.from_array(B, "B")] if bias else []
    if weight == "initializer":
        initializers.append(numpy_helper.from_array(W, "W"))
    elif weight == "constant":
        nodes.insert(0, helper.make_node("Constant", [], ["W"], name="W_const", value=numpy_helper.from_array(W, "W")))
    else:
        graph_inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(W.shape)))
    if shared:
        nodes.append(helper.make_node("Conv", inputs, ["y2"], name=f"{name}_twin", **attrs))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [None] * (2 + len(kernel))))
    model = make_model(helper.make_graph(nodes, "g", graph_inputs, outputs, initializers))
    onnx.checker.check_model(model)
    return model


def chain_model(channels=(16, 32, 32, 16), hw=(12, 12), seed: int = 0) -> onnx.ModelProto:
    """x → (Conv 3×3 → Relu)×n with named convs conv0, conv1, …"""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    previous = "x"
    for i, (c, f) in enumerate(zip(channels[:-1], channels[1:])):
        W = (rng.standard_normal((f, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        inits += [numpy_helper.from_array(W, f"W{i}"), numpy_helper.from_array(rng.standard_normal(f).astype(np.float32) * 0.1, f"B{i}")]
        nodes.append(helper.make_node("Conv", [previous, f"W{i}", f"B{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        previous = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels[0], *hw])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [None] * 4)], inits)
    return make_model(graph)


def gemm_model(K=24, N=20, M=5, *, transA=0, transB=1, alpha=1.0, beta=1.0, bias=True, seed=0, opset=17) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((N, K) if transB else (K, N)).astype(np.float32)
    inputs = ["a", "B"] + (["C"] if bias else [])
    inits = [numpy_helper.from_array(B, "B")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "C"))
    node = helper.make_node("Gemm", inputs, ["y"], name="fc", transA=transA, transB=transB, alpha=alpha, beta=beta)
    a_shape = [K, M] if transA else [M, K]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])], inits)
    return make_model(graph, opset=opset)


def matmul_model(K=24, N=20, lead=(2, 5), seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((K, N)).astype(np.float32)
    node = helper.make_node("MatMul", ["a", "B"], ["y"], name="mm")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [*lead, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * (len(lead) + 1))],
                              [numpy_helper.from_array(B, "B")])
    return make_model(graph)


def run_pass(name: str, model: onnx.ModelProto, context=None, **options):
    """Run pass ``name`` (options typed as on the CLI) on a copy of ``model``; returns the
    checked output proto and the pass object (for its report)."""
    cls = get(name)
    opt_pass = cls(build_options(cls, options), context)
    result = opt_pass(ir.from_proto(model))
    out = ir.to_proto(result.model)
    out.ir_version = model.ir_version
    onnx.checker.check_model(out)
    opt_pass.report.modified = bool(result.modified)
    return out, opt_pass


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def attrs(n: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def token_model(seed: int = 0, width: int = 16, vocab: int = 50, *, directions: int | None = None,
                mask_output: bool = False) -> onnx.ModelProto:
    """ids [N, L] -> embedding -> MatMul "fc" (the layer svd targets) -> y [N, L, 40], with an
    ``attention_mask`` input; ``mask_output``: padded positions zeroed after the MatMul;
    ``directions``: embeddings spanning only that many directions (correlated inputs)."""
    rng = np.random.default_rng(seed)
    if directions:
        table = rng.standard_normal((vocab, directions)) @ rng.standard_normal((directions, width))
    else:
        table = rng.standard_normal((vocab, width))
    inits = [numpy_helper.from_array(table.astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((width, 40)).astype(np.float32), "W")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e"]),
             helper.make_node("MatMul", ["e", "W"], ["h" if mask_output else "y"], name="fc")]
    if mask_output:
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "last"))
        nodes += [helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
                  helper.make_node("Unsqueeze", ["m", "last"], ["m3"]),
                  helper.make_node("Mul", ["h", "m3"], ["y"])]
    graph = helper.make_graph(
        nodes, "tokens",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "L"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L", 40])], inits)
    return make_model(graph)
