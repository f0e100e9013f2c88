"""Helpers shared by the quantization passes (``int8``, ``int8-dynamic``, ``fp16``).

* skipping: :func:`quantizable_proto`, :func:`quantized_ops` (already-quantized models are
  skipped, not quantized twice), :func:`count_float_values`, :func:`exclusion` (``exclude=``
  matches a node's name by glob or its op type exactly);
* :func:`quiet`: onnxruntime.quantization and onnxconverter-common print and log on the root
  logger; stdout may carry the model, so both go to this module's logger at DEBUG;
* calibration feeds: :func:`input_specs`, :func:`check_feeds` (a batch that does not fit the
  inputs is a one-line :class:`~onnxopt.errors.InputError`), :func:`iter_samples` (one-sample
  feeds, one batch held at a time), :func:`random_samples` (seeded, from the graph),
  :class:`RealTokens` (token samples without their trailing padding);
* preparing a model for onnxruntime's tools: :func:`name_nodes`, :func:`rename_colliding`,
  :func:`upgrade_opset`, :func:`strip_initializer_value_info`, :func:`restore_model_fields`;
* onnxruntime: :func:`ort_session` and :func:`check_loads`; temporary files (``scratch_dir``,
  ``contained``, from :mod:`onnxopt.runtime.scratch`); :class:`StepClock` (time per step).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt import irutil
from onnxopt.analysis import node_costs
from onnxopt.analysis.inputs import attention_mask, random_feeds
from onnxopt.errors import InputError
from onnxopt.runtime import create_session, first_line
from onnxopt.runtime.scratch import contained, scratch_dir  # noqa: F401 - the passes call them as qc.*

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]

#: Op types that mean "this model is already quantized".
QUANTIZED_OP_TYPES = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
    "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
    "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat",
    "QLinearSoftmax", "QLinearWhere", "QAttention", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM",
    "MatMulIntegerToFloat", "MatMulNBits", "QOrderedMatMul",
})

#: Names onnxruntime's quantizers derive from a tensor name ``t``: ``t + suffix``.
GENERATED_SUFFIXES = (
    "_scale", "_zero_point", "_quantized", "_QuantizeLinear", "_DequantizeLinear",
    "_QuantizeLinear_Input", "_QuantizeLinear_Output", "_DequantizeLinear_Output",
    "_ReduceMin", "_ReduceMax", "_ReduceMin_Reshape", "_ReduceMax_Reshape", "_convert",
)


def quantizable_proto(model: ir.Model, pass_name: str) -> tuple[onnx.ModelProto | None, str | None]:
    """The model as protobuf for a quantizer, or the reason the pass skips it."""
    found = quantized_ops(model)
    if found:
        return None, f"the model is already quantized ({', '.join(found)} present)"
    if count_float_values(model) == 0:
        return None, "the model has no float32 tensors to quantize"
    proto = ir.to_proto(model)
    if proto.ByteSize() > irutil.PROTOBUF_LIMIT:
        return None, f"models over 2 GB are not supported by the {pass_name} pass"
    return proto, None


def unchanged(model: ir.Model) -> ir.passes.PassResult:
    """The result of a functional pass that changed nothing (onnx_ir wants a new model object)."""
    return ir.passes.PassResult(model.clone(), False)


def all_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Every node, subgraphs (If/Loop/Scan bodies) included."""
    return iter(ir.traversal.RecursiveGraphIterator(model.graph))


def quantized_ops(model: ir.Model) -> list[str]:
    """Sorted op types that show the model is already quantized."""
    return sorted({n.op_type for n in all_nodes(model) if n.op_type in QUANTIZED_OP_TYPES})


def count_float_values(model: ir.Model, dtype: ir.DataType = ir.DataType.FLOAT) -> int:
    """How many graph inputs, initializers and typed node outputs have element type ``dtype``."""
    graph = model.graph
    values = [*graph.inputs, *graph.initializers.values()]
    values.extend(v for n in all_nodes(model) for v in n.outputs)
    count = sum(1 for v in values if v.type is not None and getattr(v.type, "dtype", None) == dtype)
    # Constant nodes' outputs may be untyped before shape inference.
    for node in all_nodes(model):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.outputs[0].type is None:
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR and attr.as_tensor().dtype == dtype:
                count += 1
    return count


def exclusion(node: ir.Node | onnx.NodeProto, patterns: Iterable[str]) -> str | None:
    """The first pattern that excludes ``node`` (name glob or exact op type), else None."""
    for pattern in patterns:
        if node.op_type == pattern or (node.name and fnmatch.fnmatchcase(node.name, pattern)):
            return pattern
    return None


