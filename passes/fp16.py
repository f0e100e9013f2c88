"""``fp16``: float32 → float16 conversion (onnxconverter-common), fixed up to load in onnxruntime.

Transformation: float32 initializers, constants and activations become float16; nodes of
blocked op types (the converter's defaults — Resize, Upsample, Range, TopK,
NonMaxSuppression, RoiAlign, CumSum, Min, Max and the ONNX-ML ops — plus ``block_ops=``)
and blocked nodes (``exclude=`` globs, nodes reading a constant beyond the float16
range ±65504, Transposes that move the batch axis into a MatMul — onnxruntime crashes on
them in float16, below — and ``mixed=auto``'s choice) keep float32 with Casts around them. With
``keep_io_types`` (default) the model's inputs and outputs stay float32 and Casts sit at
the boundary, so callers do not change.

The converter (onnxconverter-common 1.16) gets several things wrong; each is repaired
after conversion and the result must load in onnxruntime:

* a ``Cast(to=float)`` in the converted region keeps ``to=float`` while its output is
  retyped float16 (onnxconverter-common issue 320): ``to`` becomes float16;
* inputs that must stay float32 (Resize ``scales``) or that share a type variable with
  float16 inputs (an initializer shared by a blocked and a converted node: "Type
  parameter (T) bound to different types") get a float32/float16 copy or a Cast, using
  each op's schema;
* cascaded Casts the conversion creates (``Cast(fp32→fp16) → Cast(fp16→fp32)``, onnxruntime
  issue 20346: since 1.17 onnxruntime keeps such down-casts) are collapsed — to nothing
  when they round-trip, which is exactly the float32 original — and duplicate Casts of
  one tensor are merged;
* unnamed nodes get unique names first (the converter names its Casts after the node:
  two unnamed nodes gave "Duplicate definition of name");
* constants are converted with the float16 maximum 65504 instead of the converter's
  default clamp at 1e4, and nodes reading a constant beyond it stay float32;
* if onnxruntime still rejects a node, that node is kept in float32 and the conversion
  redone (at most a few rounds; the report names each node and the error). The last
  check loads the result and runs one random sample through it with onnxruntime's
  default optimizations *in a child process* (:mod:`onnxopt.runtime.isolation`): a run-time error
  naming a node keeps that node float32; a crash that names nothing skips the pass.

What onnxruntime cannot run in float16 was measured, not guessed (onnxruntime 1.31, CPU;
``tests/quant/fp16_probes.py`` builds each op as a one-node float16 model, run in a child
process by ``tests/quant/test_fp16.py``): NonMaxSuppression and Range have no float16
form (both on the converter's block list, which keeps more: a superset), and a float16
Transpose moving the batch axis into a MatMul kills the process with SIGSEGV while the
session is created (MatmulTransposeFusion; EasyOCR's recognizer has two, after its
BiLSTMs — the crash that was first blamed on its float16 LSTM). LSTM, GRU, RNN, Resize
(cubic included), Einsum, TopK, RoiAlign, InstanceNormalization, ConvTranspose, CumSum
and GridSample all run in float16.

``mixed=auto`` measures instead of guessing: it runs the float32 model and candidate
conversions on the calibration data (``PassContext.calibration``; seeded random inputs,
with a warning, when there is none) on the provider the run validates on (CUDA where it
loads, else CPU) and keeps in float32 the fewest nodes that bring every output within
``min_cosine`` (worst-sample cosine similarity, the validation gate's FP16 tolerance of
0.999). The search is onnxconverter-common's ``auto_convert_mixed_precision`` bisection:
convert a segment of nodes (plus those already accepted); if the outputs stay within
tolerance accept it, else split it, down to single nodes that are then kept in float32,
each reported with the cosine measured when it ran in float16. The samples used for the
search (``samples=``, 16 by default) are held in memory, as every attempt reruns them.

On CPU FP16 is usually slower, not faster: onnxruntime's CPU provider has float16 kernels
for few ops and wraps the rest in Casts, computing in float32 (measured here, CPU time at
batch 1: 0.9× on a 4×(128→128 3×3) conv stack, 0.72× MobileNetV2, 0.71×
EfficientNet-Lite0, 1.0× ResNet-56 and ResNet-50; output cosine ≥ 0.99985 on all four).
The pass warns when the run does not include CUDA. A consequence for ``mixed=auto`` on
CPU: onnxruntime drops the Cast pairs between ops it runs in float32, so an overflow that
would happen on a real float16 device may not show; measure on CUDA where it loads.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt.errors import InputError, OnnxoptError
from onnxopt.irutil import PROTOBUF_LIMIT, constant_array, unique_name
from onnxopt.passbase import OptimizerPass, option
from onnxopt.registry import register
from onnxopt.runtime import isolation

from . import _quant_common as qc

logger = logging.getLogger(__name__)

_FP16_MAX = 65504.0
_MIN_POSITIVE = 1e-7
_MAX_REPAIR_ROUNDS = 8
_FLOAT = ir.DataType.FLOAT
_FLOAT16 = ir.DataType.FLOAT16
_NODE_IN_ERROR = re.compile(r"[Nn]ode \(([^)]+)\)|node_name:\s*(\S+)|in node '([^']+)'|node\. Name:\s*'([^']+)'")
_CRASHING_TRANSPOSE = (
    "onnxruntime's CPU provider crashes (SIGSEGV, measured with 1.31) creating a session where a float16 "
    "Transpose moving the batch axis feeds a MatMul (MatmulTransposeFusion)")


def default_block_ops() -> tuple[str, ...]:
    """The converter's default op block list (imported lazily: onnxconverter_common is heavy)."""
    from onnxconverter_common import float16

    return tuple(float16.DEFAULT_OP_BLOCK_LIST)


