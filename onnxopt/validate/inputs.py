"""Model inputs, their shapes, and streaming data sources for validation runs.

Validation feeds the same data to two models (or one model on two providers), so this
module answers three questions: what the model wants (:func:`model_inputs`), at which
concrete shape (:func:`parse_input_shapes`, :func:`resolve_shapes`), and where the
samples come from (:func:`random_source`, :func:`open_data`).

Shapes
    A declared ``dim_value`` of 0 or less (Paddle writes -1) is dynamic, like a named or
    unnamed dim. The *batch axis* of the random source is inferred from the graph
    inputs (rules below); where it is dynamic it becomes ``batch_size``. Any other dynamic
    dimension gets a default, and one warning names every dimension defaulted:

    * a 4-D input is taken as an image: its two spatial dimensions default to **224**
      (NHWC when the last dimension is a fixed 1 or 3 and dimension 1 is not, NCHW
      otherwise), a dynamic channel dimension to 1;
    * a sequence dimension defaults to **128**: dim 1 of a rank-2 integer or bool input
      ([batch, seq] token ids and masks), or a dim named like seq, len or token;
    * every other dynamic dimension defaults to **1**.

    ``--input-shape NAME:DIMS`` overrides win over all of these; they must keep the
    model's rank and its fixed dimensions. The batch axis's value in an override only
    matters where the model fixes it: batches always hold ``batches(batch_size)`` samples.

Random inputs (derived from the graph)
    * The batch axis is dim 0 of the data inputs when it is dynamic in all of them, or
      the dynamic dim they share with a state input (ONNX's ``initial_h`` [dirs, N,
      hidden] with X [T, N, F]). Otherwise a fixed first dim *k* shared by the data
      inputs is the batch (exactly *k* samples per batch); where the fixed first dims
      differ, every sample is fed as declared, one per batch.
    * Recurrent state is zeros (at most one dynamic dim; :attr:`InputInfo.state`): an
      input that reaches an LSTM, GRU or RNN's ``initial_h``/``initial_c`` (directly, in a
      subgraph, or through the value ops listed for indices below), or one named h, c,
      h0, c0, hx, cx, state, states, initial_h/c or init_h/c beside an output of the same
      shape (dims dynamic in either match; Silero's h → hn). Anything else, e.g.
      ``encoder_hidden_states``, is data. A fully fixed state is fed
      unchanged with every batch and pins the batch to one sample where the batch axis
      is dynamic (its own batch dim is fixed); a state whose dynamic dim is the batch
      follows the batch. Other fully fixed inputs beside a dynamic batch are drawn once
      and fed unchanged.
    * A size-1 input named sr, sample_rate or sampling_rate is 16000. Any other scalar
      is drawn per sample and forces batches of one sample, fed without the sample axis.
    * Integer inputs that reach a ``Gather`` as its indices (directly or through Cast,
      Unsqueeze, Squeeze, Reshape, Flatten, Expand, Transpose, Slice, Tile, Concat, Split
      or Gather of their values) take values in [0, rows), rows being the table's dim on
      the Gather axis when the table is an initializer or a ``Constant``
      (:attr:`InputInfo.index_high`). Inputs named mask, ``*_mask`` are ones. Other
      integers are in [0, 10), floats standard normal, bools fair coins.

Samples and batches
    A *sample* is one slice along the batch axis of every per-sample input (the first
    axis for ``.npz``/``.npy`` data and images). Sources never hold the data set in
    memory: :meth:`DataSource.batches` reads one batch at a time (``.npy`` and
    uncompressed ``.npz`` members are memory-mapped; image folders decode one batch of
    files at a time). Batch ids are file names for images and sample indices (as
    strings, counted in the original source, so subsets keep them) otherwise.

    The last batch may be smaller. Batch size is clamped to the model: when an input's
    batch axis is fixed at *k* (e.g. YOLO's ``images`` [1,3,416,416]) every batch has
    exactly *k* samples — never more, and never fewer, since the model accepts nothing
    else; a remainder smaller than *k* is dropped with a warning. A rank-0 (scalar)
    input forces batches of one sample, fed without the sample axis.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxopt.errors import InputError, UsageError

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

Dim = int | str | None
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_SPATIAL = 224
DEFAULT_SEQUENCE = 128
DEFAULT_DIM = 1
DEFAULT_SAMPLE_RATE = 16000
#: Random integer inputs that index no table are drawn from [0, RANDOM_INT_HIGH): small
#: and non-negative, so they are valid counts and small indices for most models.
RANDOM_INT_HIGH = 10

_SEQUENCE_DIM = re.compile(r"seq|len|token", re.IGNORECASE)
_MASK_NAME = re.compile(r"(?:.*[_./-])?mask")
#: Names that make an input state when an output has its shape (a state in/out pair).
_STATE_NAME = re.compile(r"[hc]|[hc]0|[hc]x|states?|initial_[hc]|init_[hc]")
#: Recurrent ops and their state inputs (initial_h, initial_c).
_RECURRENT_STATE_SLOTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}
_RATE_NAME = re.compile(r"sr|sample_?rate|sampling_rate")
#: Ops whose output carries (some of) the values of input 0 (any input for Concat): an
#: index input followed through them still ends up as indices.
_VALUE_OPS = frozenset({"Cast", "CastLike", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand",
                        "Transpose", "Slice", "Tile", "Concat", "Split", "Gather"})


@dataclass(frozen=True)
class InputInfo:
    """One graph input: name, numpy dtype and declared shape.

    ``shape`` items are ints (fixed, > 0), strings (named dynamic dims), or None (unnamed
    dynamic dims). ``shape`` itself is None when the model declares no shape at all.
    ``index_high``: for an integer input used as ``Gather`` indices, the number of rows of
    the smallest table it indexes (random values stay below it); None otherwise.
    ``state``: recurrent state, judged from the graph by :func:`model_inputs` (module
    docstring); random inputs fill it with zeros.
    """

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None
    index_high: int | None = None
    state: bool = False

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def shape_str(self) -> str:
        """``[N, 3, 224, 224]`` with named dims shown by name and unnamed ones as ``?``."""
        if self.shape is None:
            return "[unknown rank]"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


def _elem_to_dtype(elem_type: int, name: str) -> np.dtype:
    import onnx.helper

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(
            f"input '{name}' has ONNX element type {elem_type}, which has no numpy type"
        ) from error


def model_inputs(model: onnx.ModelProto) -> list[InputInfo]:
    """The graph inputs that are not initializers, in graph order."""
    initializers = {init.name for init in model.graph.initializer}
    result = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if value.type.WhichOneof("value") != "tensor_type":
            kind = value.type.WhichOneof("value") or "untyped"
            raise InputError(f"input '{value.name}' is {kind}, not a tensor; onnxopt feeds tensors only")
        tensor = value.type.tensor_type
        shape: tuple[Dim, ...] | None = None
        if tensor.HasField("shape"):
            dims: list[Dim] = []
            for dim in tensor.shape.dim:
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    dims.append(int(dim.dim_value))
                elif dim.HasField("dim_param") and dim.dim_param:
                    dims.append(dim.dim_param)
                else:  # unnamed, or a dim_value <= 0 (Paddle exports -1 for dynamic)
                    dims.append(None)
            shape = tuple(dims)
        result.append(InputInfo(value.name, _elem_to_dtype(tensor.elem_type, value.name), shape))
    integers = [info.name for info in result if info.dtype.kind in "iu"]
    bounds = _index_bounds(model.graph, integers) if integers else {}
    states = _state_inputs(model, result)
    return [InputInfo(i.name, i.dtype, i.shape, bounds.get(i.name), i.name in states) for i in result]


def _subgraphs(node) -> Iterator:
    import onnx

    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _state_inputs(model: onnx.ModelProto, inputs: Sequence[InputInfo]) -> set[str]:
    """Names of the inputs that are recurrent state (module docstring): those reaching an
    RNN's initial state, and named ones that an output of the same shape pairs with."""
    consumers: dict[str, list[tuple[object, int]]] = defaultdict(list)
    carried: dict[str, list[str]] = defaultdict(list)  # an If branch's output → the If's output

    def scan(graph) -> None:
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            for position, name in enumerate(node.input):
                if name:
                    consumers[name].append((node, position))
            for sub in _subgraphs(node):
                if node.op_type == "If":
                    for out, parent in zip(sub.output, node.output, strict=False):
                        carried[out.name].append(parent)
                scan(sub)

    scan(model.graph)
    states: set[str] = set()
    for info in inputs:
        seen, todo = {info.name}, [info.name]
        while todo and info.name not in states:
            name = todo.pop()
            following = list(carried.get(name, ()))
            for node, position in consumers.get(name, ()):
                if position in _RECURRENT_STATE_SLOTS.get(node.op_type, ()):
                    states.add(info.name)
                elif node.op_type in _VALUE_OPS and (position == 0 or node.op_type == "Concat"):
                    following.extend(node.output)
            for out in following:
                if out and out not in seen:
                    seen.add(out)
                    todo.append(out)
    named = [i for i in inputs if i.name not in states and i.shape and _STATE_NAME.fullmatch(_base_name(i.name))]
    if named:
        outputs = _output_shapes(model.graph)
        if any(shape is None for shape in outputs) and not all(any(_pairs(i.shape, o) for o in outputs if o) for i in named):
            outputs = _output_shapes(_inferred_graph(model)) or outputs
        states.update(i.name for i in named if any(_pairs(i.shape, o) for o in outputs if o))
    return states


