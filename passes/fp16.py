"""``fp16``: float32 → float16 conversion (onnxconverter-common), fixed up to load in onnxruntime.

float32 initializers, constants and activations become float16, except what stays float32
with Casts around it: blocked op types (the converter's defaults — Resize, Upsample, Range,
TopK, NonMaxSuppression, RoiAlign, CumSum, Min, Max, the ONNX-ML ops — plus ``block_ops=``)
and blocked nodes (``exclude=`` globs; nodes reading a constant beyond ±65504; Transposes
that move the batch axis into a MatMul, on which onnxruntime's CPU provider crashes in
float16; ``mixed=auto``'s choice, :mod:`._mixed_precision`). With ``keep_io_types`` (default)
the model's inputs and outputs stay float32. The converter's faults are repaired
(:mod:`._fp16_convert`); a node onnxruntime still rejects goes back to float32 and the
conversion is redone (a few rounds). The last check runs one random sample with onnxruntime's
default optimizations in a child process (:mod:`onnxopt.runtime.isolation`): a run error
naming a node keeps that node float32; a crash that names none skips the pass.
FP16 is for GPUs: onnxruntime's CPU provider has float16 kernels for few ops (the pass warns).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt.errors import InputError, OnnxoptError, UsageError
from onnxopt.irutil import PROTOBUF_LIMIT, constant_array
from onnxopt.passbase import OptimizerPass, option
from onnxopt.registry import register
from onnxopt.runtime import first_line, isolation
from onnxopt.runtime.ir_version import runnable_bytes

from . import _mixed_precision
from . import _quant_common as qc
from ._fp16_convert import FP16_MAX, Float16Converter

logger = logging.getLogger(__name__)

_MAX_REPAIR_ROUNDS = 8
_FLOAT = ir.DataType.FLOAT
_FLOAT16 = ir.DataType.FLOAT16
_NODE_IN_ERROR = re.compile(r"[Nn]ode \(([^)]+)\)|node_name:\s*(\S+)|in node '([^']+)'|node\. Name:\s*'([^']+)'")
_CRASHING_TRANSPOSE = (
    "onnxruntime 1.31's CPU provider crashes (SIGSEGV) creating a session where a float16 "
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
        converter = Float16Converter(frozenset(default_block_ops()) | frozenset(self.options.block_ops),
                                     self.options.keep_io_types)
        kept = _out_of_range(named)  # node name -> why it stays float32 (a report entry)
        for name, entry in self._block_crashing_transposes(named).items():
            kept.setdefault(name, entry)
        for node in named.graph:
            pattern = qc.exclusion(node, self.options.exclude)
            if pattern is not None and node.name not in kept:
                kept[node.name] = {"reason": f"excluded by exclude={pattern}", "op": node.op_type}

        if self.options.mixed == "auto":
            feeds = _mixed_precision.measurement_feeds(self.context, base, self.options.samples, self.report)
            provider = "cuda" if "cuda" in self.context.providers else "cpu"
            kept.update(_mixed_precision.keep_float32(
                base, converter, kept, feeds, provider, self.options.min_cosine,
                lambda attempts: self.context.progress("fp16 mixed precision", attempts, 0), self.report))
        converted = self._convert_until_it_loads(base, converter, kept)
        if converted is None:
            return unchanged
        qc.restore_model_fields(original, converted)
        self._report(named, converted, converter, kept)
        return ir.passes.PassResult(ir.from_proto(converted), True)

    # ------------------------------------------------------------ what stays float32

    def _block_crashing_transposes(self, model: ir.Model) -> dict[str, dict]:
        """Transposes that move the batch axis into a MatMul: onnxruntime crashes on them in float16.

        A float16 ``Transpose`` whose perm is ``[1, …, r-2, 0, r-1]`` or ``[1, …, r-1, 0]``
        (rank r ≥ 3) feeding a ``MatMul``, directly or through a Cast, kills onnxruntime 1.31's
        CPU provider with SIGSEGV while the session is created, whichever side of the MatMul
        it feeds and whether the MatMul is float16 or float32 (MatmulTransposeFusion's
        "transBatch" case; ``tests/quant/test_fp16.py`` probes it). The Transpose stays
        float32; the MatMul converts.
        """
        found = {}
        for node in model.graph:
            if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
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
                found[node.name] = {"reason": _CRASHING_TRANSPOSE, "op": node.op_type}
        return found

    # ------------------------------------------------------------ conversion

    def _convert_until_it_loads(self, base: onnx.ModelProto, converter: Float16Converter,
                                kept: dict[str, dict]) -> onnx.ModelProto | None:
        """The converted model, or None (the pass skipped); a node onnxruntime rejects or
        cannot run in float16 is added to ``kept`` and the conversion redone."""
        for _ in range(_MAX_REPAIR_ROUNDS):
            try:
                converted = converter.convert(base, frozenset(kept))
            except OnnxoptError:
                raise
            except Exception as exc:  # the converter fails in many ways on unusual graphs
                self.report.skip_pass(f"float16 conversion failed: {first_line(exc)}")
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
            if culprit is None or culprit in kept:
                self.report.skip_pass(f"onnxruntime cannot {'load' if verb == 'rejected' else 'run'} "
                                      f"the float16 model: {problem}")
                return None
            op = next(n.op_type for n in base.graph.node if n.name == culprit)
            kept[culprit] = {"reason": f"onnxruntime {verb} it in float16: {problem}", "op": op}
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
            feeds = next(iter(qc.random_samples(self.context, base, 1)))
        except (InputError, UsageError):  # an input random data cannot fill (a dtype, no shape): load only
            feeds = None
        try:
            result = isolation.run_isolated(runnable_bytes(converted), feeds)
            if result.ok:
                return None
            if feeds is not None and result.stage == "run" and not result.crashed:
                if not isolation.run_isolated(runnable_bytes(base), feeds).ok:
                    result = isolation.run_isolated(runnable_bytes(converted), None)
                    return None if result.ok else result
        except isolation.IsolationUnavailable as exc:
            self.report.warn(f"the float16 model was not run in a child process: {exc}")
            return None
        return result

    # ------------------------------------------------------------ report

    def _report(self, named: ir.Model, converted: onnx.ModelProto, converter: Float16Converter,
                kept: dict[str, dict]) -> None:
        fp32 = 0
        for node in named.graph:
            if node.op_type == "Constant":
                continue
            if node.name in kept:
                self.report.skip(node.name, **kept[node.name])
                fp32 += 1
            elif node.op_type in converter.op_block:
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
                             "float16 kernels (0.7-1.0x on four CNNs on an AVX-512 VNNI CPU, README "
                             "'Quantization'); FP16 is meant for GPUs")


def _out_of_range(model: ir.Model) -> dict[str, dict]:
    """Nodes reading a float32 constant beyond the float16 range: they stay float32."""
    found = {}
    for node in model.graph:
        for value in node.inputs:
            array = constant_array(value)
            if array is None or array.dtype != np.float32 or array.size == 0:
                continue
            finite = np.abs(array[np.isfinite(array)])
            if finite.size and float(finite.max()) > FP16_MAX:
                found[node.name] = {
                    "reason": f"constant '{value.name}' exceeds the float16 range (max |x| = {float(finite.max()):.4g})",
                    "op": node.op_type,
                }
                break
    return found


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


def _node_in_error(message: str, names: set[str]) -> str | None:
    for match in _NODE_IN_ERROR.finditer(message):
        name = next(g for g in match.groups() if g)
        if name in names:
            return name
    return None