def name_nodes(model: ir.Model) -> None:
    """Give every unnamed or duplicate-named node of the main graph a unique name.

    onnxruntime.quantization and the float16 converter key on node names (exclusion
    lists, generated Cast names), so empty or repeated names break them.
    """
    taken = {n.name for n in model.graph if n.name}
    seen: set[str] = set()
    for index, node in enumerate(model.graph):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{index}"
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        node.name = name
        taken.add(name)
        seen.add(name)


def rename_colliding(model: ir.Model) -> list[str]:
    """Rename values whose name the quantizer would also generate from another tensor's name.

    A Keras export names a BatchNormalization weight ``batch_normalization_scale`` and the
    node's output ``batch_normalization``; the quantizer names that activation's scale
    ``batch_normalization_scale`` too, and the result is invalid. Only the name changes.
    """
    graph = model.graph
    values = {v.name: v for v in graph.initializers.values()}
    values.update({v.name: v for n in graph for v in n.outputs if v.name})
    protected = {v.name for v in (*graph.inputs, *graph.outputs)}
    taken = set(values) | protected

    def collides(name: str) -> bool:
        return any(name.endswith(s) and name[: -len(s)] in taken for s in GENERATED_SUFFIXES)

    renamed = []
    for name, value in sorted(values.items()):
        if name in protected or not collides(name):
            continue
        new, k = f"{name}_w", 0
        while new in taken or collides(new):
            k += 1
            new = f"{name}_w{k}"
        value.name = new
        taken.add(new)
        renamed.append(name)
    return renamed


class _LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def quiet(tool: str) -> Iterator[list[str]]:
    """Keep a third-party tool off stdout and off the user's log output.

    Yields a list that receives the warnings the tool logged (one line each) once the
    block ends; everything printed or logged is also sent to this module's logger at
    DEBUG level.
    """
    warnings_out: list[str] = []
    printed = io.StringIO()
    root = logging.getLogger()
    collector = _LogCollector()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = [collector]
    root.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(printed):
            yield warnings_out
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        if printed.getvalue().strip():
            logger.debug("%s printed: %s", tool, printed.getvalue().strip()[:2000])
        for record in collector.records:
            message = record.getMessage().strip()
            logger.debug("%s: %s", tool, message)
            if record.levelno >= logging.WARNING and message:
                warnings_out.append(message.splitlines()[0])


# ---------------------------------------------------------------- calibration feeds