def _output_shapes(graph) -> list[tuple[Dim, ...] | None]:
    """Declared shape of every graph output (dims as in :class:`InputInfo`), None where unknown."""
    if graph is None:
        return []
    shapes: list[tuple[Dim, ...] | None] = []
    for value in graph.output:
        tensor = value.type.tensor_type if value.type.WhichOneof("value") == "tensor_type" else None
        if tensor is None or not tensor.HasField("shape"):
            shapes.append(None)
            continue
        shapes.append(tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                            for d in tensor.shape.dim))
    return shapes


def _inferred_graph(model: onnx.ModelProto):
    """The graph with output shapes filled in by ONNX shape inference; None if it fails."""
    import onnx.shape_inference

    try:
        return onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - inference is a best effort (e.g. over 2 GB, unknown ops)
        return None


def _pairs(state: tuple[Dim, ...], output: tuple[Dim, ...]) -> bool:
    """An output of the same shape as a state input: same rank, every dim equal or dynamic
    in either, and at least one dim fixed in both."""
    if len(state) != len(output):
        return False
    both = [(a, b) for a, b in zip(state, output, strict=True) if not _is_dynamic(a) and not _is_dynamic(b)]
    return bool(both) and all(a == b for a, b in both)


def _index_bounds(graph, names: Iterable[str]) -> dict[str, int]:
    """{input: rows of the smallest constant table it reaches as ``Gather`` indices}."""
    import onnx

    tables: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in graph.initializer}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    tables[node.output[0]] = tuple(attr.t.dims)
        for position, name in enumerate(node.input):
            if name:
                consumers[name].append((node, position))
    bounds: dict[str, int] = {}
    for start in names:
        rows: list[int] = []
        seen, todo = {start}, [start]
        while todo:
            for node, position in consumers.get(todo.pop(), ()):
                if node.op_type == "Gather" and position == 1:
                    dims = tables.get(node.input[0])
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if dims and -len(dims) <= axis < len(dims) and dims[axis] > 0:
                        rows.append(int(dims[axis]))
                elif node.op_type in _VALUE_OPS and (position == 0 or node.op_type == "Concat"):
                    for out in node.output:
                        if out and out not in seen:
                            seen.add(out)
                            todo.append(out)
        if rows:
            bounds[start] = min(rows)
    return bounds


