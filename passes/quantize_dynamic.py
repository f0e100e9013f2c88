"""``int8-dynamic``: dynamic INT8 quantization of MatMul/Gemm/LSTM/Attention weights (onnxruntime).

The weights ``W`` of the selected nodes are stored as int8, ``W ≈ scale_w · (Wq − zp_w)`` (per
output channel by default, or per tensor); activations are quantized *at run time* from
each tensor's own min/max (``DynamicQuantizeLinear``: uint8, ``x ≈ scale_x · (xq − zp_x)``),
and the products run in integer arithmetic (``MatMulInteger``/``DynamicQuantizeMatMul``,
``DynamicQuantizeLSTM``, ``QAttention``). No calibration data is needed.

onnxruntime's dynamic quantizer has no Gemm: a Gemm with a constant ``B`` is first rewritten
``MatMul(A, alpha·B[ᵀ]) + beta·C`` (exact), then quantized as a MatMul; it has no GRU either
(reported, left float). For models dominated by MatMul/LSTM/Attention; convolutional ones
want ``int8``: dynamic ``ConvInteger`` (no fusion, float re-scaling per node) is usually
slower than float on CPU, so Conv is not in the default ``op_types`` (warned when asked).
With uint8 activations and int8 weights the kernels are u8×s8: ``reduce_range=auto`` gives
7-bit weights where they saturate (:mod:`._reduce_range`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt.irutil import add_initializer, constant_array, replace_node
from onnxopt.passbase import OptimizerPass, option
from onnxopt.registry import register
from onnxopt.runtime import first_line

from . import _quant_common as qc
from ._reduce_range import choose_reduce_range

logger = logging.getLogger(__name__)

_MIN_OPSET = 13
#: What onnxruntime's dynamic (IntegerOps) quantizer handles.
_SUPPORTED = ("MatMul", "LSTM", "Attention", "Conv", "Gather", "EmbedLayerNormalization")
_INTEGER_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention", "ConvInteger",
                "MatMulIntegerToFloat")


@dataclass(frozen=True)
class QuantizeDynamicOptions:
    op_types: tuple[str, ...] = option(
        ("MatMul", "Gemm", "LSTM", "GRU", "Attention"),
        "op types to quantize (Conv is possible but ConvInteger is usually slow on CPU: use int8 for convolutions)")
    per_channel: bool = option(True, "quantize weights per output channel (per_channel=false: one scale per tensor)")
    weights: Literal["int8", "uint8"] = option("int8", "weight type (activations are always uint8)")
    exclude: tuple[str, ...] = option((), "node-name globs or op types to leave in float")
    reduce_range: bool | Literal["auto"] = option(
        "auto", "7-bit weights, so that u8xs8 kernels cannot saturate on x86 CPUs without VNNI; "
        "auto: where this CPU lacks VNNI and weights=int8 (activations are dynamic: every weight)")

    def __post_init__(self):
        if not self.op_types:
            raise ValueError("op_types must name at least one op type")


@register
class QuantizeDynamicPass(OptimizerPass, ir.passes.FunctionalPass):
    name = "int8-dynamic"
    aliases = ("quantize-dynamic",)
    summary = "dynamic INT8 quantization of MatMul/Gemm/LSTM/Attention weights (no data needed)"
    Options = QuantizeDynamicOptions
    providers = ("cpu",)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        unchanged = qc.unchanged(model)
        original, reason = qc.quantizable_proto(model, self.name)
        if original is None:
            self.report.skip_pass(reason)
            return unchanged

        opset = qc.opset_of(original)
        proto, error = qc.upgrade_opset(original, _MIN_OPSET)
        if error is not None and opset < 10:
            self.report.skip_pass(f"opset {opset} has no integer ops and conversion to opset {_MIN_OPSET} failed: {error}")
            return unchanged
        if error is None and opset < _MIN_OPSET:
            self.report.figures["opset"] = f"{opset} -> {_MIN_OPSET}"
        work = ir.from_proto(proto)
        qc.name_nodes(work)
        renamed = qc.rename_colliding(work)
        if renamed:
            self.report.figures["renamed_initializers"] = len(renamed)

        wanted = set(self.options.op_types)
        excluded: dict[str, str] = {}
        for node in work.graph:
            pattern = qc.exclusion(node, self.options.exclude)
            if pattern is not None:
                excluded[node.name] = pattern
        original_matmuls = {n.name for n in work.graph if n.op_type == "MatMul"}
        rewritten = self._rewrite_gemms(work, excluded) if "Gemm" in wanted else set()
        self._report_unsupported(work, wanted, excluded)

        op_types = sorted((wanted & set(_SUPPORTED)) | ({"MatMul"} if rewritten else set()))
        candidates = [n for n in work.graph if n.op_type in op_types and n.name not in excluded]
        if "MatMul" not in wanted:
            candidates = [n for n in candidates if not (n.op_type == "MatMul" and n.name in original_matmuls)]
        if not candidates:
            self.report.skip_pass(f"no {'/'.join(sorted(wanted))} nodes to quantize")
            return unchanged
        exclude_names = sorted(set(excluded) | (set(original_matmuls) if "MatMul" not in wanted else set()))
        if "Conv" in op_types:
            self.report.warn("dynamic quantization of convolutions (ConvInteger) is usually slower than float on "
                             "CPU; the int8 pass (static QDQ) is the fast path for Conv")

        prepared = ir.to_proto(work)
        qc.strip_initializer_value_info(prepared)
        qc.restore_model_fields(original, prepared)
        quantized = self._quantize(prepared, op_types, exclude_names)
        if quantized is None:
            return unchanged
        qc.restore_model_fields(original, quantized)
        self._report_result(quantized, excluded, rewritten)
        return ir.passes.PassResult(ir.from_proto(quantized), True)

    # ------------------------------------------------------------ Gemm -> MatMul + Add

    def _rewrite_gemms(self, model: ir.Model, excluded: dict[str, str]) -> set[str]:
        graph = model.graph
        rewritten = set()
        for node in list(graph):
            if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or node.name in excluded:
                continue
            name = node.name
            reason = self._try_rewrite_gemm(graph, node)
            if reason is None:
                rewritten.add(name)
            else:
                self.report.skip(node.name, reason, op="Gemm")
        return rewritten

    @staticmethod
    def _try_rewrite_gemm(graph: ir.Graph, node: ir.Node) -> str | None:
        def attr(name: str, default):
            a = node.attributes.get(name)
            return default if a is None else a.value

        if attr("transA", 0):
            return "Gemm with transA=1 is not rewritten to MatMul"
        b = constant_array(node.inputs[1])
        if b is None or b.ndim != 2 or b.dtype != np.float32:
            return "Gemm weight B is not a float32 constant"
        c_value = node.inputs[2] if len(node.inputs) > 2 else None
        beta = float(attr("beta", 1.0))
        c = constant_array(c_value) if c_value is not None else None
        if c_value is not None and c is None and beta != 1.0:
            return "Gemm bias C is computed and beta != 1"
        weight = float(attr("alpha", 1.0)) * (b.T if attr("transB", 0) else b)
        w_value = add_initializer(graph, f"{node.inputs[1].name}_matmul", np.ascontiguousarray(weight, dtype=np.float32))
        matmul = ir.node("MatMul", [node.inputs[0], w_value], name=node.name)
        new_nodes = [matmul]
        if c_value is not None:
            bias = add_initializer(graph, f"{c_value.name}_bias", (beta * c).astype(np.float32)) if c is not None else c_value
            new_nodes.append(ir.node("Add", [matmul.outputs[0], bias], name=f"{node.name}_bias"))
        node.name = f"{node.name}_gemm"
        replace_node(graph, node, new_nodes)
        return None

    def _report_unsupported(self, model: ir.Model, wanted: set[str], excluded: dict[str, str]) -> None:
        present = {n.op_type for n in model.graph}
        for node in model.graph:
            if node.name in excluded:
                self.report.skip(node.name, f"excluded by exclude={excluded[node.name]}", op=node.op_type)
            elif node.op_type == "GRU" and "GRU" in wanted:
                self.report.skip(node.name, "onnxruntime has no dynamically quantized GRU; left in float", op="GRU")
            elif node.op_type == "Conv" and "Conv" not in wanted:
                self.report.skip(node.name, "Conv is not in op_types: dynamic ConvInteger is usually slow on CPU "
                                 "(use the int8 pass for convolutions)", op="Conv")
        for op in sorted(wanted - set(_SUPPORTED) - {"Gemm", "GRU"}):
            if op in present:
                self.report.warn(f"onnxruntime's dynamic quantizer does not support {op}; those nodes stay float")

    # ------------------------------------------------------------ quantization

    def _quantize(self, prepared: onnx.ModelProto, op_types: list[str], exclude: list[str]) -> onnx.ModelProto | None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        weight_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[self.options.weights]
        reduce_range = choose_reduce_range(self.options.reduce_range, self.options.weights == "int8", self.report)
        with qc.scratch_dir("onnxopt-int8-dynamic-") as tmp:
            source, target = tmp / "model.onnx", tmp / "quantized.onnx"
            onnx.save_model(prepared, str(source))
            try:
                with qc.quiet("onnxruntime quantize_dynamic"), qc.contained(tmp):
                    quantize_dynamic(
                        source, target, op_types_to_quantize=op_types, per_channel=self.options.per_channel,
                        weight_type=weight_type, nodes_to_exclude=exclude, reduce_range=reduce_range,
                        extra_options={"MatMulConstBOnly": True},
                    )
                quantized = onnx.load(str(target))
            except Exception as exc:  # the quantizer fails in many ways on unusual graphs
                self.report.skip_pass(f"onnxruntime dynamic quantization failed: {first_line(exc)}")
                return None
        problem = qc.check_loads(quantized)
        if problem is not None:
            self.report.skip_pass(f"onnxruntime cannot load the quantized model: {problem}")
            return None
        return quantized

    def _report_result(self, quantized: onnx.ModelProto, excluded: dict[str, str], rewritten: set[str]) -> None:
        integer = [n for n in quantized.graph.node if n.op_type in _INTEGER_OPS]
        for node in integer:
            self.report.apply(node.name, op=node.op_type)
        self.report.figures["quantized_nodes"] = len(integer)
        self.report.figures["excluded_nodes"] = len(excluded)
        self.report.figures["gemm_rewritten"] = len(rewritten)
        self.report.figures["weights"] = self.options.weights + (" per-channel" if self.options.per_channel else " per-tensor")