@dataclass(frozen=True)
class InputSpec:
    """A graph input that data must be fed to: name, numpy dtype, declared dims (None = dynamic)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | None, ...] | None

    def shape_str(self) -> str:
        if self.dims is None:
            return "[?]"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"


def input_specs(proto: onnx.ModelProto) -> list[InputSpec]:
    initializers = {t.name for t in proto.graph.initializer}
    specs = []
    for value in proto.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        tensor = value.type.tensor_type
        dims = None
        if tensor.HasField("shape"):
            # a dim_value <= 0 is dynamic too (Paddle exports write -1)
            dims = tuple(int(d.dim_value) if d.dim_value > 0 else None for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims))
    return specs


def _same_kind(a: np.dtype, b: np.dtype) -> bool:
    kinds = ("f", "iu", "b")
    return any(a.kind in k and b.kind in k for k in kinds)


def check_feeds(feeds: object, specs: list[InputSpec], origin: str) -> Feeds:
    """Check one batch against the model inputs; cast to the input dtypes. InputError otherwise."""
    if not isinstance(feeds, dict):
        raise InputError(f"{origin}: expected a mapping of input name to array, got {type(feeds).__name__}")
    wanted = {s.name for s in specs}
    missing = sorted(wanted - set(feeds))
    extra = sorted(set(feeds) - wanted)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(f"'{m}'" for m in missing))
        if extra:
            parts.append("unknown " + ", ".join(f"'{e}'" for e in extra))
        expected = ", ".join(f"'{s.name}'" for s in specs)
        raise InputError(f"{origin} does not match the model inputs: {'; '.join(parts)} (model inputs: {expected})")
    out: Feeds = {}
    for spec in specs:
        array = np.asarray(feeds[spec.name])
        if not _same_kind(array.dtype, spec.dtype):
            raise InputError(
                f"{origin}: input '{spec.name}' is {array.dtype}, the model wants {spec.dtype}"
            )
        if spec.dims is not None:
            if array.ndim != len(spec.dims):
                raise InputError(
                    f"{origin}: input '{spec.name}' has shape {tuple(array.shape)}, the model wants "
                    f"{spec.shape_str()} (rank {len(spec.dims)})"
                )
            for axis, (got, want) in enumerate(zip(array.shape, spec.dims)):
                if want is not None and got != want:
                    raise InputError(
                        f"{origin}: input '{spec.name}' has shape {tuple(array.shape)}, the model wants "
                        f"{spec.shape_str()} (dimension {axis} differs)"
                    )
        if array.size == 0:
            raise InputError(f"{origin}: input '{spec.name}' is empty (shape {tuple(array.shape)})")
        out[spec.name] = array if array.dtype == spec.dtype else array.astype(spec.dtype)
    return out


def splittable(specs: list[InputSpec]) -> bool:
    """Whether batches can be split into one-sample feeds: every input has a dynamic first axis."""
    return bool(specs) and all(s.dims is not None and len(s.dims) > 0 and s.dims[0] is None for s in specs)


def iter_samples(batches: Iterable[object], specs: list[InputSpec], origin: str, limit: int | None) -> Iterator[Feeds]:
    """Checked feeds, one sample at a time where the batch axis is dynamic (else one batch)."""
    split = splittable(specs)
    produced = 0
    for raw in batches:
        feeds = check_feeds(raw, specs, origin)
        if split:
            sizes = {a.shape[0] for a in feeds.values()}
            if len(sizes) != 1:
                raise InputError(f"{origin}: inputs disagree on the batch size ({sorted(sizes)})")
            for i in range(sizes.pop()):
                if limit is not None and produced >= limit:
                    return
                yield {k: v[i : i + 1] for k, v in feeds.items()}
                produced += 1
        else:
            if limit is not None and produced >= limit:
                return
            yield feeds
            produced += 1
        del feeds, raw


def cut_trailing_padding(feeds: Feeds, specs: list[InputSpec]) -> tuple[Feeds, int] | None:
    """(a token sample without its trailing padding, the positions kept): every feed shaped
    [batch, seq, …] like the attention mask (an input named as
    :data:`onnxopt.analysis.inputs.MASK_NAME` says) cut after the last position the mask
    marks real. None where there is no mask, nothing to cut, or the model declares a fixed
    sequence length. Leading padding stays, so real tokens keep their positions."""
    mask = attention_mask(feeds)
    if mask is None:
        return None
    length = mask.shape[1]
    real = np.flatnonzero(mask.any(axis=0))
    if real.size == 0 or real[-1] + 1 == length:
        return None
    kept = int(real[-1]) + 1
    declared = {s.name: s.dims for s in specs}
    out: Feeds = {}
    for name, value in feeds.items():
        if value.ndim >= 2 and value.shape[:2] == mask.shape:
            dims = declared.get(name)
            if dims is not None and len(dims) > 1 and dims[1] is not None:
                return None  # a fixed sequence length: a shorter sample would not fit
            value = value[:, :kept]
        out[name] = value
    return out, kept


class RealTokens:
    """Calibration samples of a token model without their trailing padding
    (:func:`cut_trailing_padding`): padded positions are most of a short text's, and their
    activations would set the ranges the real tokens are quantized on. ``samples()`` as
    given, each call a fresh stream; ``positions``/``kept``: the sequence positions of the
    current (or last) stream so far, and how many of them were kept."""

    def __init__(self, samples, specs: list[InputSpec]) -> None:
        self._samples = samples
        self._specs = specs
        self.positions = self.kept = 0

    def __call__(self) -> Iterator[Feeds]:
        self.positions = self.kept = 0
        for feeds in self._samples():
            mask = attention_mask(feeds)
            cut = cut_trailing_padding(feeds, self._specs)
            if mask is not None:
                self.positions += mask.size
                self.kept += mask.shape[0] * (cut[1] if cut is not None else mask.shape[1])
            sample = cut[0] if cut is not None else feeds
            del feeds, cut, mask  # hold no view of the batch while the next one is read
            yield sample
            del sample

    @property
    def cut(self) -> bool:
        """Whether padding was cut off in the current (or last) stream."""
        return self.kept < self.positions


def random_samples(context, model: onnx.ModelProto, count: int) -> Iterator[Feeds]:
    """``count`` seeded one-sample feeds ``model`` can take, derived from its graph: the
    context's (set by the API), else :func:`onnxopt.analysis.inputs.random_feeds` (the same
    seed and the context's ``input_shapes``). Raises InputError or UsageError where random
    data cannot fill an input (a dtype, an input without a shape)."""
    if context.random_inputs is not None:
        return context.random_inputs(count)
    return random_feeds(model, count, seed=1, input_shapes=context.input_shapes)


def upgrade_opset(proto: onnx.ModelProto, target: int) -> tuple[onnx.ModelProto, str | None]:
    """The model at ``target`` opset if it is below (onnx's version converter), else as is.

    Returns the model and None, or the unchanged model and the converter's error.
    """
    if opset_of(proto) >= target:
        return proto, None
    try:
        converted = onnx.version_converter.convert_version(proto, target)
    except Exception as exc:  # the version converter lacks adapters for some ops
        return proto, first_line(exc)
    opsets = [(o.domain or "ai.onnx", o.version) for o in converted.opset_import]
    try:
        converted.ir_version = max(converted.ir_version, onnx.helper.find_min_ir_version_for(opsets, True))
    except Exception:
        pass
    return converted, None


def strip_initializer_value_info(proto: onnx.ModelProto) -> None:
    """Drop value_info entries of initializers (onnx_ir writes them).

    onnxruntime's quantizers and the float16 converter trip over them: shape inference
    after their rewrites reports "Inferred shape and existing shape differ", and the
    converter casts a blocked node's weight to float16 and back.
    """
    initializers = {t.name for t in proto.graph.initializer}
    kept = [v for v in proto.graph.value_info if v.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)


def opset_of(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def ort_session(model: onnx.ModelProto, provider: str = "cpu", **options):
    """An onnxruntime session for a model a pass works on: onnxruntime refusing it is the
    pass's failure (a RuntimeError with onnxruntime's first line), not the user's input's."""
    return create_session(model, provider, built=True, **options)


def check_loads(proto: onnx.ModelProto, feeds: Feeds | None = None) -> str | None:
    """None when onnxruntime (CPU) can create a session for the model (and run ``feeds``
    through it, when given), else the reason."""
    try:
        session = ort_session(proto, optimization="disable", log_level=4)
    except RuntimeError as exc:
        return first_line(exc)
    if feeds is not None:
        try:
            session.run(None, feeds)
        except Exception as exc:  # e.g. a QuantizeLinear whose scale has the wrong shape
            return "running it fails: " + first_line(exc)
    return None


def keep_value_info_of(original: onnx.ModelProto, converted: onnx.ModelProto) -> int:
    """Drop the value_info entries of ``converted`` that ``original`` did not have; returns how many.

    Shapes inferred while preparing a model (``quant_pre_process``) let onnxruntime apply
    fusions to the float parts that it cannot apply to the original, where sequence
    dimensions are symbolic, such as SkipLayerNormalization, which was slower than the Add +
    LayerNormalization it replaced on a sentence-transformer (benchmarks/RESULTS.md)."""
    keep = {v.name for v in original.graph.value_info}
    kept = [v for v in converted.graph.value_info if v.name in keep]
    dropped = len(converted.graph.value_info) - len(kept)
    del converted.graph.value_info[:]
    converted.graph.value_info.extend(kept)
    return dropped


def restore_model_fields(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """Keep the input's identity (producer, docs, metadata) and an IR version onnx accepts."""
    converted.producer_name = original.producer_name
    converted.producer_version = original.producer_version
    converted.doc_string = original.doc_string
    del converted.metadata_props[:]
    converted.metadata_props.extend(original.metadata_props)
    opsets = [(o.domain or "ai.onnx", o.version) for o in converted.opset_import]
    try:
        needed = onnx.helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    except Exception:
        needed = 3
    converted.ir_version = max(original.ir_version, converted.ir_version, needed)


# ---------------------------------------------------------------- time per step


class StepClock:
    """Wall time per named step, accumulated: ``with clock("calibration"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        return {step: round(seconds, 2) for step, seconds in self.seconds.items()}


def mac_shares(prepared: onnx.ModelProto, probe: Feeds) -> dict[str, float]:
    """Node name -> its share of the model's MACs at the shapes of ``probe`` (a sample's feeds);
    empty where shape inference fails on the graph."""
    shapes = {name: tuple(value.shape) for name, value in probe.items()}
    try:
        costs = node_costs(prepared, shapes)
    except Exception:  # shape inference fails on unusual graphs
        return {}
    total = sum(c.macs or 0 for c in costs.values())
    if total <= 0:
        return {}
    return {name: c.macs / total for name, c in costs.items() if c.macs}
