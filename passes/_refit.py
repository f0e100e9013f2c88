"""Refit of the decomposition passes (``refit=true``): the last factor of every decomposed
layer and its bias re-solved by streaming least squares on calibration batches
(:class:`onnxopt.decomp.LastFactorRefit`), so that the layer's *output* matches the
original layer's output on real activations (Zhang et al. 2016).

One onnxruntime CPU session (``_activations``) runs a protobuf copy of the original model
(taken before any rewrite) with, per layer, a side branch that applies the layer's new
factors but the last to the layer's original input: one pass over the data yields Y (the
original layer's output, bias included) and Z (the input of the last factor). Each layer is fitted on its
own, on the original network's activations. A new weight is kept only where it lowers the
output residual. Memory does not grow with the number of samples: per layer
8·((R+1)² + F·(R+1)) bytes of accumulators, plus one batch of the exposed activations.
Rows at padded token positions (an attention mask among the inputs) are left out.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt import irutil
from onnxopt.decomp import LastFactorRefit, blas_threads, im2col
from onnxopt.passes._activations import stream_values, token_rows
from onnxopt.passes._layers import DecomposedLayer
from onnxopt.passes._surgery import drop_if_unused, factor_stem
from onnxopt.runtime import first_line

logger = logging.getLogger(__name__)


def refit_last_factors(model: ir.Model, original, done: list[DecomposedLayer], *, context, report,
                       pass_name: str, method: str) -> None:
    """Refit every layer of ``done`` (already emitted into ``model``) on
    ``context.calibration()``; ``original`` is the ModelProto taken before the rewrite (it
    is consumed). Results go to each item's ``refit`` and ``report.figures["refit"]``; a
    failure (calibration data, onnxruntime) becomes a warning and keeps the plain factors."""
    try:
        with blas_threads(1):  # small solves: one BLAS thread (see onnxopt.decomp._blas)
            _refit_all(model, original, done, context, report, pass_name, method)
    except Exception as exc:
        report.warn(f"refit skipped: {type(exc).__name__}: {first_line(exc)}")
        logger.info("refit failed", exc_info=True)


def _refit_all(model: ir.Model, original, done: list[DecomposedLayer], context, report,
               pass_name: str, method: str) -> None:
    y_names = [d.nodes[-1].outputs[0].name for d in done]
    z_names = _add_side_branches(original, done)
    elem_type = {n: ir.DataType.from_numpy(d.layer.dtype).value
                 for names in (y_names, z_names) for n, d in zip(names, done)}
    names = y_names + z_names
    solvers: list[LastFactorRefit | None] = [None] * len(done)
    batches = 0
    for values, tokens in stream_values(original, names, elem_type, context.calibration):
        for index, item in enumerate(done):
            Z, Y = _refit_samples(item, values[z_names[index]], values[y_names[index]], tokens)
            if solvers[index] is None:
                solvers[index] = LastFactorRefit(Z.shape[1], Y.shape[1], fit_bias=item.layer.kind != "matmul")
            solvers[index].update(Z, Y)
        batches += 1
        context.progress(f"{pass_name}: refit batch {batches}", batches, 0)
        del values
    if batches == 0:
        report.warn("refit=true but the calibration data yielded no batch: nothing refit")
        return
    refit_layers = 0
    for item, solver in zip(done, solvers):
        item.refit = _apply_refit(model.graph, item, solver, method)
        refit_layers += item.refit.get("applied", False)
    report.figures["refit"] = {
        "batches": batches, "samples": solvers[0].n_samples if solvers[0] else 0,
        "layers_refit": refit_layers,
        "data": context.calibration_description,
    }


def _refit_samples(item: DecomposedLayer, Z: np.ndarray, Y: np.ndarray,
                   tokens: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Z, Y) as LastFactorRefit wants them: [N, R, H, W] / [rows, R] and [N, F, H, W] / [rows, F].

    ``tokens``: the batch's attention mask ([batch, seq], True = a real token); rows of
    [batch, seq, features] activations at padded positions are left out — on short
    sentences padded to a long sequence they are most of the rows, and fitting them fits padding.
    """
    last = item.nodes[-1]
    if last.op_type == "Conv":
        kh, kw = item.decomposition.factors[-1].weight.shape[2:]
        if (kh, kw) != (1, 1):
            attrs = item.decomposition.factors[-1].attributes
            pads = explicit_pads(attrs, (kh, kw), Z.shape[2:])
            Z = im2col(Z, (kh, kw), attrs["strides"], pads, attrs["dilations"])
        return Z, Y
    if Z.shape[:-1] != Y.shape[:-1]:
        tokens = None
    return token_rows(Z, tokens), token_rows(Y, tokens)