def parse_input_shapes(specs: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME:DIMS`` specs such as ``input:1x3x224x224`` or ``input:0:1x3x224x224``.

    Names may contain ':' (TensorFlow exports): the split is on the last one. DIMS are
    positive integers joined by 'x'.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims_text = spec.rpartition(":")
        if not sep or not name:
            raise UsageError(f"bad --input-shape '{spec}': expected NAME:DIMS such as input:1x3x224x224")
        try:
            dims = tuple(int(part) for part in dims_text.lower().split("x"))
        except ValueError:
            raise UsageError(
                f"bad --input-shape '{spec}': dimensions must be positive integers joined by 'x'"
            ) from None
        if any(d < 1 for d in dims):
            raise UsageError(f"bad --input-shape '{spec}': dimensions must be positive integers")
        if name in shapes:
            raise UsageError(f"bad --input-shape '{spec}': input '{name}' is given twice")
        shapes[name] = dims
    return shapes


def detect_channels_last(shape: Sequence[Dim]) -> bool:
    """True for a 4-D shape laid out NHWC: last dim a fixed 1 or 3 and dim 1 not."""
    return len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3)


def _is_dynamic(dim: Dim) -> bool:
    return not (isinstance(dim, int) and dim > 0)


def _base_name(name: str) -> str:
    """Lower case, without a TensorFlow ``:0`` suffix."""
    return re.sub(r":\d+$", "", name).lower()


def _is_sequence_dim(info: InputInfo, axis: int, dim: Dim) -> bool:
    if isinstance(dim, str) and _SEQUENCE_DIM.search(dim):
        return True
    return info.shape is not None and len(info.shape) == 2 and axis == 1 and info.dtype.kind in "iub"


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Layout:
    """How samples map onto the model's inputs.

    ``axes``: per-sample inputs and their batch axis (samples stacked on it), or None for
    an input fed as declared (then a batch is one sample). ``constants``: inputs fed
    unchanged with every batch. ``zeros``: inputs filled with zeros (recurrent state).
    """

    axes: dict[str, int | None]
    constants: frozenset[str] = frozenset()
    zeros: frozenset[str] = frozenset()
    rates: frozenset[str] = frozenset()
    fixed_batch: int | None = None
    fixed_by: str | None = None
    notes: tuple[str, ...] = field(default=())