@dataclass(frozen=True)
class ConvertFloat16Options:
    keep_io_types: bool = option(True, "keep float32 model inputs and outputs (Casts at the boundary)")
    block_ops: tuple[str, ...] = option(
        (), "op types to keep in float32, in addition to the converter's defaults (Resize, Range, TopK, ...)")
    exclude: tuple[str, ...] = option((), "node-name globs to keep in float32")
    mixed: Literal["off", "auto"] = option(
        "off", "auto: keep in float32 the fewest nodes that keep outputs within min_cosine on the data")
    min_cosine: float = option(0.999, "mixed=auto: worst-sample cosine similarity every output must reach")
    samples: int = option(16, "mixed=auto: samples to measure on (held in memory)")

    def __post_init__(self):
        if not 0.0 < self.min_cosine <= 1.0:
            raise ValueError("min_cosine must be in (0, 1]")
        if self.samples < 1:
            raise ValueError("samples must be at least 1")


@register
class ConvertFloat16Pass(OptimizerPass, ir.passes.FunctionalPass):
    name = "fp16"
    aliases = ("float16",)
    summary = "float16 weights and activations (for CUDA); mixed=auto keeps sensitive nodes in float32"
    Options = ConvertFloat16Options
    providers = ("cuda",)
    optional_data = True  # mixed=auto measures on calibration data when given

    @classmethod
    def uses_data(cls, options: ConvertFloat16Options) -> bool:
        return options.mixed == "auto"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        unchanged = qc.unchanged(model)
        found = qc.quantized_ops(model)
        if found:
            self.report.skip_pass(f"the model is quantized ({', '.join(found)} present)")
            return unchanged
        if qc.count_float_values(model, _FLOAT16):
            self.report.skip_pass("the model already has float16 tensors (converted before?)")
            return unchanged
        if qc.count_float_values(model, _FLOAT) == 0:
            self.report.skip_pass("the model has no float32 tensors to convert")
            return unchanged
        original = ir.to_proto(model)
        if original.ByteSize() > PROTOBUF_LIMIT:
            self.report.skip_pass("models over 2 GB are not supported by the fp16 pass")
            return unchanged

        named = ir.from_proto(original)
        qc.name_nodes(named)
        base = ir.to_proto(named)
        self._op_block = frozenset(default_block_ops()) | frozenset(self.options.block_ops)
        # node name -> reason it stays float32
        self._kept: dict[str, dict] = {}
        self._block_out_of_range(named)
        self._block_crashing_transposes(named)
        for node in named.graph:
            pattern = qc.exclusion(node, self.options.exclude)
            if pattern is not None and node.name not in self._kept:
                self._kept[node.name] = {"reason": f"excluded by exclude={pattern}", "op": node.op_type}

        if self.options.mixed == "auto":
            if not self._mixed_precision(base):
                return unchanged
        converted = self._convert_until_it_loads(base)
        if converted is None:
            return unchanged
        qc.restore_model_fields(original, converted)
        self._report(named, converted)
        return ir.passes.PassResult(ir.from_proto(converted), True)

    # ------------------------------------------------------------ what stays float32

    def _block_out_of_range(self, model: ir.Model) -> None:
        for node in model.graph:
            for value in node.inputs:
                array = constant_array(value)
                if array is None or array.dtype != np.float32 or array.size == 0:
                    continue
                finite = np.abs(array[np.isfinite(array)])
                if finite.size and float(finite.max()) > _FP16_MAX:
                    self._kept[node.name] = {
                        "reason": f"constant '{value.name}' exceeds the float16 range (max |x| = {float(finite.max()):.4g})",
                        "op": node.op_type,
                    }
                    break

    def _block_crashing_transposes(self, model: ir.Model) -> None:
        """Transposes that move the batch axis into a MatMul: onnxruntime crashes on them in float16.

        Measured (``tests/quant/test_fp16.py`` probes, onnxruntime 1.31 CPU): a float16
        ``Transpose`` whose perm is ``[1, …, r-2, 0, r-1]`` or ``[1, …, r-1, 0]`` (rank r ≥ 3)
        feeding a ``MatMul`` — directly or through a Cast — kills the process with SIGSEGV
        while the session is created, whichever side of the MatMul it feeds and whether the
        MatMul itself is float16 or float32 (MatmulTransposeFusion's "transBatch" case).
        EasyOCR's recognizer has two (``[1, 0, 2]`` after each BiLSTM). The Transpose stays
        float32; the MatMul converts.
        """
        for node in model.graph:
            if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or node.name in self._kept:
                continue
            perm = node.attributes.get("perm")
            perm = list(perm.as_ints()) if perm is not None else None
            if perm is None or len(perm) < 3:
                continue
            rank = len(perm)
            middle = list(range(1, rank - 1))
            if perm not in (middle + [0, rank - 1], middle + [rank - 1, 0]):
                continue
            if _feeds_matmul(node.outputs[0]):
                self._kept[node.name] = {"reason": _CRASHING_TRANSPOSE, "op": node.op_type}

    def _is_blocked(self, node: ir.Node | onnx.NodeProto, extra: frozenset[str] = frozenset()) -> bool:
        return node.op_type in self._op_block or node.name in self._kept or node.name in extra

    # ------------------------------------------------------------ conversion

    def _convert_until_it_loads(self, base: onnx.ModelProto) -> onnx.ModelProto | None:
        for _ in range(_MAX_REPAIR_ROUNDS):
            try:
                converted = self._convert(base, frozenset(self._kept))
            except OnnxoptError:
                raise
            except Exception as exc:  # the converter fails in many ways on unusual graphs
                self.report.skip_pass(f"float16 conversion failed: {qc.first_line(exc)}")
                return None
            problem = qc.check_loads(converted)
            verb = "rejected"
            if problem is None:
                isolated = self._run_isolated(base, converted)
                if isolated is None:
                    return converted
                if isolated.crashed:  # no node named: nothing to repair
                    self.report.skip_pass(f"{isolated.describe('the float16 model')}: kept float32")
                    return None
                problem, verb = isolated.error, "cannot run"
            culprit = _node_in_error(problem, {n.name for n in base.graph.node})
            if culprit is None or culprit in self._kept:
                self.report.skip_pass(f"onnxruntime cannot {'load' if verb == 'rejected' else 'run'} "
                                      f"the float16 model: {problem}")
                return None
            op = next(n.op_type for n in base.graph.node if n.name == culprit)
            self._kept[culprit] = {"reason": f"onnxruntime {verb} it in float16: {problem}", "op": op}
        self.report.skip_pass("onnxruntime kept rejecting the float16 model after keeping nodes in float32")
        return None

    def _run_isolated(self, base: onnx.ModelProto, converted: onnx.ModelProto) -> isolation.IsolatedRun | None:
        """None when the converted model loads and runs one random sample with onnxruntime's
        default optimizations — in a child process, as a crash there would kill this one
        (:func:`qc.check_loads` runs in-process with optimizations off) — else what happened.

        A run error that the float32 model shows on the same random sample too is not the
        conversion's: only the load counts then.
        """
        try:
            feeds = next(iter(qc.random_samples(self.context, qc.input_specs(base), 1)))
        except InputError:  # an input type random data cannot fill: load only
            feeds = None
        try:
            result = isolation.run_isolated(_serialized(converted), feeds)
            if result.ok:
                return None
            if feeds is not None and result.stage == "run" and not result.crashed:
                if not isolation.run_isolated(_serialized(base), feeds).ok:
                    result = isolation.run_isolated(_serialized(converted), None)
                    return None if result.ok else result
        except isolation.IsolationUnavailable as exc:
            self.report.warn(f"the float16 model was not run in a child process: {exc}")
            return None
        return result

    def _convert(self, base: onnx.ModelProto, node_block: frozenset[str]) -> onnx.ModelProto:
        from onnxconverter_common import float16

        proto = copy.deepcopy(base)
        qc.strip_initializer_value_info(proto)
        original_casts = {n.name for n in base.graph.node if n.op_type == "Cast"}
        node_block = node_block | _constants_feeding_only(proto, lambda n: self._is_blocked(n, node_block))
        with qc.quiet("float16 converter"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = float16.convert_float_to_float16(
                proto,
                min_positive_val=_MIN_POSITIVE,
                max_finite_val=_FP16_MAX,
                keep_io_types=self.options.keep_io_types,
                op_block_list=sorted(self._op_block),
                node_block_list=sorted(node_block),
                check_fp16_ready=False,
            )
        model = ir.from_proto(converted)
        blocked = {n.name for n in model.graph if self._is_blocked(n, node_block)}
        if self.options.keep_io_types:
            float_outputs = [o.name for o in base.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
            _restore_float_outputs(model, set(float_outputs))
        self._fix_cast_targets(model, blocked, original_casts)
        self._unify_input_types(model, blocked)
        self._collapse_casts(model, original_casts)
        _dedupe_casts(model)
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        RemoveUnusedNodesPass()(model)
        result = ir.to_proto(model)
        result.ir_version = max(result.ir_version, base.ir_version)
        return result

    @staticmethod
    def _fix_cast_targets(model: ir.Model, blocked: set[str], original_casts: set[str]) -> None:
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

    def _unify_input_types(self, model: ir.Model, blocked: set[str]) -> None:
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
                        self._retype_input(graph, node, index, value, _FLOAT)
                    continue
                groups.setdefault(formal.type_str, []).append((index, value, dtype))
            allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
            for type_var, members in groups.items():
                if len({dtype for _, _, dtype in members}) < 2:
                    continue
                wanted = target if "tensor(float16)" in allowed.get(type_var, {"tensor(float16)"}) else _FLOAT
                for index, value, dtype in members:
                    if dtype != wanted:
                        self._retype_input(graph, node, index, value, wanted)

    @staticmethod
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

    @staticmethod
    def _collapse_casts(model: ir.Model, original_casts: set[str]) -> None:
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

    # ------------------------------------------------------------ mixed precision

    def _mixed_precision(self, base: onnx.ModelProto) -> bool:
        """Bisect for the nodes to keep in float32; False if the pass was skipped."""
        feeds = self._measurement_feeds(base)
        if feeds is None:
            return False
        provider = "cuda" if "cuda" in self.context.providers else "cpu"
        reference = _run(base, feeds, provider, fp16_inputs=False)
        candidates = [n.name for n in base.graph.node
                      if n.op_type not in ("Constant", "Cast") and not self._is_blocked(n)]
        self.report.figures["mixed_provider"] = provider
        self.report.figures["mixed_samples"] = len(feeds)
        attempts = 0
        scores: dict[frozenset[str], float] = {}

        def score(block: frozenset[str]) -> float:
            nonlocal attempts
            block = block | frozenset(self._kept)
            if block in scores:
                return scores[block]
            attempts += 1
            self.context.progress("fp16 mixed precision", attempts, 0)
            scores[block] = -1.0
            try:
                converted = self._convert(base, block)
            except OnnxoptError:
                raise
            except Exception as exc:  # a failed conversion counts as "not within tolerance"
                logger.debug("mixed precision attempt failed to convert: %s", exc)
                return -1.0
            if qc.check_loads(converted) is not None:
                return -1.0
            outputs = _run(converted, feeds, provider, fp16_inputs=not self.options.keep_io_types)
            scores[block] = _worst_cosine(reference, outputs)
            return scores[block]

        # Segments as in onnxconverter-common's auto_convert_mixed_precision: a list of
        # [start, size, state] over the candidates; state None (untested), True (float16
        # accepted) or False (kept in float32).
        segments: list[list] = [[0, len(candidates), None]] if candidates else []
        measured: dict[str, float] = {}
        while True:
            open_segments = [s for s in segments if s[2] is None]
            if not open_segments:
                break
            segment = max(open_segments, key=lambda s: s[1])
            trying = set(candidates[segment[0] : segment[0] + segment[1]])
            accepted = {c for s in segments if s[2] is True for c in candidates[s[0] : s[0] + s[1]]}
            block = frozenset(set(candidates) - accepted - trying)
            cosine = score(block)
            if cosine >= self.options.min_cosine:
                segment[2] = True
            elif segment[1] == 1:
                segment[2] = False
                measured[candidates[segment[0]]] = cosine
            else:
                half = segment[1] // 2
                at = segments.index(segment)
                segments[at : at + 1] = [[segment[0], half, None], [segment[0] + half, segment[1] - half, None]]
        for name, cosine in measured.items():
            shown = "does not convert or load" if cosine < 0 else f"worst cosine {cosine:.5f}"
            self._kept[name] = {
                "reason": f"mixed=auto: in float16 the outputs reach {shown} < {self.options.min_cosine}",
                "op": next(n.op_type for n in base.graph.node if n.name == name),
                "cosine": round(cosine, 6),
            }
        self.report.figures["mixed_attempts"] = attempts
        final = score(frozenset())
        self.report.figures["worst_cosine"] = round(final, 6)
        if final < self.options.min_cosine:
            self.report.warn(f"mixed=auto: worst cosine {final:.5f} stays below {self.options.min_cosine} "
                             "even with the failing nodes in float32")
        return True

    def _measurement_feeds(self, base: onnx.ModelProto) -> list[qc.Feeds] | None:
        specs = qc.input_specs(base)
        limit = self.options.samples
        if self.context.calibration is None:
            self.report.warn("mixed=auto: no calibration data (--data); measured on seeded random inputs, "
                             "which may not show the errors real inputs cause")
            return list(qc.iter_samples(qc.random_samples(self.context, specs, limit), specs, "random data", limit))
        origin = self.context.calibration_description or "calibration data"
        feeds = list(qc.iter_samples(self.context.calibration(), specs, origin, limit))
        if not feeds:
            raise InputError(f"{origin} is empty: no samples to measure float16 error on")
        return feeds

    # ------------------------------------------------------------ report

    def _report(self, named: ir.Model, converted: onnx.ModelProto) -> None:
        fp32 = 0
        for node in named.graph:
            if node.op_type == "Constant":
                continue
            if node.name in self._kept:
                self.report.skip(node.name, **self._kept[node.name])
                fp32 += 1
            elif node.op_type in self._op_block:
                self.report.skip(node.name, f"op type {node.op_type} is kept in float32 (block list)", op=node.op_type)
                fp32 += 1
            else:
                self.report.apply(node.name, op=node.op_type)
        casts_before = sum(1 for n in named.graph if n.op_type == "Cast")
        self.report.figures["nodes_fp16"] = len(self.report.applied)
        self.report.figures["nodes_fp32"] = fp32
        self.report.figures["casts_added"] = sum(1 for n in converted.graph.node if n.op_type == "Cast") - casts_before
        if "cuda" not in self.context.providers:
            self.report.warn("FP16 usually runs slower than FP32 on CPU: onnxruntime's CPU provider has few "
                             "float16 kernels (0.7-1.0x on four CNNs, README 'Quantization'); FP16 is meant for GPUs")


# ---------------------------------------------------------------- helpers


def _unique_value_name(graph: ir.Graph, base: str) -> str:
    return unique_name(graph, base)


def _unique_node_name(graph: ir.Graph, base: str) -> str:
    names = {n.name for n in graph}
    name, k = base, 0
    while name in names:
        k += 1
        name = f"{base}_{k}"
    return name


def _feeds_matmul(value: ir.Value) -> bool:
    """Whether ``value`` is read by a MatMul, directly or through Casts."""
    for user, _ in value.uses():
        if user.domain not in ("", "ai.onnx"):
            continue
        if user.op_type == "MatMul":
            return True
        if user.op_type == "Cast" and _feeds_matmul(user.outputs[0]):
            return True
    return False


def _serialized(proto: onnx.ModelProto) -> bytes:
    from onnxopt.io import runnable_bytes as serialize

    return serialize(proto)


def _node_in_error(message: str, names: set[str]) -> str | None:
    for match in _NODE_IN_ERROR.finditer(message):
        name = next(g for g in match.groups() if g)
        if name in names:
            return name
    return None


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


def _constants_feeding_only(proto: onnx.ModelProto, blocked) -> frozenset[str]:
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


def _restore_float_outputs(model: ir.Model, names: set[str]) -> None:
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


def _dedupe_casts(model: ir.Model) -> None:
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


def _session(proto: onnx.ModelProto, provider: str):
    import onnxruntime as ort

    from onnxopt.io import runnable_bytes

    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(runnable_bytes(proto), options, providers=providers)


def _run(proto: onnx.ModelProto, feeds: list[qc.Feeds], provider: str, fp16_inputs: bool) -> list[list[np.ndarray]]:
    session = _session(proto, provider)
    wanted = {i.name: i.type for i in session.get_inputs()}
    results = []
    for sample in feeds:
        if fp16_inputs:
            sample = {k: v.astype(np.float16) if v.dtype == np.float32 and wanted.get(k) == "tensor(float16)" else v
                      for k, v in sample.items()}
        results.append(session.run(None, sample))
    return results


def _worst_cosine(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """Worst cosine similarity over samples and outputs (1 for two zero outputs, 0 for one)."""
    worst = 1.0
    for ref_outputs, cand_outputs in zip(reference, candidate):
        for a, b in zip(ref_outputs, cand_outputs):
            a = np.asarray(a, dtype=np.float64).ravel()
            b = np.asarray(b, dtype=np.float64).ravel()
            if a.shape != b.shape:
                return 0.0
            finite = np.isfinite(a)
            if not np.array_equal(finite, np.isfinite(b)):
                return 0.0
            a, b = a[finite], b[finite]
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            if na == 0 and nb == 0:
                cosine = 1.0
            elif na == 0 or nb == 0:
                cosine = 0.0
            else:
                cosine = float(np.dot(a, b) / (na * nb))
            worst = min(worst, cosine)
    return worst
