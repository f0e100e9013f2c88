"""``int8``: static INT8 quantization in QDQ format, calibrated on data (onnxruntime.quantization).

Transformation: every quantizable tensor ``x`` (activations and weights of Conv, Gemm,
MatMul, … as onnxruntime's QDQ quantizer chooses them) is rewritten as
``DequantizeLinear(QuantizeLinear(x))`` with ``x ≈ scale·(q − zero_point)``; onnxruntime
then fuses each ``DQ → op → Q`` group into an integer kernel (QLinearConv, QGemm, …).
Weights get symmetric int8 scales (per output channel by default); activation ranges
``[rmin, rmax]`` come from calibration on the user's data (``--data``), streamed.

Steps: refuse already-quantized models and models without float32 tensors; give the
quantizer a model it can handle — unique node names; opset ≥ 13, which per-channel
``DequantizeLinear`` needs (plain ``quantize_static`` moves the opset-9 ResNet-50 to opset
11 only and writes an invalid model); initializer names made unique against the names the
quantizer generates (a Keras export's ``batch_normalization_scale`` weight collides with
the ``<tensor>_scale`` the quantizer creates for the activation ``batch_normalization``:
the model fails at run time). Then onnxruntime's ``quant_pre_process`` (symbolic shape
inference, graph optimization such as Conv+BN fusion; on failure retried without the
symbolic inference, then left out, and the report says so). It matters:
EfficientNet-Lite0 ran 1.74× faster than FP32 with it and 0.97× with plain
``quantize_static``, whose Q/DQ around the unfolded Pad/Cast subgraphs block the integer
fusions. Then calibration, QDQ quantization, and a check that onnxruntime loads the
result and runs one calibration sample through it. Where per-channel quantization fails,
the weights of the Gemm/MatMul layers are retried per-tensor, then all weights, and the
report lists each fallback (onnxruntime 1.31 handles the Keras VGG's Gemms per-channel;
the fallback is for the versions and graphs that do not).

Calibration streams (onnxruntime issue 10503: calibration storing every activation of
every sample took hundreds of GB). The pass runs onnxruntime's calibrator itself and
hands it one sample per ``collect_data`` call: MinMax folds each sample into a running
``(min, max)`` per tensor, entropy and percentile fold it into one histogram per tensor.
Memory is one sample's activations plus O(tensors × bins) — a histogram only grows (at
fixed bin width) when a later sample exceeds its range, by the ratio of the ranges, not
with the number of samples. The data itself arrives through ``PassContext.calibration``
one batch at a time and is never stored.

Defaults, measured on two CPUs — an AVX-512 VNNI Intel and an AVX2 AMD EPYC without VNNI
(onnxruntime 1.31, one thread, interleaved A/B medians at batch 1; accuracy on 400
ImageNet photos, 100 others for calibration; ``benchmarks/quantize.py``):

* ``activations=uint8``, ``weights=int8``: ResNet-56 ran 2.04× faster than FP32 with
  uint8 activations and 0.68× (slower) with int8 activations on the VNNI CPU; 1.46× and
  0.69× on the AVX2 one (u8 weights: 1.0×) — x86 integer kernels are built for u8×s8
  (``vpdpbusd`` with VNNI, ``vpmaddubsw`` without); s8 activations take a slower path. Use
  int8 activations only for targets that want symmetric activations (GPU/TensorRT, ARM).
* ``reduce_range=auto``: on x86 CPUs without VNNI, 7-bit weights for the layers whose
  products can saturate; 8 bits everywhere else. Without VNNI, onnxruntime's u8×s8
  kernels add pairs of products into a saturating int16 (:mod:`onnxopt.runtime.cpu`); on an
  AVX2 AMD EPYC, ResNet-56 with 8-bit weights agreed with FP32 on 0.87 of 400 photos (KL
  0.165), with 7-bit weights 0.95 (KL 0.017), at the same speed. Depthwise convolutions
  and convolutions reading mostly small non-negative codes (ReLU outputs) keep 8 bits
  (``_weights_kept_at_8_bits``: KL 0.0128), and a cheap image stem (≤ 5 % of the MACs)
  that would need 7 bits stays float (``_float_stems``: KL 0.0104). ``reduce_range=true``
  applies this whatever the host, ``false`` keeps 8 bits everywhere: the quantized model
  runs anywhere either way, so quantizing on one CPU for another, set it for the target
  (with ``false`` on a CPU without VNNI, validation runs exact integer kernels).
* ``per_channel=true``: MobileNetV2 top-1 0.828 per-channel vs 0.800 per-tensor (its
  depthwise kernels vary a lot between channels), at a small speed cost.
* ``method=percentile``, ``percentile=99.995`` (the range covers 99.995 % of |x|): the
  most robust choice over five real models. Mean softmax KL(FP32‖INT8) on 400 photos
  (100 others calibrate), lower is better:

  ================  =======  =======  =======  =======  =======
  model             MinMax   entropy  P 99.99  P 99.995 P 99.999
  ================  =======  =======  =======  =======  =======
  resnet56          0.0127   0.0145   0.0190   0.0134   0.0084
  mobilenet_v2      0.0510   0.0261   0.0319   0.0272   0.0354
  efficientnet_l0   0.0094   0.0347   0.0134   0.0091   0.0089
  ================  =======  =======  =======  =======  =======

  On the Keras VGG (raw 0..255 input, ReLU logits) MinMax and P 99.999 collapse (mean
  cosine 0.905 / 0.907, top-1 agreement 0.67 / 0.63) while P 99.995 keeps 0.988 / 0.95:
  one outlier stretches a range and wastes the int8 levels. Where a model prefers
  another setting (ResNet-56: 99.999), ``benchmarks/quantize.py`` shows it.
* ``method=entropy`` picks, per tensor, the range whose 128-level quantization of the
  2048-bin histogram loses least information (KL; TensorRT's method). onnxruntime's own
  search is pure Python (17 minutes on MobileNetV2) and its ``quantize_static`` default
  of 128 bins equals MinMax; the pass uses a vectorised search (seconds).
* ``bias_correction=true``: rounding the weights shifts each layer's output mean; the
  shift is measured on the calibration data and subtracted from the int32 bias
  (``passes/_bias_correction.py``). One more float pass over the samples.
* ``samples=100``: the first 100 calibration samples.
* Graph outputs are float: the quantizer's Q→DQ on a model output coarsens it (logits on a
  uint8 grid, clamped at the calibrated maximum: ResNet-20 agreement on 16 photos 0.94
  with the pair, 1.0 without) and is replaced by the last op's float result. Where the
  quantizer had folded a Relu or Clip into that pair (it deletes them and lets the Q's
  0..max range clamp), a float copy of the activation writes the output, and layers that
  read the output keep reading the dequantized tensor (``_float_outputs``). Dropping the
  pair alone dropped the activation (issue 12): the Keras VGG's ReLU logits came back
  with 19 % negative values, and CRAFT's ``feature`` — a ReLU output that its text-map
  head also reads — fed the head unclamped, taking the maps' correlation with FP32 from
  0.998 (plain ``quantize_static``) to 0.42.
* ``library_check=true``: never worse than the library it wraps. The pass also builds
  plain ``quantize_static``'s model (per-channel MinMax, 8-bit weights, outputs
  quantized, no bias correction) from the MinMax ranges of its own calibration run and
  the same pre-processed model, runs both on the first 8 calibration samples, and keeps
  the library's where it is closer to FP32 (mean per-sample and worst per-channel
  Pearson r of every output, ``_library_is_better``); the report's ``library_check`` and
  ``result`` say which, with both figures, and a warning when the library's model is
  kept. Cost: one more quantizer run (onnxruntime computes per-channel weight scales in a
  Python loop, channel by channel) and 3 × 8 inferences: 3–5 s on MobileNetV2 on this
  shared machine, whatever the number of samples. The library's model built this way gave
  outputs identical to ``quant_pre_process`` + ``quantize_static``'s on ResNet-20 and
  MobileNetV2 (16 photos; max difference 0). Handing it this pass's weight scales as
  overrides would save half of that, but onnxruntime then quantizes the biases
  differently (other scales, ~1e-4 relative): not the library's model any more.
* Time per step — prepare, preprocess, calibration, quantization, bias correction,
  library check — is in the report (``seconds_by_phase``). MobileNetV2, 32 photos, this
  2-core machine shared with other jobs: calibration 12–16 s (onnxruntime's histogram
  collector: a Python pass over every tensor of every sample), bias correction 5–7 s,
  quantization 2–4 s, library check 3–5 s, pre-processing under 1 s; the calibration and
  bias correction grow with the samples, the rest does not.
* Temporary files: every file onnxruntime writes goes to a private folder removed on
  every exit path (Ctrl-C included) — also what its symbolic shape inference leaves in
  the *working directory* when it fails (``sym_shape_infer_temp.onnx`` and a
  ``<uuid>.data`` of every weight: 69 MB on paraphrase-MiniLM): the working directory is
  that folder while onnxruntime runs (``qc.contained``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt.analysis import attribute, node_costs
from onnxopt.errors import InputError, OnnxoptError
from onnxopt.passbase import OptimizerPass, option
from onnxopt.registry import register

from . import _quant_common as qc

logger = logging.getLogger(__name__)

#: Per-channel ``DequantizeLinear`` (the ``axis`` attribute) needs opset 13.
_MIN_OPSET = 13
_PER_TENSOR_FIRST = ("Gemm", "MatMul")  # per-channel falls back on these op types first
_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_ENTROPY_BINS = 2048
#: Percentile of |x| (symmetric) rather than two-sided percentiles of x: see the docstring.
_PERCENTILE_SYMMETRIC = True
_QUANTIZED_BINS = 128
#: reduce_range=auto keeps a conv's weights at 8 bits when at most this share of its
#: (non-negative) input lies in the upper half of the range: large codes are what saturate.
_UPPER_SHARE_8_BITS = 0.05
#: ... and leaves in float the image stems (at most this many input channels) that would need 7 bits.
_STEM_CHANNELS = 4
_STEM_MAC_SHARE = 0.05  # ... when it holds at most this share of the MACs (float must stay cheap)
#: The library check compares on this many calibration samples ...
_CHECK_SAMPLES = 8
#: ... and keeps plain quantize_static's model only when its score is higher by more than this.
_CHECK_MARGIN = 0.002


@dataclass(frozen=True)
class QuantizeStaticOptions:
    per_channel: bool = option(True, "quantize weights per output channel (falls back to per-tensor per layer where it fails)")
    method: Literal["minmax", "entropy", "percentile"] = option(
        "percentile", "activation range calibration: minmax, entropy (KL, 2048 bins) or percentile")
    percentile: float = option(99.995, "for method=percentile: share of |x| (in %) the range must cover")
    samples: int = option(100, "calibrate on the first N samples of the data")
    exclude: tuple[str, ...] = option((), "node-name globs or op types to leave in float, e.g. conv1*|Gemm")
    activations: Literal["uint8", "int8"] = option(
        "uint8", "activation type: uint8 is the fast path on x86 (int8 activations ran ResNet-56 at 0.68x of FP32)")
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
        "samples and keep the better model")

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
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
        unchanged = qc.unchanged(model)
        self._force_per_tensor = False
        self._probe: qc.Feeds | None = None
        self._upper_shares: dict[str, float] = {}
        self._minmax: object | None = None  # MinMax ranges of the same calibration run (library check)
        self._user_excluded: dict[str, str] = {}
        self._library_kept = False
        self._steps = qc.StepClock()
        try:
            return self._run(model, unchanged)
        finally:
            self.report.figures["seconds_by_phase"] = self._steps.rounded()

    def _run(self, model: ir.Model, unchanged: ir.passes.PassResult) -> ir.passes.PassResult:
        steps = self._steps
        if "cuda" in self.context.providers:
            self.report.warn(_CUDA_WARNING)
        original, reason = qc.quantizable_proto(model, self.name)
        if original is None:
            self.report.skip_pass(reason)
            return unchanged
        specs = qc.input_specs(original)
        open_samples = self._sample_source(specs)
        if open_samples is None:
            return unchanged

        with steps("prepare"):
            work = self._prepare(original)
        if work is None:
            return unchanged
        # Every file onnxruntime writes (models, the symbolic shape inference's leftovers when it
        # fails, its own temporary folders) lands in this folder, removed on every exit path.
        with qc.scratch_dir("onnxopt-int8-") as tmp:
            path = tmp / "model.onnx"
            with steps("prepare"):
                onnx.save_model(work, str(path))
            with steps("preprocess"):
                path = self._preprocess(path, tmp)
            with steps("calibration"):
                ranges = self._calibrate(path, tmp, open_samples)
            with steps("quantization"):
                prepared = onnx.load(str(path))
                excluded = self._exclusions(prepared)
                self._user_excluded = dict(excluded)
                u8s8 = self.options.activations == "uint8" and self.options.weights == "int8"
                self._reduce_range = qc.choose_reduce_range(self.options.reduce_range, u8s8, self.report)
                full_range: set[str] = set()  # weights that keep 8 bits under reduce_range
                seven_bit = (0, 0)  # (7-bit weights, weights considered)
                if self._reduce_range:
                    excluded.update(self._float_stems(prepared, ranges, excluded))
                    full_range, considered = self._weights_kept_at_8_bits(prepared, ranges, excluded)
                    seven_bit = (len(considered - full_range), len(considered))
                    self.report.figures["reduce_range"] += "; {} of {} weights 7-bit".format(*seven_bit)
                quantized = self._quantize_with_fallbacks(path, prepared, ranges, excluded, full_range)
            if quantized is None:
                return unchanged
            if self.options.bias_correction:
                with steps("bias correction"):
                    self._correct_bias(prepared, quantized, open_samples)
            with steps("quantization"):
                self.report.figures["float_outputs"] = _float_outputs(quantized, prepared, self.report)
            if self.options.library_check and self.options.calib == "random":
                self.report.figures["library_check"] = "not run: random calibration data (calib=random)"
            elif self.options.library_check:
                with steps("library check"):
                    quantized = self._library_check(path, prepared, quantized, open_samples)
        qc.restore_model_fields(original, quantized)
        self._report_result(quantized, excluded, seven_bit)
        return ir.passes.PassResult(ir.from_proto(quantized), True)

    # ------------------------------------------------------------ calibration data

    def _sample_source(self, specs: list[qc.InputSpec]):
        """A callable returning a fresh stream of checked one-sample feeds, or None (skipped)."""
        limit = self.options.samples
        if self.options.calib == "random":
            self.report.warn(
                "calibrating on random data (calib=random): activation ranges do not reflect real inputs, "
                "so accuracy is meaningless; use it to measure speed only"
            )
            self.report.figures["calibration"] = "random (seeded)"
            return lambda: qc.iter_samples(qc.random_samples(self.context, specs, limit), specs,
                                           "random calibration data", limit)
        if self.context.calibration is None:
            self.report.skip_pass("needs calibration data: pass --data")
            return None
        origin = self.context.calibration_description or "calibration data"
        self.report.figures["calibration"] = origin
        return lambda: qc.iter_samples(self.context.calibration(), specs, origin, limit)

    # ------------------------------------------------------------ model preparation

    def _prepare(self, original: onnx.ModelProto) -> onnx.ModelProto | None:
        """A copy the quantizer can handle: opset >= 13, unique node and initializer names."""
        opset = qc.opset_of(original)
        proto, error = qc.upgrade_opset(original, _MIN_OPSET)
        if error is None and opset < _MIN_OPSET:
            self.report.figures["opset"] = f"{opset} -> {_MIN_OPSET}"
        elif error is not None:
            if opset < 10:
                self.report.skip_pass(
                    f"opset {opset} has no QuantizeLinear and conversion to opset {_MIN_OPSET} failed: {error}")
                return None
            if self.options.per_channel:
                self.report.warn(f"opset {opset} < {_MIN_OPSET} and conversion failed ({error}): "
                                 "weights quantized per-tensor")
            self._force_per_tensor = True
        work = ir.from_proto(proto)
        qc.name_nodes(work)
        renamed = qc.rename_colliding(work)
        if renamed:
            self.report.figures["renamed_initializers"] = len(renamed)
        proto = ir.to_proto(work)
        qc.strip_initializer_value_info(proto)
        qc.restore_model_fields(original, proto)
        return proto

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
                errors.append(qc.first_line(exc))
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
            for pattern in patterns:
                if node.op_type == pattern or (node.name and _glob(node.name, pattern)):
                    excluded[node.name] = f"excluded by exclude={pattern}"
                    used.add(pattern)
                    break
        for pattern in patterns:
            if pattern not in used:
                self.report.warn(f"exclude pattern '{pattern}' matches no node or op type")
        return excluded

    # ------------------------------------------------------------ calibration

    def _calibrate(self, path: Path, tmp: Path, open_samples):
        from onnxruntime.quantization import CalibrationMethod, create_calibrator

        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[self.options.method]
        extra: dict = {}
        if self.options.method == "entropy":
            extra = {"num_bins": _ENTROPY_BINS, "num_quantized_bins": _QUANTIZED_BINS}
        elif self.options.method == "percentile":
            extra = {"num_bins": _ENTROPY_BINS, "percentile": self.options.percentile,
                     "symmetric": _PERCENTILE_SYMMETRIC}
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if "cuda" in self.context.providers else None
        with qc.quiet("onnxruntime calibrator"), qc.contained(tmp):
            calibrator = create_calibrator(
                path, _op_types_to_quantize(), augmented_model_path=str(tmp / "augmented.onnx"),
                calibrate_method=method, providers=providers, extra_options=extra,
            )
        used = 0
        limit = self.options.samples
        try:
            for feeds in open_samples():
                if self._probe is None:  # one sample kept to check that the result runs
                    self._probe = {k: v.copy() for k, v in feeds.items()}
                try:
                    with qc.quiet("onnxruntime calibrator"):
                        calibrator.collect_data(_OneSample(feeds))
                except Exception as exc:  # onnxruntime rejects the sample (shape, type, content)
                    origin = self.context.calibration_description or "calibration data"
                    raise InputError(f"{origin}: the model cannot run on sample {used + 1}: "
                                     f"{qc.first_line(exc)}") from None
                used += 1
                del feeds
                self.context.progress("calibrating", used, limit)
            if used == 0:
                origin = self.context.calibration_description or "calibration data"
                raise InputError(f"{origin} is empty: no samples to calibrate on")
            with qc.quiet("onnxruntime calibrator"), qc.contained(tmp):
                if self.options.method == "entropy":  # onnxruntime's search is pure Python: minutes
                    ranges = _entropy_ranges(calibrator.collector.histogram_dict)
                else:
                    ranges = calibrator.compute_data()
            collector = getattr(calibrator, "collector", None)  # histogram methods only, not MinMax
            self._upper_shares = _upper_half_shares(collector.histogram_dict, ranges) if collector else {}
            # what onnxruntime's MinMax calibration would give on the same samples (the library check)
            self._minmax = _minmax_ranges(collector.histogram_dict) if collector else ranges
        finally:
            del calibrator
        self.report.figures["calibration_samples"] = used
        self.report.figures["method"] = self.options.method + (
            f" ({self.options.percentile}%)" if self.options.method == "percentile" else "")
        return ranges

    # ------------------------------------------------------------ quantization

    def _quantize_with_fallbacks(self, path: Path, prepared: onnx.ModelProto, ranges, excluded: dict[str, str],
                                 full_range: set[str]):
        """Quantize, falling back per-tensor where per-channel fails; ``full_range``: Conv
        weights that keep 8 bits under ``reduce_range``."""
        per_channel = self.options.per_channel and not self._force_per_tensor
        weight_nodes = [n for n in prepared.graph.node if n.op_type in _WEIGHT_OPS and n.name not in excluded]
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
                quantized = self._quantize(path, ranges, use_per_channel, excluded, overrides)
            except OnnxoptError:
                raise
            except Exception as exc:  # the quantizer fails in many ways on unusual graphs
                errors.append(qc.first_line(exc))
                continue
            problem = qc.check_loads(quantized, self._probe)
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

    def _float_stems(self, prepared: onnx.ModelProto, ranges, excluded: dict[str, str]) -> dict[str, str]:
        """Under ``reduce_range`` (a CPU whose u8×s8 kernels saturate): image stems — convolutions
        with at most 4 input channels reading a graph input, directly or through element-wise
        preprocessing — whose input fills its range stay float.

        Their weights would need 7 bits, which costs more accuracy there than anywhere —
        a dot product of 27 terms averages little rounding away, and every later layer
        inherits the error. Only where the stem holds at most 5 % of the model's MACs:
        float costs little there. Measured on the AVX2 CPU (400 photos, softmax KL against
        FP32 / CPU-time speed-up, 7-bit stem → float stem interleaved in one process; the
        stem's share of MACs): ResNet-56 (0.35 %) 0.0128 → 0.0104 (1.42× → 1.39×; an integer stem
        1.62× → float 1.53× in a later 30 s run — behind a float stem onnxruntime's NHWC layout pass stops
        at every residual Add, leaving two Transposes per block),
        MobileNetV2 (3.6 %) 0.0207 → 0.0195 (1.46× → 1.50×), EfficientNet-Lite0 (2.8 %)
        0.0089 → 0.0045 (1.50× → 1.52×); but the half-width
        ResNet-50's 7×7 stem (11 %) ran 1.53× → 1.10× in float, for no accuracy to win
        (agreement 0.9975 either way).
        """
        shapes = {t.name: tuple(t.dims) for t in prepared.graph.initializer}
        stems = {}
        macs: dict[str, float] | None = None
        for node in prepared.graph.node:
            shape = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
            if node.name in excluded or shape is None or len(shape) < 2 or shape[1] > _STEM_CHANNELS:
                continue
            group = attribute(node, "group", 1)
            if group != 1 or not _reads_graph_input(prepared, node.input[0]) or self._small_codes(ranges, node.input[0]):
                continue
            if macs is None:
                macs = self._mac_shares(prepared)
            share = macs.get(node.name)
            if share is not None and share <= _STEM_MAC_SHARE:
                stems[node.name] = (f"image stem ({shape[1]} input channels, {share:.1%} of the MACs) left in float: "
                                    "u8×s8 kernels without VNNI saturate and 7-bit weights cost accuracy here "
                                    "(reduce_range)")
        return stems

    def _mac_shares(self, prepared: onnx.ModelProto) -> dict[str, float]:
        """Node name -> its share of the model's MACs at the calibration sample's shapes."""
        shapes = {name: tuple(value.shape) for name, value in (self._probe or {}).items()}
        try:
            costs = node_costs(prepared, shapes)
        except Exception:  # shape inference fails on unusual graphs: no stem is left in float
            return {}
        total = sum(c.macs or 0 for c in costs.values())
        if total <= 0:
            return {}
        return {name: c.macs / total for name, c in costs.items() if c.macs}

    def _small_codes(self, ranges, tensor: str) -> bool:
        """Whether ``tensor`` is never negative and rarely in the upper half of its range."""
        lowest = _range_lowest(ranges, tensor)
        upper = self._upper_shares.get(tensor)
        return lowest is not None and lowest >= 0.0 and upper is not None and upper <= _UPPER_SHARE_8_BITS

    def _weights_kept_at_8_bits(self, prepared: onnx.ModelProto, ranges,
                                excluded: dict[str, str]) -> tuple[set[str], set[str]]:
        """Under ``reduce_range``: (the weights that stay 8-bit, every weight considered).

        The depthwise convolutions' (their kernel cannot saturate), and the convolutions
        whose input is never negative *and* rarely large — at most 5 % of its calibration
        values in the upper half of the range (ReLU outputs: 0.1–2.7 % on ResNet-56 and
        MobileNetV2): a pair of u8·s8 products reaches int16's limit only when both codes
        are large (≥ 128 or so) and both weights too. Signed inputs and inputs that fill
        their range — an image, normalized (signed: codes near 128 everywhere) or raw
        0..255 (41 % of the Keras VGG's calibration pixels in the upper half) — keep 7 bits.
        Measured on the AVX2 CPU (400 photos): ResNet-56 softmax KL 0.0142 with every dense
        weight 7-bit, 0.0128 with 7 bits only where the rule says (the stem and the Gemm);
        MobileNetV2 0.0234 → 0.0207 (agreement 0.958 → 0.965); 8 bits everywhere: 0.165
        and 0.24. ``method=minmax`` keeps no histogram, so there every dense weight gets 7 bits.
        """
        initializers = {t.name for t in prepared.graph.initializer}
        weights = {n.input[1]: n for n in prepared.graph.node  # stored weights only: overrides need initializers
                   if n.op_type in _WEIGHT_OPS and len(n.input) > 1 and n.input[1] in initializers
                   and n.name not in excluded}
        keep = _depthwise_weights(prepared) & set(weights)
        for name, node in weights.items():
            # Conv only: its per-channel axis is 0 for any shape (an override must name it)
            if node.op_type == "Conv" and self._small_codes(ranges, node.input[0]):
                keep.add(name)
        return keep, set(weights)

    def _quantize(self, path: Path, ranges, per_channel: bool, excluded: dict[str, str], overrides: dict,
                  reduce_range: bool | None = None):
        from onnxruntime.quantization import QDQQuantizer, QuantType
        from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

        qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        extra = {"WeightSymmetric": True, "ActivationSymmetric": False}
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        reduce_range = self._reduce_range if reduce_range is None else reduce_range
        with qc.quiet("onnxruntime quantizer"), qc.contained(path.parent):
            model = load_model_with_shape_infer(path)
            quantizer = QDQQuantizer(
                model, per_channel, reduce_range, qtype[self.options.weights], qtype[self.options.activations],
                ranges, [], sorted(excluded), _op_types_to_quantize(), extra,
            )
            quantizer.quantize_model()
            quantizer.model.topological_sort()
        return quantizer.model.model

    def _correct_bias(self, prepared: onnx.ModelProto, quantized: onnx.ModelProto, open_samples) -> None:
        from ._bias_correction import correct_bias

        limit = self.options.samples
        try:
            with qc.quiet("bias correction"):
                result = correct_bias(prepared, quantized, open_samples,
                                      lambda used: self.context.progress("bias correction", used, limit))
        except OnnxoptError:
            raise
        except Exception as exc:  # onnxruntime cannot run the error model: keep the uncorrected biases
            self.report.warn(f"bias correction failed ({qc.first_line(exc)}); biases left as quantized")
            self.report.figures["bias_correction"] = "failed"
            return
        if result is None:
            self.report.figures["bias_correction"] = "no layer with a quantized bias"
            return
        self.report.figures["bias_correction"] = (
            f"{result.layers} layers, mean |shift| {result.mean_abs_shift:.3g} (max {result.max_abs_shift:.3g}), "
            f"{result.samples} samples")

    # ------------------------------------------------------------ never worse than the library

    def _library_check(self, path: Path, prepared: onnx.ModelProto, quantized: onnx.ModelProto, open_samples):
        """This pass's model, or plain ``quantize_static``'s where that is closer to FP32.

        The library's model — per-channel MinMax, QDQ, the same activation and weight types,
        8-bit weights, outputs quantized, no bias correction — is built from the MinMax
        ranges recorded during this pass's own calibration (the same samples, no second
        calibration run) and the pre-processed model (what ``quant_pre_process`` then
        ``quantize_static`` gives). Both are run on the first few calibration samples and
        compared with the float model: each output's mean per-sample Pearson r and its
        worst per-channel r (``qc.similarity``); :func:`_library_is_better` decides.
        """
        figures = self.report.figures
        try:
            library = self._quantize(path, self._minmax, not self._force_per_tensor, self._user_excluded, {},
                                     reduce_range=False)
            problem = qc.check_loads(library, self._probe)
        except OnnxoptError:
            raise
        except Exception as exc:  # the quantizer fails in many ways on unusual graphs
            problem = qc.first_line(exc)
        if problem is not None:
            figures["library_check"] = f"not run: plain quantize_static's model failed ({problem})"
            return quantized
        import itertools

        samples = list(itertools.islice(open_samples(), _CHECK_SAMPLES))
        try:
            ours, theirs = qc.similarity(prepared, [quantized, library], samples, self.report.validate_with)
        except OnnxoptError:
            raise
        except Exception as exc:  # onnxruntime cannot run one of them
            figures["library_check"] = f"not run: {qc.first_line(exc)}"
            return quantized
        keep_library = _library_is_better(ours, theirs)
        figures["library_check"] = (
            f"{len(samples)} calibration samples, mean r / worst channel r against FP32: this pass "
            f"{ours.describe()}, plain quantize_static (per-channel MinMax) {theirs.describe()}; kept "
            + ("plain quantize_static's model" if keep_library else "this pass's model"))
        figures["result"] = "plain quantize_static (per-channel MinMax)" if keep_library else "this pass"
        if not keep_library:
            return quantized
        self.report.warn(
            f"plain quantize_static's model was closer to FP32 on {len(samples)} calibration samples "
            f"({theirs.describe()} against {ours.describe()}): kept it — this pass's settings (method, "
            "bias correction, reduce_range, float outputs) are not in the result")
        self._library_kept = True
        figures["float_outputs"] = 0
        figures.pop("quantized_outputs", None)
        if "bias_correction" in figures:
            figures["bias_correction"] = f"{figures['bias_correction']} (not in the kept model)"
        return library

    # ------------------------------------------------------------ report

    def _report_result(self, quantized: onnx.ModelProto, excluded: dict[str, str], seven_bit: tuple[int, int]) -> None:
        producers = {o: n for n in quantized.graph.node for o in n.output}
        count = 0
        for node in quantized.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            inputs = [producers.get(i) for i in node.input]
            if any(p is not None and p.op_type == "DequantizeLinear" for p in inputs):
                count += 1
                self.report.apply(node.name, op=node.op_type)
        if self._library_kept:
            excluded = self._user_excluded
        for name, reason in sorted(excluded.items()):
            self.report.skip(name, reason)
        self.report.figures["quantized_nodes"] = count
        self.report.figures["excluded_nodes"] = len(excluded)
        self.report.figures.setdefault("per_channel_fallbacks", 0)
        self.report.figures["activations"] = self.options.activations
        seven, total = seven_bit if not self._library_kept else (0, 0)
        self.report.figures["weights"] = self.options.weights + (
            " per-channel" if self.options.per_channel and not self._force_per_tensor else " per-tensor") + (
            f" ({seven} of {total} 7-bit)" if seven else "")


def _library_is_better(ours: qc.Similarity, theirs: qc.Similarity, margin: float = _CHECK_MARGIN) -> bool:
    """Keep plain quantize_static's model? Not where this pass's is within ``margin`` of it on
    both figures (mean r, worst channel r); yes where the library's is within ``margin`` of
    this pass's on both (so better on one); where each wins one, the higher mean of the two."""
    pairs = ((ours.mean_r, theirs.mean_r), (ours.worst_channel_r, theirs.worst_channel_r))
    if all(a >= b - margin for a, b in pairs):
        return False
    if all(b >= a - margin for a, b in pairs):
        return True
    return theirs.score > ours.score