def _fixed_batch(inputs: Sequence[InputInfo]) -> tuple[int | None, str | None]:
    """(batch size the model imposes, the input that imposes it): a fixed first dim, or 1
    for a scalar input; (None, None) when the batch is free."""
    fixed: dict[str, int] = {}
    for info in inputs:
        if info.shape is None:
            continue
        if len(info.shape) == 0:
            fixed[info.name] = 1
        elif not _is_dynamic(info.shape[0]):
            fixed[info.name] = info.shape[0]
    values = set(fixed.values())
    if len(values) > 1:
        detail = ", ".join(f"'{n}'={v}" for n, v in fixed.items())
        raise InputError(f"the model's inputs have different fixed first dimensions ({detail}); cannot batch samples")
    if not fixed:
        return None, None
    name, value = next(iter(fixed.items()))
    return value, name


def _first_axis_layout(inputs: Sequence[InputInfo]) -> _Layout:
    """Data files and images: samples on the first axis of every input, scalars as declared."""
    fixed, by = _fixed_batch(inputs)
    axes = {i.name: None if i.shape is not None and len(i.shape) == 0 else 0 for i in inputs}
    return _Layout(axes, fixed_batch=fixed, fixed_by=by)


def _infer_layout(inputs: Sequence[InputInfo]) -> _Layout:
    """The batch axis of every input of a random source; see the module docstring."""
    rates = [i for i in inputs if _RATE_NAME.fullmatch(_base_name(i.name)) and i.shape is not None
             and all(d == 1 for d in i.shape)]
    states = [i for i in inputs if i not in rates and i.state and i.shape and sum(map(_is_dynamic, i.shape)) <= 1]
    primary = [i for i in inputs if i not in rates and i not in states]
    if not primary:
        primary, states = states, []
    scalars = [i for i in primary if i.shape is not None and len(i.shape) == 0]
    ranked = [i for i in primary if i not in scalars]
    dynamic = [i for i in ranked if i.shape is None or any(map(_is_dynamic, i.shape))]

    axes: dict[str, int | None] = {}
    constants: set[str] = set()
    notes: list[str] = []
    fixed: dict[str, int] = {}
    label = next((d for s in states for d in s.shape if isinstance(d, str)
                  and dynamic and all(i.shape is not None and d in i.shape for i in dynamic)), None)
    if label is not None:
        axes.update({i.name: i.shape.index(label) for i in dynamic})
    elif dynamic and all(i.shape is None or _is_dynamic(i.shape[0]) for i in dynamic):
        axes.update({i.name: 0 for i in dynamic})
    batch_dynamic = bool(axes)
    if batch_dynamic:
        constants.update(i.name for i in ranked if i.name not in axes)
    else:
        firsts = {i.name: i.shape[0] for i in ranked if i.shape is not None and not _is_dynamic(i.shape[0])}
        if len(set(firsts.values())) <= 1:
            axes.update({i.name: 0 for i in ranked})
            fixed.update(firsts)
        else:
            axes.update({i.name: None for i in ranked})
            detail = ", ".join(f"'{i.name}' {i.shape_str()}" for i in ranked)
            notes.append(f"inputs {detail} have different fixed first dimensions: each sample is fed as declared")
    axes.update({i.name: None for i in scalars})

    pinned: str | None = None
    for state in states:
        dims = state.shape
        if label is not None and label in dims:
            axes[state.name] = dims.index(label)
        elif any(map(_is_dynamic, dims)):
            axes[state.name] = next(a for a, d in enumerate(dims) if _is_dynamic(d))
        else:
            constants.add(state.name)
            if batch_dynamic and pinned is None:
                pinned = state.name
    constants.update(i.name for i in rates)

    declared = [name for name, axis in axes.items() if axis is None]
    if declared or pinned:
        by = declared[0] if declared else pinned
        if pinned and not declared:
            notes.append(f"state input '{pinned}' has a fixed shape: one sample per batch")
        if any(k > 1 for k in fixed.values()):  # k samples and one sample at once: feed those as declared too
            axes.update({name: None for name in fixed})
        fixed_batch: int | None = 1
    elif fixed:
        by, fixed_batch = next(iter(fixed.items()))
    else:
        by, fixed_batch = None, None
    if states:
        notes.append(f"random inputs: {', '.join(repr(s.name) for s in states)} (recurrent state) are zeros")
    if rates:
        notes.append(f"random inputs: {', '.join(repr(r.name) for r in rates)} = {DEFAULT_SAMPLE_RATE} (sample rate)")
    per_sample = {name: axis for name, axis in axes.items() if name not in constants}
    return _Layout(per_sample, frozenset(constants), frozenset(s.name for s in states),
                   frozenset(r.name for r in rates), fixed_batch, by, tuple(notes))