def _apply_refit(graph: ir.Graph, item: DecomposedLayer, solver: LastFactorRefit, method: str) -> dict[str, Any]:
    last = item.nodes[-1]
    factor = item.decomposition.factors[-1]
    layer = item.layer
    F = solver.out_channels
    # current effective weight [F, R] and bias [F] of the last factor
    if last.op_type == "Conv":
        current_w = factor.weight.reshape(F, -1).astype(np.float64)
    else:
        current_w = factor.weight.T.astype(np.float64) * float(factor.attributes.get("alpha", 1.0))
    bias_array = irutil.constant_array(layer.bias_value) if layer.bias_value is not None else None
    if layer.bias_value is not None and bias_array is None:
        return {"applied": False, "reason": "bias is not constant"}
    current_b = np.zeros(F)
    if bias_array is not None:
        beta = float(factor.attributes.get("beta", 1.0)) if last.op_type == "Gemm" else 1.0
        try:
            current_b = np.broadcast_to(bias_array.astype(np.float64) * beta, (F,)).copy()
        except ValueError:
            return {"applied": False, "reason": f"bias of shape {bias_array.shape} is not per output"}
    weight, bias = solver.solve()
    before = solver.relative_residual(current_w, current_b)
    after = solver.relative_residual(weight, bias)
    info = {"residual_before": round(before, 6), "residual_after": round(after, 6)}
    if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))) or not after < before:
        return {"applied": False, "reason": "the refit did not lower the output residual", **info}
    dtype = layer.dtype
    stem = factor_stem(layer, method, factor.role)
    old_weight = last.inputs[1]
    if last.op_type == "Conv":
        new_weight = weight.reshape(factor.weight.shape)
    else:
        new_weight = weight.T
        if last.op_type == "Gemm":
            last.attributes["alpha"] = ir.AttrFloat32("alpha", 1.0)
            last.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    last.replace_input_with(1, irutil.add_initializer(graph, f"{stem}.weight", new_weight.astype(dtype)))
    drop_if_unused(graph, old_weight)
    if solver.fit_bias:
        old_bias = last.inputs[2] if len(last.inputs) > 2 else None
        new_bias = irutil.add_initializer(graph, f"{stem}.bias", bias.astype(dtype))
        if old_bias is None:
            last.resize_inputs(3)
        last.replace_input_with(2, new_bias)
        if old_bias is not None:
            drop_if_unused(graph, old_bias)
    return {"applied": True, **info}


def explicit_pads(attributes: dict[str, Any], kernel: tuple[int, int], in_hw: tuple[int, int]) -> list[int]:
    """(top, left, bottom, right) pads of a factor conv, resolving ``auto_pad``."""
    auto_pad = attributes.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for axis in range(2):
            s, d = attributes["strides"][axis], attributes["dilations"][axis]
            out = -(-in_hw[axis] // s)
            total = max(0, (out - 1) * s + (kernel[axis] - 1) * d + 1 - in_hw[axis])
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
        return begin + end
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    return list(attributes.get("pads", [0, 0, 0, 0]))


def _add_side_branches(original, done: list[DecomposedLayer]) -> list[str]:
    """Copy every layer's factors but the last into ``original`` (a ModelProto), reading the
    original layer's input; returns the names of the branch outputs (the refit's Z)."""
    z_names = []
    taken = {t.name for t in original.graph.initializer} | {o for n in original.graph.node for o in n.output}
    for item in done:
        rename: dict[str, str] = {}
        for node in item.nodes[:-1]:
            proto = ir.serde.serialize_node(node)
            for i, name in enumerate(proto.input):
                proto.input[i] = rename.get(name, name)
            for value in node.inputs[1:]:
                if value is not None and value.const_value is not None and value.name not in taken:
                    tensor = ir.serde.serialize_tensor(value.const_value)
                    tensor.name = value.name
                    original.graph.initializer.append(tensor)
                    taken.add(value.name)
            out = proto.output[0]
            new = f"{out}/refit_branch"
            rename[out] = new
            proto.output[0] = new
            proto.name = f"{proto.name}/refit_branch"
            original.graph.node.append(proto)
        z_names.append(rename[item.nodes[-2].outputs[0].name])
    return z_names