def _upper_half_shares(histograms: dict, ranges) -> dict[str, float]:
    """Per calibrated tensor, the share of values in the upper half of its range (uint8
    codes ≥ 128 where the range starts at 0), read off the calibration histograms."""
    shares = {}
    for name, histogram in histograms.items():
        hist, edges = np.asarray(histogram[0], np.float64), np.asarray(histogram[1], np.float64)
        if name not in ranges or hist.sum() <= 0:
            continue
        highest = float(np.max(ranges[name].range_value[1]))
        if highest <= 0:
            continue
        centres = (edges[:-1] + edges[1:]) / 2
        shares[name] = float(hist[centres >= highest / 2].sum() / hist.sum())
    return shares


#: Element-wise ops an exporter puts between the image and the stem (layout, normalization).
_PREPROCESSING_OPS = frozenset({"Transpose", "Cast", "Pad", "Identity", "Mul", "Add", "Sub", "Div", "Reshape"})


def _reads_graph_input(proto: onnx.ModelProto, tensor: str) -> bool:
    """Whether ``tensor`` is a graph input or computed from one by preprocessing ops only."""
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    inputs = {i.name for i in proto.graph.input} - constants
    producers = {o: n for n in proto.graph.node for o in n.output}
    for _ in range(16):  # a short chain; a stem sits right after the input
        if tensor in inputs:
            return True
        node = producers.get(tensor)
        if node is None or node.op_type not in _PREPROCESSING_OPS:
            return False
        variable = [i for i in node.input if i and i not in constants]
        if len(variable) != 1:
            return False
        tensor = variable[0]
    return False