def resolve_shapes(
    inputs: Sequence[InputInfo],
    overrides: Mapping[str, tuple[int, ...]] | None = None,
    batch_size: int = 1,
) -> dict[str, tuple[int, ...]]:
    """Concrete shape (batch axis included) for every input; see the module docstring."""
    overrides = dict(overrides or {})
    known = {info.name for info in inputs}
    for name in overrides:
        if name not in known:
            valid = ", ".join(f"'{n}'" for n in known)
            raise UsageError(f"--input-shape names '{name}', which is not an input of the model (inputs: {valid})")
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")

    layout = _infer_layout(inputs)
    shapes: dict[str, tuple[int, ...]] = {}
    defaulted: list[str] = []
    for info in inputs:
        if info.name in overrides:
            shapes[info.name] = _check_override(info, overrides[info.name])
            continue
        if info.shape is None:
            raise UsageError(f"input '{info.name}' has no shape in the model; give --input-shape {info.name}:DIMS")
        batch_axis = layout.axes.get(info.name)
        dims: list[int] = []
        notes: list[str] = []
        spatial = (1, 2) if detect_channels_last(info.shape) else (2, 3)
        for axis, dim in enumerate(info.shape):
            if not _is_dynamic(dim):
                dims.append(dim)
                continue
            if axis == batch_axis or (batch_axis is None and axis == 0):
                dims.append(batch_size)
                continue
            if len(info.shape) == 4 and axis in spatial:
                value = DEFAULT_SPATIAL
            elif _is_sequence_dim(info, axis, dim):
                value = DEFAULT_SEQUENCE
            else:
                value = DEFAULT_DIM
            dims.append(value)
            label = f" ({dim})" if isinstance(dim, str) else ""
            notes.append(f"{axis}{label}={value}")
        if notes:
            defaulted.append(f"input '{info.name}' {info.shape_str()} dims " + ", ".join(notes))
        shapes[info.name] = tuple(dims)
    if defaulted:
        logger.warning(
            "dynamic dimensions defaulted: %s (set them with --input-shape NAME:DIMS)", "; ".join(defaulted)
        )
    return shapes


def _check_override(info: InputInfo, dims: tuple[int, ...]) -> tuple[int, ...]:
    spec = f"{info.name}:{'x'.join(map(str, dims))}"
    if info.shape is None:
        return dims
    if len(dims) != len(info.shape):
        raise UsageError(
            f"--input-shape {spec} has rank {len(dims)} but input '{info.name}' {info.shape_str()} has rank {len(info.shape)}"
        )
    for axis, (want, have) in enumerate(zip(dims, info.shape, strict=True)):
        if not _is_dynamic(have) and have != want:
            raise UsageError(
                f"--input-shape {spec}: dim {axis} of input '{info.name}' {info.shape_str()} is fixed at {have}"
            )
    return dims


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Batch:
    """One batch: ``feeds`` for ``InferenceSession.run`` and one id per sample."""

    feeds: dict[str, np.ndarray]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


