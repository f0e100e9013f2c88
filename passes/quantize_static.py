"""``int8``: static INT8 quantization in QDQ format, calibrated on data (onnxruntime.quantization).

Every quantizable tensor ``x`` (activations and weights of the op types ``ops=`` selects,
:mod:`._int8_scope`) becomes ``DequantizeLinear(QuantizeLinear(x))``,
``x ≈ scale·(q − zero_point)``; onnxruntime fuses each ``DQ → op → Q`` into an integer
kernel, and a ``DQ → MatMul`` whose output no quantized op reads into MatMulIntegerToFloat
(a MatMul's output is quantized only where a quantized op reads it: a Q → DQ pair before a
float op only adds rounding). Weights get symmetric scales, per output channel by default;
activation ranges come from calibration on ``--data``, streamed (:mod:`._calibration`);
token data is calibrated without its trailing padding (``qc.RealTokens``).

Steps: prepare (unique node names; opset ≥ 13, which per-channel ``DequantizeLinear`` needs;
initializer names that cannot collide with the quantizer's ``<tensor>_scale``); onnxruntime's
``quant_pre_process`` (retried without symbolic shape inference, then left out); the op types
(:mod:`._int8_scope`); calibration; the nodes that stay float (``exclude=``, a MatMul of two
activations under ``ops=linear``, the attention mask's path, sentinel tensors, a Concat of
unlike ranges and what carries its output on); the
reduce-range policy (:mod:`._reduce_range`); QDQ quantization, falling back per layer from
per-channel to per-tensor (Gemm/MatMul first, then every weight), checked to load and run a
sample; bias correction (:mod:`._bias_correction`); float graph outputs
(:mod:`._float_outputs`); the check against plain ``quantize_static`` (:mod:`._library_check`);
``keep_float=N``, the measured float fallback (:mod:`._float_fallback`);
the input's value_info only (``qc.keep_value_info_of``). Every file onnxruntime writes lands
in a private folder, its working directory meanwhile.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
import onnx_ir as ir

from onnxopt.errors import InputError, OnnxoptError
from onnxopt.passbase import OptimizerPass, option
from onnxopt.registry import register
from onnxopt.runtime import first_line
from onnxopt.runtime.ir_version import clamp_ir_version

from . import _int8_scope as scope
from . import _quant_common as qc
from ._calibration import Calibration, calibrate, op_types_to_quantize
from ._float_fallback import keep_sensitive_float
from ._float_outputs import float_outputs, float_readers
from ._library_check import library_check
from ._output_similarity import FloatReference
from ._reduce_range import WEIGHT_OPS, choose_reduce_range, float_stems, weights_kept_at_8_bits

logger = logging.getLogger(__name__)

#: Per-channel ``DequantizeLinear`` (the ``axis`` attribute) needs opset 13.
_MIN_OPSET = 13
_PER_TENSOR_FIRST = ("Gemm", "MatMul")  # per-channel falls back on these op types first
#: keep_float scores its candidates on this many calibration samples ...
FALLBACK_SAMPLES = 32
#: ... or on fewer where scoring them all would take longer than this (large models)
FALLBACK_SECONDS = 120.0


@dataclass(frozen=True)
class QuantizeStaticOptions:
    per_channel: bool = option(True, "quantize weights per output channel (falls back to per-tensor per layer where it fails)")
    method: Literal["minmax", "entropy", "percentile"] = option(
        "percentile", "activation range calibration: minmax, entropy (KL, 2048 bins) or percentile")
    percentile: float = option(99.995, "for method=percentile: share of |x| (in %) the range must cover")
    samples: int = option(100, "calibrate on the first N samples of the data")
    exclude: tuple[str, ...] = option((), "node-name globs or op types to leave in float, e.g. conv1*|Gemm")
    ops: Literal["auto", "all", "linear"] = option(
        "auto", "op types to quantize: all (every op type onnxruntime's quantizer knows), linear (MatMul, Gemm, "
        "Conv with a stored weight, and Softmax; a MatMul of two activations stays float), auto: linear for "
        "graphs with attention (a Softmax computed from a MatMul of two activations), else all")
    trim_padding: bool = option(
        True, "calibrate token data on its real tokens: cut each sample after the last position its attention "
        "mask marks (needs a dynamic sequence dimension; padded positions would set the ranges otherwise)")
    activations: Literal["uint8", "int8"] = option(
        "uint8", "activation type: uint8 is the fast path on x86 (int8 activations ran ResNet-56 at 0.68x of FP32 "
        "on an AVX-512 VNNI and an AVX2 CPU)")
    weights: Literal["int8", "uint8"] = option("int8", "weight type")
    reduce_range: bool | Literal["auto"] = option(
        "auto", "true: 7-bit weights (image stems float) where u8xs8 products can saturate, as x86 CPUs "
        "without VNNI need; false: 8 bits everywhere; auto: true on such a CPU")
    calib: Literal["data", "random"] = option(
        "data", "calibration source: data (--data) or random (seeded noise; only for testing speed)")
    preprocess: bool = option(True, "run onnxruntime's quant_pre_process (shape inference, graph optimization) first")
    bias_correction: bool = option(
        True, "remove the output-mean shift that rounding the weights causes (measured on the calibration data)")
    library_check: bool = option(
        True, "compare the result with plain onnxruntime quantize_static (per-channel MinMax) on a few calibration "
        "samples and keep the better model (the same op types, see ops)")
    keep_float: int = option(
        0, "leave in float up to N activations whose 8-bit rounding costs most at the outputs, measured one by one "
        "on calibration samples (32, fewer where that would take over 2 minutes) and kept only where they help; "
        "their readers (and a Conv producing them) then run in float (the report names them, with their share of "
        "the MACs)")

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
        if self.keep_float < 0:
            raise ValueError("keep_float must be at least 0")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError("percentile must be in (0, 100]")
        if self.activations == "int8" and self.weights == "uint8":
            raise ValueError("activations=int8 with weights=uint8 is not supported by onnxruntime; use weights=int8")


_CUDA_WARNING = ("INT8 is a CPU optimization: onnxruntime's CUDA provider runs a QDQ model's per-channel "
                 "DequantizeLinear nodes on the CPU, so it can run slower than FP32 there (see the README, "
                 "'On a GPU'); for a GPU target use fp16, and measure with `onnxopt bench --providers cuda`")


@register
class QuantizeStaticPass(OptimizerPass, ir.passes.FunctionalPass):
    name = "int8"
    aliases = ("quantize-static",)
    summary = "static INT8 quantization (QDQ), calibrated on data"
    Options = QuantizeStaticOptions
    needs_data = True
    providers = ("cpu",)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        steps = qc.StepClock()
        try:
            return self._run(model, steps)
        finally:
            self.report.figures["seconds_by_phase"] = steps.rounded()

    def _run(self, model: ir.Model, steps: qc.StepClock) -> ir.passes.PassResult:
        unchanged = qc.unchanged(model)
        options, figures = self.options, self.report.figures
        if "cuda" in self.context.providers:
            self.report.warn(_CUDA_WARNING)
        original, reason = qc.quantizable_proto(model, self.name)
        if original is None:
            self.report.skip_pass(reason)
            return unchanged
        open_samples = self._sample_source(original)
        if open_samples is None:
            return unchanged

        with steps("prepare"):
            work, force_per_tensor = self._prepare(original)
        if work is None:
            return unchanged
        per_channel = options.per_channel and not force_per_tensor
        # Every file onnxruntime writes (models, the symbolic shape inference's leftovers when it
        # fails, its own temporary folders) lands in this folder, removed on every exit path.
        with qc.scratch_dir("onnxopt-int8-") as tmp:
            path = tmp / "model.onnx"
            with steps("prepare"):
                onnx.save_model(work, str(path))
            with steps("preprocess"):
                path = self._preprocess(path, tmp)
            prepared = onnx.load(str(path))
            op_types, figures["ops"] = scope.choose_ops(options.ops, prepared, op_types_to_quantize())
            with steps("calibration"):
                calibration, trimmed = self._calibrate(path, tmp, open_samples, qc.input_specs(prepared), op_types)
                figures["calibration_samples"] = calibration.samples
                figures["method"] = options.method + (
                    f" ({options.percentile}%)" if options.method == "percentile" else "")
            with steps("quantization"):
                user_excluded = self._exclusions(prepared)
                excluded = dict(user_excluded)
                self._structural_exclusions(prepared, calibration, trimmed, op_types, excluded)
                u8s8 = options.activations == "uint8" and options.weights == "int8"
                reduce_range = choose_reduce_range(options.reduce_range, u8s8, self.report)
                full_range: set[str] = set()  # weights that keep 8 bits under reduce_range
                seven_bit = (0, 0)  # (7-bit weights, weights considered)
                if reduce_range:
                    excluded.update(float_stems(prepared, calibration, excluded))
                    full_range, considered = weights_kept_at_8_bits(prepared, calibration, excluded)
                    seven_bit = (len(considered - full_range), len(considered))
                    figures["reduce_range"] += "; {} of {} weights 7-bit".format(*seven_bit)
                quantized = self._quantize_with_fallbacks(path, prepared, calibration, per_channel, reduce_range,
                                                          excluded, full_range, op_types)
            if quantized is None:
                return unchanged
            if options.bias_correction:
                with steps("bias correction"):
                    self._correct_bias(prepared, quantized, open_samples)
            with steps("quantization"):
                figures["float_outputs"] = float_outputs(quantized, prepared, self.report)
                quantized_names = {n.name for n in prepared.graph.node
                                   if n.op_type in op_types and n.name not in excluded}
                figures["float_readers"] = float_readers(quantized, quantized_names)
            library_kept = False
            if options.library_check and options.calib == "random":
                figures["library_check"] = "not run: random calibration data (calib=random)"
            elif options.library_check:
                with steps("library check"):
                    quantized, library_kept = library_check(
                        prepared, quantized, lambda: self._quantize(
                            path, calibration.minmax, not force_per_tensor, user_excluded, {}, reduce_range=False,
                            op_types=op_types, float_matmul_outputs=False),
                        calibration.probe, open_samples, self.report)
            if options.keep_float and options.calib == "random":
                figures["keep_float"] = "not run: random calibration data (calib=random)"
            elif options.keep_float:
                with steps("float fallback"):
                    quantized = self._keep_float(prepared, quantized, calibration.probe, open_samples)
        qc.restore_model_fields(original, quantized)
        qc.keep_value_info_of(original, quantized)
        if library_kept:  # plain quantize_static's model: only the user's exclusions, 8-bit weights
            excluded, seven_bit = user_excluded, (0, 0)
        self._report_result(quantized, excluded, seven_bit, per_channel)
        return ir.passes.PassResult(ir.from_proto(quantized), True)

    # ------------------------------------------------------------ calibration data

    def _origin(self) -> str:
        return self.context.calibration_description or "calibration data"

    def _sample_source(self, original: onnx.ModelProto):
        """A callable returning a fresh stream of checked one-sample feeds, or None (skipped)."""
        specs = qc.input_specs(original)
        limit = self.options.samples
        if self.options.calib == "random":
            self.report.warn(
                "calibrating on random data (calib=random): activation ranges do not reflect real inputs, "
                "so accuracy is meaningless; use it to measure speed only"
            )
            self.report.figures["calibration"] = "random (seeded)"
            return lambda: qc.iter_samples(qc.random_samples(self.context, original, limit), specs,
                                           "random calibration data", limit)
        if self.context.calibration is None:
            self.report.skip_pass("needs calibration data: pass --data")
            return None
        origin = self._origin()
        self.report.figures["calibration"] = origin
        return lambda: qc.iter_samples(self.context.calibration(), specs, origin, limit)

    def _calibrate(self, path: Path, tmp: Path, open_samples, specs: list[qc.InputSpec],
                   op_types: list[str]) -> tuple[Calibration, bool]:
        """(the calibration, whether token samples lost their trailing padding). Where the cut
        samples do not run (a length fixed inside the graph), calibrates on the full ones."""
        options, figures = self.options, self.report.figures

        def run(samples):
            return calibrate(
                path, tmp, samples, method=options.method, percentile=options.percentile,
                cuda="cuda" in self.context.providers, origin=self._origin(), op_types=op_types,
                progress=lambda used: self.context.progress("calibrating", used, options.samples))

        if not options.trim_padding:
            return run(open_samples), False
        tokens = qc.RealTokens(open_samples, specs)
        try:
            calibration = run(tokens)
        except InputError as exc:
            if not tokens.cut:  # the samples as given failed: the user's data
                raise
            self.report.warn(f"calibration without the trailing padding failed ({exc}); calibrated on the padded samples")
            return run(open_samples), False
        if tokens.cut:
            figures["calibration_tokens"] = (
                f"trailing padding cut: {tokens.kept} of {tokens.positions} token positions calibrated "
                f"({tokens.kept / tokens.positions:.0%})")
        return calibration, tokens.cut

    def _structural_exclusions(self, prepared: onnx.ModelProto, calibration: Calibration, trimmed: bool,
                               op_types: list[str], excluded: dict[str, str]) -> None:
        """Add the nodes that stay float whatever the user says: MatMuls of two activations
        (under ops=linear), the attention mask's path (when calibration saw real tokens only),
        the nodes on sentinel tensors, and Concats of unlike ranges with what carries their
        output on; the user's reasons come first."""
        found: dict[str, str] = {}
        if "MatMul" in op_types and set(op_types) <= set(scope.LINEAR_OPS):
            found.update(scope.linear_exclusions(prepared))
        if trimmed:
            found.update(scope.mask_path_nodes(prepared, scope.mask_inputs(prepared), op_types))
        found.update(scope.sentinel_nodes(prepared, calibration.sentinels, op_types))
        found.update(scope.mixed_range_nodes(prepared, calibration.width, op_types))
        for name, reason in found.items():
            excluded.setdefault(name, reason)
        if calibration.sentinels:
            self.report.figures["sentinel_tensors"] = len(calibration.sentinels)
        if calibration.softmax_inputs:
            self.report.figures["softmax_windows"] = len(calibration.softmax_inputs)

    # ------------------------------------------------------------ model preparation

    def _prepare(self, original: onnx.ModelProto) -> tuple[onnx.ModelProto | None, bool]:
        """(a copy the quantizer can handle: opset >= 13, unique node and initializer names, or
        None where the pass skips; whether weights must be quantized per tensor: opset < 13)."""
        opset = qc.opset_of(original)
        proto, error = qc.upgrade_opset(original, _MIN_OPSET)
        if error is None and opset < _MIN_OPSET:
            self.report.figures["opset"] = f"{opset} -> {_MIN_OPSET}"
        elif error is not None:
            if opset < 10:
                self.report.skip_pass(
                    f"opset {opset} has no QuantizeLinear and conversion to opset {_MIN_OPSET} failed: {error}")
                return None, True
            if self.options.per_channel:
                self.report.warn(f"opset {opset} < {_MIN_OPSET} and conversion failed ({error}): "
                                 "weights quantized per-tensor")
        work = ir.from_proto(proto)
        qc.name_nodes(work)
        renamed = qc.rename_colliding(work)
        if renamed:
            self.report.figures["renamed_initializers"] = len(renamed)
        proto = ir.to_proto(work)
        qc.strip_initializer_value_info(proto)
        qc.restore_model_fields(original, proto)
        clamp_ir_version(proto)  # the quantizer's files are loaded by this onnxruntime
        return proto, error is not None

    def _preprocess(self, path: Path, tmp: Path) -> Path:
        if not self.options.preprocess:
            return path
        from onnxruntime.quantization.shape_inference import quant_pre_process

        out = tmp / "preprocessed.onnx"
        errors = []
        for skip_symbolic in (False, True):
            try:
                with qc.quiet("quant_pre_process"), qc.contained(tmp):
                    quant_pre_process(str(path), str(out), skip_symbolic_shape=skip_symbolic)
                if skip_symbolic:
                    self.report.figures["preprocess"] = "without symbolic shape inference"
                    self.report.warn(f"quant_pre_process: symbolic shape inference failed ({errors[0]}); ran without it")
                else:
                    self.report.figures["preprocess"] = "shape inference + optimization"
                return out
            except Exception as exc:  # onnxruntime raises many kinds here
                errors.append(first_line(exc))
        self.report.figures["preprocess"] = "failed"
        self.report.warn(f"quant_pre_process failed ({errors[-1]}); quantizing without it")
        return path

    def _exclusions(self, proto: onnx.ModelProto) -> dict[str, str]:
        """Node name -> why it stays float (the ``exclude=`` pattern that names it)."""
        excluded: dict[str, str] = {}
        patterns = self.options.exclude
        if not patterns:
            return excluded
        used = set()
        for node in proto.graph.node:
            pattern = qc.exclusion(node, patterns)
            if pattern is not None:
                excluded[node.name] = f"excluded by exclude={pattern}"
                used.add(pattern)
        for pattern in patterns:
            if pattern not in used:
                self.report.warn(f"exclude pattern '{pattern}' matches no node or op type")
        return excluded

    # ------------------------------------------------------------ quantization

    def _quantize_with_fallbacks(self, path: Path, prepared: onnx.ModelProto, calibration: Calibration,
                                 per_channel: bool, reduce_range: bool, excluded: dict[str, str],
                                 full_range: set[str], op_types: list[str]) -> onnx.ModelProto | None:
        """Quantize, falling back per-tensor where per-channel fails; ``full_range``: Conv
        weights that keep 8 bits under ``reduce_range``."""
        weight_nodes = [n for n in prepared.graph.node
                        if n.op_type in WEIGHT_OPS and n.op_type in op_types and n.name not in excluded]
        initializers = {t.name for t in prepared.graph.initializer}
        attempts: list[tuple[bool, list]] = [(per_channel, [])]
        if per_channel:
            first = [n for n in weight_nodes if n.op_type in _PER_TENSOR_FIRST]
            if first:
                attempts.append((True, first))
            attempts.append((False, weight_nodes))
        errors = []
        for use_per_channel, per_tensor_nodes in attempts:
            per_tensor = {n.input[1] for n in per_tensor_nodes if len(n.input) > 1 and n.input[1] in initializers}
            overrides = {name: [{"symmetric": True}] for name in per_tensor}
            for name in full_range:  # Conv weights only (axis 0)
                entry = overrides.setdefault(name, [{}])[0]
                entry["reduce_range"] = False
                if use_per_channel and name not in per_tensor:
                    entry["axis"] = 0  # a per-channel override must name its axis, else it is per-tensor
            try:
                quantized = self._quantize(path, calibration.ranges, use_per_channel, excluded, overrides,
                                           reduce_range, op_types=op_types)
            except OnnxoptError:
                raise
            except Exception as exc:  # the quantizer fails in many ways on unusual graphs
                errors.append(first_line(exc))
                continue
            problem = qc.check_loads(quantized, calibration.probe)
            if problem is not None:
                errors.append(f"onnxruntime cannot use the result: {problem}")
                continue
            if errors:
                for node in per_tensor_nodes if use_per_channel else weight_nodes:
                    self.report.skip(node.name, f"per-channel quantization failed ({errors[0]}); per-tensor used",
                                     op=node.op_type, fallback="per-tensor")
                self.report.figures["per_channel_fallbacks"] = len(per_tensor_nodes if use_per_channel else weight_nodes)
            return quantized
        self.report.skip_pass(f"onnxruntime quantization failed: {errors[0]}")
        return None

    def _quantize(self, path: Path, ranges, per_channel: bool, excluded: dict[str, str], overrides: dict,
                  reduce_range: bool, *, op_types: list[str], float_matmul_outputs: bool = True) -> onnx.ModelProto:
        """onnxruntime's QDQ quantizer on the model at ``path``. ``float_matmul_outputs``: a
        MatMul's output is quantized only where a quantized op reads it (else the library's way)."""
        from onnxruntime.quantization import QDQQuantizer, QuantType
        from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

        qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        extra = {"WeightSymmetric": True, "ActivationSymmetric": False}
        if float_matmul_outputs:
            extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        with qc.quiet("onnxruntime quantizer"), qc.contained(path.parent):
            model = load_model_with_shape_infer(path)
            quantizer = QDQQuantizer(
                model, per_channel, reduce_range, qtype[self.options.weights], qtype[self.options.activations],
                ranges, [], sorted(excluded), op_types, extra,
            )
            quantizer.quantize_model()
            quantizer.model.topological_sort()
        return quantizer.model.model

    def _correct_bias(self, prepared: onnx.ModelProto, quantized: onnx.ModelProto, open_samples) -> None:
        from . import _bias_correction

        limit = self.options.samples
        try:
            with qc.quiet("bias correction"):
                result = _bias_correction.correct_bias(
                    prepared, quantized, open_samples, lambda used: self.context.progress("bias correction", used, limit))
        except OnnxoptError:
            raise
        except Exception as exc:  # onnxruntime cannot run the error model: keep the uncorrected biases
            self.report.warn(f"bias correction failed ({first_line(exc)}); biases left as quantized")
            self.report.figures["bias_correction"] = "failed"
            return
        if result is None:
            self.report.figures["bias_correction"] = "no layer with a quantized bias"
            return
        self.report.figures["bias_correction"] = (
            f"{result.layers} layers, mean |shift| {result.mean_abs_shift:.3g} (max {result.max_abs_shift:.3g}), "
            f"{result.samples} samples")

    def _keep_float(self, prepared: onnx.ModelProto, quantized: onnx.ModelProto, probe: qc.Feeds,
                    open_samples) -> onnx.ModelProto:
        """``keep_float=N`` (:mod:`._float_fallback`), scored on the first calibration samples."""
        feeds = list(itertools.islice(open_samples(), FALLBACK_SAMPLES))
        reference = FloatReference(prepared, feeds, self.report.validate_with)
        result, fallback = keep_sensitive_float(
            reference, quantized, self.options.keep_float,
            lambda done, total: self.context.progress("float fallback", done, total), FALLBACK_SECONDS)
        shares = qc.mac_shares(prepared, probe) if fallback.float_nodes else {}  # shape inference: only when needed
        share = sum(shares.get(name, 0.0) for name in fallback.float_nodes)
        kept = ", ".join(fallback.kept) or "none"
        self.report.figures["keep_float"] = (
            f"{len(fallback.kept)} of {fallback.candidates} activations kept float ({kept}); "
            f"{len(fallback.float_nodes)} ops reading or writing them run in float ({share:.1%} of the MACs); "
            f"output error (squared, relative to the outputs' spread) on {fallback.samples} calibration samples "
            f"{fallback.before:.3g} -> {fallback.after:.3g}")
        return result

    # ------------------------------------------------------------ report

    def _report_result(self, quantized: onnx.ModelProto, excluded: dict[str, str], seven_bit: tuple[int, int],
                       per_channel: bool) -> None:
        producers = {o: n for n in quantized.graph.node for o in n.output}
        count = 0
        for node in quantized.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            inputs = [producers.get(i) for i in node.input]
            if any(p is not None and p.op_type == "DequantizeLinear" for p in inputs):
                count += 1
                self.report.apply(node.name, op=node.op_type)
        for name, reason in sorted(excluded.items()):
            self.report.skip(name, reason)
        figures = self.report.figures
        figures["quantized_nodes"] = count
        figures["excluded_nodes"] = len(excluded)
        figures.setdefault("per_channel_fallbacks", 0)
        figures["activations"] = self.options.activations
        seven, total = seven_bit
        figures["weights"] = self.options.weights + (" per-channel" if per_channel else " per-tensor") + (
            f" ({seven} of {total} 7-bit)" if seven else "")