def _range_lowest(ranges, tensor: str) -> float | None:
    """The calibrated minimum of ``tensor``, or None where calibration has none (a graph
    input the calibrator did not record, an integer tensor)."""
    if tensor not in ranges:
        return None
    try:
        lowest = ranges[tensor].range_value[0]
    except AttributeError:
        return None
    return float(np.min(lowest))


def _depthwise_weights(proto: onnx.ModelProto) -> set[str]:
    """Weights of depthwise convolutions (one input and one output channel per group).

    onnxruntime runs them with its own depthwise kernel, which widens u8 and s8 to int16
    and accumulates in int32 (``vpmaddwd``): no int16 pair sums, so 7-bit weights
    (``reduce_range``) would only cost accuracy there. MobileNetV2 on an AVX2 CPU, 400
    photos: agreement with FP32 0.9275 with every weight 7-bit, 0.94 with the depthwise
    weights kept at 8 bits (top-1 0.8175 both).
    """
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    found = set()
    for node in proto.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in shapes:
            continue
        group = attribute(node, "group", 1)
        shape = shapes[node.input[1]]
        if group > 1 and len(shape) >= 2 and shape[0] == group and shape[1] == 1:
            found.add(node.input[1])
    return found


#: Activations onnxruntime's QDQ quantizer deletes when their input is quantized: the range
#: of the Q that follows them (from 0, or Clip's bounds) does their work instead.
_FOLDED_ACTIVATIONS = ("Relu", "Clip")