class DataSource:
    """A sized, sliceable stream of samples; subclasses implement :meth:`_read`.

    ``len(source)`` is the number of samples; :meth:`batches` streams them; :meth:`subset`
    and :meth:`split` give disjoint views (e.g. calibration and evaluation) that read
    nothing until iterated.
    """

    def __init__(self, inputs: Sequence[InputInfo], size: int, what: str, layout: _Layout | None = None):
        self.inputs: tuple[InputInfo, ...] = tuple(inputs)
        self.what = what
        self.layout = layout if layout is not None else _first_axis_layout(self.inputs)
        self.fixed_batch, self._fixed_by = self.layout.fixed_batch, self.layout.fixed_by
        #: Arrays fed unchanged with every batch (recurrent state, sample rate).
        self.constants: dict[str, np.ndarray] = {}
        self._total = size
        self._start = 0
        self._stop = size

    @property
    def description(self) -> str:
        """E.g. "500 images from imagenet (...)", or "100 images from … (samples 0–99 of 500)"."""
        text = f"{len(self)} {self.what}"
        if len(self) != self._total:
            text += f" (samples {self._start}–{self._stop - 1} of {self._total})"
        return text

    def __len__(self) -> int:
        return self._stop - self._start

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self)} samples [{self._start}:{self._stop}] {self.description}>"

    def _read(self, start: int, stop: int) -> tuple[dict[str, np.ndarray], list[str]]:
        """Samples ``start:stop`` (absolute indices) of the per-sample inputs, each array
        with a leading sample axis."""
        raise NotImplementedError

    def subset(self, start: int, stop: int | None = None) -> DataSource:
        """Samples ``start:stop`` of this source (clipped like a slice, non-negative bounds)."""
        if start < 0 or (stop is not None and stop < 0):
            raise UsageError(f"subset bounds must be non-negative, got {start}:{stop}")
        size = len(self)
        stop = size if stop is None else min(stop, size)
        start = min(start, stop)
        view = copy.copy(self)
        view._start = self._start + start
        view._stop = self._start + stop
        return view

    def split(self, n_first: int) -> tuple[DataSource, DataSource]:
        """``(first n_first samples, the rest)``: disjoint, e.g. calibration and evaluation."""
        return self.subset(0, n_first), self.subset(n_first)

    def effective_batch_size(self, batch_size: int) -> int:
        """The batch size actually used: ``batch_size``, or what the model imposes."""
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        return self.fixed_batch or batch_size

    def batches(self, batch_size: int = 1) -> Iterator[Batch]:
        """Stream the samples in batches of ``effective_batch_size(batch_size)``."""
        size = self.effective_batch_size(batch_size)
        if size != batch_size:
            log = logger.warning if batch_size > size else logger.info
            log("input '%s' fixes the batch: using batch size %d instead of %d", self._fixed_by, size, batch_size)
        usable = len(self) - len(self) % size if self.fixed_batch else len(self)
        if usable < len(self):
            logger.warning(
                "the model takes batches of exactly %d samples: the last %d of %d samples are not used",
                size, len(self) - usable, len(self),
            )
        end = self._start + usable
        for start in range(self._start, end, size):
            read, ids = self._read(start, min(start + size, end))
            feeds: dict[str, np.ndarray] = {}
            for info in self.inputs:
                if info.name in self.constants:
                    feeds[info.name] = self.constants[info.name]
                    continue
                array = read[info.name]
                axis = self.layout.axes.get(info.name, 0)
                if axis is None:  # fed as declared: the batch is this one sample
                    array = array.reshape(array.shape[1:])
                elif axis:
                    array = np.ascontiguousarray(np.moveaxis(array, 0, axis))
                feeds[info.name] = array
            yield Batch(feeds, ids)