def _float_outputs(proto: onnx.ModelProto, float_proto: onnx.ModelProto, report=None) -> int:
    """Give the graph outputs the last op's float result instead of the quantizer's Q→DQ round
    trip (which only coarsens them: logits on a uint8 grid, clamped at the calibrated maximum);
    returns how many outputs are float.

    The Q→DQ pair is not always a mere rounding: onnxruntime's quantizer deletes a Relu or
    Clip whose input it quantizes and lets the Q's range (0..max) clamp instead. Dropping
    that pair dropped the activation — a ReLU output came back with negative values, and
    where the output also feeds other layers (CRAFT's ``feature``, read by its text-map
    head) those layers read the unclamped tensor too: the text maps' correlation with FP32
    fell from 0.998 (plain ``quantize_static``) to 0.42. So, per output, against
    ``float_proto`` (the model the quantizer saw):

    * the output's producer is unchanged: it writes the output directly;
    * a Relu/Clip was folded into the pair: a float copy of it writes the output;
    * anything else: the pair stays (the library's form), and the report says so;

    and layers that read the output keep reading the dequantized tensor (their integer
    kernels stay fused; they compute what the quantized model computed).
    """
    nodes = list(proto.graph.node)
    producers = {o: n for n in nodes for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    float_producers = {o: n for n in float_proto.graph.node for o in n.output}
    outputs = [o.name for o in proto.graph.output]
    taken = {v for n in nodes for v in (*n.input, *n.output)} | {t.name for t in proto.graph.initializer}
    made_float, kept = 0, []
    for name in dict.fromkeys(outputs):
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or len(readers.get(q.output[0], [])) != 1:
            continue
        source = q.input[0]
        producer = producers.get(source)
        original = float_producers.get(name)
        if producer is None or source in outputs or original is None:
            continue
        activation = None
        if original.name != producer.name:
            upstream = float_producers.get(original.input[0]) if original.input else None
            if original.op_type not in _FOLDED_ACTIVATIONS or upstream is None or upstream.name != producer.name \
                    or not _copy_constant_inputs(original, proto, float_proto):
                kept.append(f"{name} ({original.op_type} became {producer.op_type} + QuantizeLinear)")
                continue
            activation = original
        internal = readers.get(name, [])
        if internal:  # layers reading the output keep the dequantized tensor
            dequantized = _unique(name + "_dequantized", taken)
            dq.output[0] = dequantized
            for node in internal:
                for i, value in enumerate(node.input):
                    if value == name:
                        node.input[i] = dequantized
        else:
            proto.graph.node.remove(dq)
            proto.graph.node.remove(q)
        if activation is None:  # the producer writes the output itself
            producer.output[list(producer.output).index(source)] = name
            for node in readers.get(source, []):
                for i, value in enumerate(node.input):
                    if value == source and (node is not q or internal):
                        node.input[i] = name
        else:  # a float copy of the folded activation writes it
            copy = onnx.NodeProto()
            copy.CopyFrom(activation)
            copy.input[0] = source
            del copy.output[:]
            copy.output.append(name)
            position = list(proto.graph.node).index(producer) + 1
            proto.graph.node.insert(position, copy)
        made_float += 1
    if kept and report is not None:
        report.figures["quantized_outputs"] = "; ".join(kept)
    return made_float


def _copy_constant_inputs(node: onnx.NodeProto, proto: onnx.ModelProto, float_proto: onnx.ModelProto) -> bool:
    """Make the constant inputs of ``node`` (Clip's bounds) exist in ``proto``; False where one is computed."""
    present = {t.name for t in proto.graph.initializer} | {o for n in proto.graph.node for o in n.output}
    initializers = {t.name: t for t in float_proto.graph.initializer}
    constants = {n.output[0]: n for n in float_proto.graph.node if n.op_type == "Constant"}
    for name in node.input[1:]:
        if not name or name in present:
            continue
        if name in initializers:
            proto.graph.initializer.append(initializers[name])
        elif name in constants:
            proto.graph.node.insert(0, constants[name])
        else:
            return False
    return True


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate


def _minmax_ranges(histograms: dict):
    """onnxruntime's MinMax ranges (each tensor's lowest and highest calibration value) from the
    histograms of the same calibration run: their min and max are recorded on the way."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData

    data = {}
    for name, histogram in histograms.items():
        low, high = histogram[2], histogram[3]
        data[name] = (np.asarray(low, dtype=np.float32).reshape(()), np.asarray(high, dtype=np.float32).reshape(()))
    return TensorsData(CalibrationMethod.MinMax, data)


def _entropy_ranges(histograms: dict):
    """Per tensor, the range whose 128-level quantization loses the least information (KL)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData

    data = {}
    for name, (hist, edges, low, high, _threshold) in histograms.items():
        start, end = _kl_range(np.asarray(hist, dtype=np.float64))
        lo = np.array(max(edges[start], low), dtype=edges.dtype)
        hi = np.array(min(edges[end], high), dtype=edges.dtype)
        data[name] = (lo, hi, hist, edges)
    return TensorsData(CalibrationMethod.Entropy, data)


def _kl_range(hist: np.ndarray, levels: int = _QUANTIZED_BINS, max_candidates: int = 256) -> tuple[int, int]:
    """TensorRT's entropy calibration on a histogram symmetric around zero.

    For each candidate window ``[zero - i, zero + i + 1)`` (at least ``levels`` bins): ``p`` is
    the windowed histogram with the outliers folded into its end bins, ``q`` the window
    merged into ``levels`` bins and spread back over p's non-empty bins; the window with the
    smallest KL(p‖q) wins. Vectorised per candidate (onnxruntime's loop is pure Python).
    Returns edge indices (start, end).
    """
    n = hist.size
    zero, half = n // 2, levels // 2
    cumsum = np.concatenate([[0.0], np.cumsum(hist)])
    candidates = list(range(half, zero + 1))
    step = max(1, len(candidates) // max_candidates)
    chosen = candidates[::step] + ([candidates[-1]] if (len(candidates) - 1) % step else [])
    best, best_window = np.inf, (max(zero - candidates[-1], 0), n)
    for i in chosen:
        start, end = zero - i, min(zero + i + 1, n)
        window = hist[start:end]
        p = window.copy()
        p[0] += cumsum[start]
        p[-1] += cumsum[n] - cumsum[end]
        per_level = window.size // levels
        used = per_level * levels
        merged = window[:used].reshape(levels, per_level).sum(1)
        merged[-1] += window[used:].sum()
        nonzero = p != 0
        counts = nonzero[:used].reshape(levels, per_level).sum(1)
        q = np.zeros_like(p)
        spread = np.divide(merged, counts, out=np.zeros_like(merged), where=counts > 0)
        q[:used] = np.repeat(spread, per_level) * nonzero[:used]
        divergence = _kl(p, q)
        if divergence < best:
            best, best_window = divergence, (start, end)
    return best_window


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(p‖q) of two histograms, zeros smoothed to ``eps`` as onnxruntime/MXNet do."""
    def smooth(h):
        zeros = h == 0
        if zeros.all():
            return None
        h = h + eps * zeros - eps * zeros.sum() / (~zeros).sum() * (~zeros)
        return h / h.sum()

    p, q = smooth(p), smooth(q)
    if p is None or q is None or (q <= 0).any() or (p <= 0).any():
        return np.inf
    return float(np.sum(p * np.log(p / q)))


def _glob(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def _op_types_to_quantize() -> list[str]:
    """What quantize_static quantizes by default: every op its QDQ and QLinear registries know."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


class _OneSample:
    """A calibration data reader holding a single sample (onnxruntime duck-types readers)."""

    def __init__(self, feeds: qc.Feeds) -> None:
        self._feeds: qc.Feeds | None = feeds

    def get_next(self) -> qc.Feeds | None:
        feeds, self._feeds = self._feeds, None
        return feeds

    def __iter__(self):
        return self

    def __next__(self):
        feeds = self.get_next()
        if feeds is None:
            raise StopIteration
        return feeds