class RandomSource(DataSource):
    """Seeded random samples: sample *i* depends only on (seed, i), whatever the batching."""

    def __init__(self, inputs: Sequence[InputInfo], shapes: Mapping[str, tuple[int, ...]], num_samples: int, seed: int):
        for info in inputs:
            if info.dtype.kind not in "fiub":
                raise InputError(f"input '{info.name}' has dtype {info.dtype}: random data covers numbers and bools only")
        layout = _infer_layout(inputs)
        super().__init__(inputs, num_samples, f"random samples (seed {seed})", layout)
        for note in layout.notes:
            logger.info("%s", note)
        self.seed = seed
        self.sample_shapes: dict[str, tuple[int, ...]] = {}
        full: dict[str, tuple[int, ...]] = {}
        for info in inputs:
            if info.name not in shapes:
                raise UsageError(f"no shape for input '{info.name}'")
            full[info.name] = shape = tuple(shapes[info.name])
            axis = layout.axes.get(info.name)
            self.sample_shapes[info.name] = shape if axis is None else shape[:axis] + shape[axis + 1:]
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))  # not a sample's stream
        self.constants = {info.name: self._value(info, full[info.name], rng)
                          for info in inputs if info.name in layout.constants}

    def _value(self, info: InputInfo, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        if info.name in self.layout.zeros:
            return np.zeros(shape, info.dtype)
        if info.name in self.layout.rates:
            return np.full(shape, DEFAULT_SAMPLE_RATE).astype(info.dtype)
        if _MASK_NAME.fullmatch(_base_name(info.name)):
            return np.ones(shape, info.dtype)
        if info.dtype.kind == "f":
            return rng.standard_normal(shape, dtype=np.float32).astype(info.dtype)
        if info.dtype.kind in "iu":
            high = min(info.index_high or RANDOM_INT_HIGH, int(np.iinfo(info.dtype).max) + 1)
            return rng.integers(0, high, size=shape).astype(info.dtype)
        return rng.random(shape) < 0.5

    def _read(self, start: int, stop: int) -> tuple[dict[str, np.ndarray], list[str]]:
        per_sample = [info for info in self.inputs if info.name not in self.constants]
        columns: dict[str, list[np.ndarray]] = {info.name: [] for info in per_sample}
        for index in range(start, stop):
            rng = np.random.default_rng([self.seed, index])
            for info in per_sample:
                columns[info.name].append(self._value(info, self.sample_shapes[info.name], rng))
        feeds = {name: np.stack(values) for name, values in columns.items()}
        return feeds, [str(i) for i in range(start, stop)]


def random_source(
    inputs: Sequence[InputInfo],
    shapes: Mapping[str, tuple[int, ...]],
    num_samples: int = 8,
    seed: int = 0,
) -> DataSource:
    """Seeded random samples at ``shapes`` (batch axis included, see :func:`resolve_shapes`),
    with values the model can take (module docstring). Deterministic across runs,
    batchings and subsets."""
    if num_samples < 1:
        raise UsageError(f"number of samples must be at least 1, got {num_samples}")
    return RandomSource(inputs, shapes, num_samples, seed)


def random_feeds(
    model: onnx.ModelProto,
    num_samples: int,
    seed: int = 0,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """``num_samples`` feeds of one sample each (e.g. random calibration), from
    :func:`random_source` for ``model``'s inputs."""
    inputs = model_inputs(model)
    source = random_source(inputs, resolve_shapes(inputs, input_shapes, 1), num_samples, seed)
    return (batch.feeds for batch in source.batches(1))


# --------------------------------------------------------------------------- arrays


class _Member:
    """One array of an .npy/.npz file: header read eagerly, data mapped or loaded lazily."""

    def __init__(self, path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype, loader):
        self.path, self.key, self.shape, self.dtype = path, key, shape, dtype
        self._loader = loader
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self._loader()
        return self._array


def _read_npy_header(fp) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    return np.lib.format.read_array_header_2_0(fp)


def _npz_members(path: Path) -> dict[str, _Member]:
    members: dict[str, _Member] = {}
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                if info.compress_type == zipfile.ZIP_STORED:
                    # Local file header: 30 bytes, then the name and the extra field.
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                    data_start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
                    raw.seek(data_start)
                    shape, fortran, dtype = _read_npy_header(raw)
                    offset = raw.tell()
                    loader = _memmap_loader(path, dtype, shape, fortran, offset)
                else:
                    with archive.open(info) as fp:
                        shape, fortran, dtype = _read_npy_header(fp)
                    loader = _npz_loader(path, key)
                members[key] = _Member(path, key, tuple(shape), np.dtype(dtype), loader)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(f"cannot read '{path}': {error}") from error
    return members


def _memmap_loader(path: Path, dtype: np.dtype, shape, fortran: bool, offset: int):
    def load() -> np.ndarray:
        if dtype.hasobject:
            raise InputError(f"'{path.name}' holds Python objects; save plain numeric arrays")
        if int(np.prod(shape)) == 0:
            return np.empty(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order="F" if fortran else "C")

    return load


def _npz_loader(path: Path, key: str):
    def load() -> np.ndarray:
        logger.info("'%s' member '%s' is compressed: loading it whole (save with np.savez to stream it)", path.name, key)
        try:
            with np.load(path, allow_pickle=False) as archive:
                return archive[key]
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read '{key}' from '{path}': {error}") from error

    return load


def _npy_member(path: Path, key: str) -> _Member:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read '{path}': {error}") from error
    return _Member(path, key, tuple(array.shape), array.dtype, lambda: array)


def _expected_str(info: InputInfo) -> str:
    if info.shape is None:
        return "[S, ...]"
    if not info.shape:
        return "[S] (one scalar per sample)"
    rest = ["?" if d is None else str(d) for d in info.shape[1:]]
    return "[" + ", ".join(["S", *rest]) + "]"


class ArraySource(DataSource):
    """Samples from arrays in an .npz/.npy file, first axis = samples."""

    def __init__(self, inputs: Sequence[InputInfo], members: Mapping[str, _Member], path: Path):
        where = path.name
        for info in inputs:
            member = members[info.name]
            if member.dtype != info.dtype:
                raise InputError(
                    f"input '{info.name}': {where} has dtype {member.dtype} but the model expects {info.dtype}"
                )
            if info.shape is not None:
                want_rank = max(len(info.shape), 1)
                ok = len(member.shape) == want_rank and all(
                    not (isinstance(d, int) and d > 0) or d == got
                    for d, got in zip(info.shape[1:], member.shape[1:], strict=False)
                )
                if not ok:
                    raise InputError(
                        f"input '{info.name}': {where} has shape {member.shape} but the model expects "
                        f"{_expected_str(info)} (S = samples, model input {info.shape_str()})"
                    )
            elif not member.shape:
                raise InputError(f"input '{info.name}': {where} holds a scalar; the first axis must be samples")
        counts = {name: m.shape[0] for name, m in members.items()}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"'{n}'={c}" for n, c in counts.items())
            raise InputError(f"{where}: arrays have different sample counts ({detail})")
        size = next(iter(counts.values()))
        if size == 0:
            raise InputError(f"{where} has no samples")
        super().__init__(inputs, size, f"samples from {path}")
        self.members = dict(members)

    def _read(self, start: int, stop: int) -> tuple[dict[str, np.ndarray], list[str]]:
        feeds = {name: np.ascontiguousarray(m.array[start:stop]) for name, m in self.members.items()}
        return feeds, [str(i) for i in range(start, stop)]


# --------------------------------------------------------------------------- images


class ImageSource(DataSource):
    """Images of a folder, sorted by name, decoded and preprocessed one batch at a time."""

    def __init__(self, info: InputInfo, files: Sequence[Path], pipeline, folder: Path):
        super().__init__([info], len(files), f"images from {folder} ({pipeline.describe()})")
        self.files = list(files)
        self.pipeline = pipeline
        self.info = info

    def _read(self, start: int, stop: int) -> tuple[dict[str, np.ndarray], list[str]]:
        files = self.files[start:stop]
        arrays = [self.pipeline.load(path) for path in files]
        batch = np.stack(arrays)
        if batch.dtype != self.info.dtype:
            if self.info.dtype.kind in "iu":
                limits = np.iinfo(self.info.dtype)
                batch = np.clip(np.rint(batch), limits.min, limits.max)
            batch = batch.astype(self.info.dtype)
        return {self.info.name: batch}, [path.name for path in files]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (case-insensitive suffixes), sorted by name."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def open_data(
    path: str | os.PathLike,
    inputs: Sequence[InputInfo],
    *,
    preprocess: str | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> DataSource:
    """Open ``path`` as a :class:`DataSource` for a model with ``inputs``.

    * ``.npz``: one array per model input, keyed by input name, first axis = samples;
    * ``.npy``: the samples of a single-input model;
    * a folder of images (jpg, jpeg, png, bmp, webp; sorted by name), turned into tensors
      by ``preprocess`` (see :mod:`onnxopt.validate.preprocess`); without it, the
      geometry comes from the model's input (``shapes`` fills its dynamic H×W) and pixels
      are scaled to 0..1, with a warning;
    * a ``.txt`` file: one text per line, tokenized by ``preprocess``'s
      ``tokenizer=tokenizer.json max_length=N`` (see :mod:`onnxopt.validate.text`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"data path not found: {path}")
    if path.is_file() and path.suffix.lower() == ".txt":
        from onnxopt.validate.text import open_text

        return open_text(path, inputs, preprocess, shapes)
    if preprocess is not None and not path.is_dir():
        raise UsageError(f"--preprocess applies to a folder of images, and '{path.name}' is a file")
    if path.is_dir():
        return _open_images(path, inputs, preprocess, shapes)
    suffix = path.suffix.lower()
    names = [info.name for info in inputs]
    if suffix == ".npz":
        members = _npz_members(path)
        if sorted(members) != sorted(names):
            raise InputError(
                f"{path.name} keys do not match the model's inputs: expected {sorted(names)}, got {sorted(members)}"
            )
        return ArraySource(inputs, members, path)
    if suffix == ".npy":
        if len(inputs) != 1:
            raise InputError(
                f"{path.name} holds one array but the model has {len(inputs)} inputs ({', '.join(names)}): "
                "use an .npz keyed by input name"
            )
        return ArraySource(inputs, {names[0]: _npy_member(path, names[0])}, path)
    raise InputError(f"unsupported data file '{path.name}': expected .npz, .npy, .txt (text) or a folder of images")


def _open_images(folder: Path, inputs: Sequence[InputInfo], preprocess: str | None, shapes) -> DataSource:
    from onnxopt.validate.preprocess import image_pipeline

    if len(inputs) != 1:
        names = ", ".join(info.name for info in inputs)
        raise InputError(f"a folder of images needs a model with one input; this one has {len(inputs)} ({names})")
    files = list_images(folder)
    if not files:
        raise InputError(f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) in folder '{folder}'")
    info = inputs[0]
    shape = None if shapes is None else shapes.get(info.name)
    pipeline = image_pipeline(preprocess, info, shape)
    return ImageSource(info, files, pipeline, folder)
