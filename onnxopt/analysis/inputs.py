"""What a model's graph says about its inputs, and seeded random inputs derived from it.

:func:`model_inputs` lists the graph inputs (:class:`InputInfo`: dtype, declared shape,
recurrent state, ``Gather`` index bound); :func:`parse_input_shapes` and
:func:`resolve_shapes` turn ``--input-shape`` specs and the declared shapes into concrete
ones; :func:`infer_layout` finds the batch axis of every input (how samples stack onto
the model's inputs); :class:`RandomInputs` and :func:`random_feeds` draw seeded values the
model can take (sample *i* depends only on the seed and *i*). A declared ``dim_value`` of 0
or less (Paddle writes -1) is dynamic, like a named or unnamed dim.

This is a core module: passes use it (random calibration data), so it imports neither
onnxruntime nor :mod:`onnxopt.validate`; data files and images are read there.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from onnxopt.analysis.input_graph import Dim, base_name, index_bounds, is_dynamic, state_inputs
from onnxopt.errors import InputError, UsageError

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

DEFAULT_SPATIAL = 224
DEFAULT_SEQUENCE = 128
DEFAULT_DIM = 1
DEFAULT_SAMPLE_RATE = 16000
#: Random integer inputs that index no table are drawn from [0, RANDOM_INT_HIGH): small
#: and non-negative, so they are valid counts and small indices for most models.
RANDOM_INT_HIGH = 10

SEQUENCE_DIM = re.compile(r"seq|len|token", re.IGNORECASE)
#: An attention mask's input name (``mask``, ``attention_mask``, ``x/mask``, ``attention_masks``):
#: random feeds fill it with ones, text data with the real tokens, metrics and refit read it.
MASK_NAME = re.compile(r"(?:.*[_./-])?mask|attention_?masks?")
_RATE_NAME = re.compile(r"sr|sample_?rate|sampling_rate")


@dataclass(frozen=True)
class InputInfo:
    """One graph input: name, numpy dtype and declared shape.

    ``shape`` items are ints (fixed, > 0), strings (named dynamic dims), or None (unnamed
    dynamic dims). ``shape`` itself is None when the model declares no shape at all.
    ``index_high``: for an integer input used as ``Gather`` indices, the number of rows of
    the smallest table it indexes (random values stay below it); None otherwise.
    ``state``: recurrent state, judged from the graph by :func:`model_inputs`; random
    inputs fill it with zeros.
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
    """The graph inputs that are not initializers, in graph order.

    Recurrent state (:attr:`InputInfo.state`; at most one dynamic dim where random inputs
    use it): an input that reaches an LSTM, GRU or RNN's ``initial_h``/``initial_c``
    (directly, in a subgraph, or through the value ops listed below), or one named h, c,
    h0, c0, hx, cx, state, states, initial_h/c or init_h/c beside an output of the same
    shape (dims dynamic in either match; Silero's h → hn). Anything else, e.g.
    ``encoder_hidden_states``, is data.

    Index bounds (:attr:`InputInfo.index_high`): integer inputs that reach a ``Gather`` as
    its indices (directly or through Cast, Unsqueeze, Squeeze, Reshape, Flatten, Expand,
    Transpose, Slice, Tile, Concat, Split or Gather of their values) are bounded by the
    table's dim on the Gather axis when the table is an initializer or a ``Constant``.
    """
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
    bounds = index_bounds(model.graph, integers) if integers else {}
    states = state_inputs(model, {info.name: info.shape for info in result})
    return [InputInfo(i.name, i.dtype, i.shape, bounds.get(i.name), i.name in states) for i in result]


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


def _is_sequence_dim(info: InputInfo, axis: int, dim: Dim) -> bool:
    if isinstance(dim, str) and SEQUENCE_DIM.search(dim):
        return True
    return info.shape is not None and len(info.shape) == 2 and axis == 1 and info.dtype.kind in "iub"


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
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

    def batch_size(self, requested: int) -> int:
        """The batch size actually used: ``requested``, or what the model imposes."""
        if requested < 1:
            raise UsageError(f"batch size must be at least 1, got {requested}")
        return self.fixed_batch or requested

    def batch_bounds(self, start: int, stop: int, requested: int) -> Iterator[tuple[int, int]]:
        """``(first, end)`` of each batch of samples ``start:stop``. The last batch may be
        smaller; where the model fixes the batch at *k*, every batch has exactly *k*
        samples and a smaller remainder is dropped with a warning."""
        size = self.batch_size(requested)
        if size != requested:
            log = logger.warning if requested > size else logger.info
            log("input '%s' fixes the batch: using batch size %d instead of %d", self.fixed_by, size, requested)
        count = stop - start
        usable = count - count % size if self.fixed_batch else count
        if usable < count:
            logger.warning(
                "the model takes batches of exactly %d samples: the last %d of %d samples are not used",
                size, count - usable, count,
            )
        end = start + usable
        for first in range(start, end, size):
            yield first, min(first + size, end)

    def feeds(self, inputs: Sequence[InputInfo], samples: Mapping[str, np.ndarray],
              constants: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch's feeds: ``samples`` (per-sample inputs, sample axis first) moved to
        each input's batch axis, ``constants`` as they are."""
        feeds: dict[str, np.ndarray] = {}
        for info in inputs:
            if info.name in constants:
                feeds[info.name] = constants[info.name]
                continue
            array = samples[info.name]
            axis = self.axes.get(info.name, 0)
            if axis is None:  # fed as declared: the batch is this one sample
                array = array.reshape(array.shape[1:])
            elif axis:
                array = np.ascontiguousarray(np.moveaxis(array, 0, axis))
            feeds[info.name] = array
        return feeds


def _fixed_batch(inputs: Sequence[InputInfo]) -> tuple[int | None, str | None]:
    """(batch size the model imposes, the input that imposes it): a fixed first dim, or 1
    for a scalar input; (None, None) when the batch is free."""
    fixed: dict[str, int] = {}
    for info in inputs:
        if info.shape is None:
            continue
        if len(info.shape) == 0:
            fixed[info.name] = 1
        elif not is_dynamic(info.shape[0]):
            fixed[info.name] = info.shape[0]
    values = set(fixed.values())
    if len(values) > 1:
        detail = ", ".join(f"'{n}'={v}" for n, v in fixed.items())
        raise InputError(f"the model's inputs have different fixed first dimensions ({detail}); cannot batch samples")
    if not fixed:
        return None, None
    name, value = next(iter(fixed.items()))
    return value, name


def first_axis_layout(inputs: Sequence[InputInfo]) -> Layout:
    """Data files and images: samples on the first axis of every input, scalars as declared."""
    fixed, by = _fixed_batch(inputs)
    axes = {i.name: None if i.shape is not None and len(i.shape) == 0 else 0 for i in inputs}
    return Layout(axes, fixed_batch=fixed, fixed_by=by)


def infer_layout(inputs: Sequence[InputInfo]) -> Layout:
    """The batch axis of every input of a random source, and what is fed unchanged.

    * The batch axis is dim 0 of the data inputs when it is dynamic in all of them, or
      the dynamic dim they share with a state input (ONNX's ``initial_h`` [dirs, N,
      hidden] with X [T, N, F]). Otherwise a fixed first dim *k* shared by the data
      inputs is the batch (exactly *k* samples per batch); where the fixed first dims
      differ, every sample is fed as declared, one per batch.
    * A fully fixed state is fed unchanged with every batch and pins the batch to one
      sample where the batch axis is dynamic; a state whose dynamic dim is the batch
      follows the batch. Other fully fixed inputs beside a dynamic batch are drawn once
      and fed unchanged.
    * A size-1 input named sr, sample_rate or sampling_rate is a constant (the sample
      rate). Any other scalar is drawn per sample and forces batches of one sample, fed
      without the sample axis.
    """
    rates = [i for i in inputs if _RATE_NAME.fullmatch(base_name(i.name)) and i.shape is not None
             and all(d == 1 for d in i.shape)]
    states = [i for i in inputs if i not in rates and i.state and i.shape and sum(map(is_dynamic, i.shape)) <= 1]
    primary = [i for i in inputs if i not in rates and i not in states]
    if not primary:
        primary, states = states, []
    scalars = [i for i in primary if i.shape is not None and len(i.shape) == 0]
    ranked = [i for i in primary if i not in scalars]
    dynamic = [i for i in ranked if i.shape is None or any(map(is_dynamic, i.shape))]

    axes: dict[str, int | None] = {}
    constants: set[str] = set()
    notes: list[str] = []
    fixed: dict[str, int] = {}
    label = next((d for s in states for d in s.shape if isinstance(d, str)
                  and dynamic and all(i.shape is not None and d in i.shape for i in dynamic)), None)
    if label is not None:
        axes.update({i.name: i.shape.index(label) for i in dynamic})
    elif dynamic and all(i.shape is None or is_dynamic(i.shape[0]) for i in dynamic):
        axes.update({i.name: 0 for i in dynamic})
    batch_dynamic = bool(axes)
    if batch_dynamic:
        constants.update(i.name for i in ranked if i.name not in axes)
    else:
        firsts = {i.name: i.shape[0] for i in ranked if i.shape is not None and not is_dynamic(i.shape[0])}
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
        elif any(map(is_dynamic, dims)):
            axes[state.name] = next(a for a, d in enumerate(dims) if is_dynamic(d))
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
    return Layout(per_sample, frozenset(constants), frozenset(s.name for s in states),
                   frozenset(r.name for r in rates), fixed_batch, by, tuple(notes))


def resolve_shapes(
    inputs: Sequence[InputInfo],
    overrides: Mapping[str, tuple[int, ...]] | None = None,
    batch_size: int = 1,
) -> dict[str, tuple[int, ...]]:
    """Concrete shape (batch axis included) for every input.

    The batch axis (:func:`infer_layout`) becomes ``batch_size`` where it is dynamic. Any
    other dynamic dimension gets a default, and one warning names every dimension
    defaulted: a 4-D input is taken as an image, its two spatial dimensions **224**
    (NHWC when the last dimension is a fixed 1 or 3 and dimension 1 is not, NCHW
    otherwise); a sequence dimension **128** (dim 1 of a rank-2 integer or bool input,
    i.e. [batch, seq] token ids and masks, or a dim named like seq, len or token); every
    other dynamic dimension **1**. ``overrides`` (``--input-shape NAME:DIMS``) win over
    these; they must keep the model's rank and its fixed dimensions. The batch axis's
    value in an override only matters where the model fixes it.
    """
    overrides = dict(overrides or {})
    known = {info.name for info in inputs}
    for name in overrides:
        if name not in known:
            valid = ", ".join(f"'{n}'" for n in known)
            raise UsageError(f"--input-shape names '{name}', which is not an input of the model (inputs: {valid})")
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")

    layout = infer_layout(inputs)
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
            if not is_dynamic(dim):
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
        if not is_dynamic(have) and have != want:
            raise UsageError(
                f"--input-shape {spec}: dim {axis} of input '{info.name}' {info.shape_str()} is fixed at {have}"
            )
    return dims




# --------------------------------------------------------------------------- random values


class RandomInputs:
    """Seeded random values the model can take: sample *i* depends only on (seed, *i*),
    whatever the batching.

    Recurrent state is zeros, a sample rate 16000, inputs named mask or ``*_mask`` ones;
    integers are in [0, :attr:`InputInfo.index_high`) where they index a table, else in
    [0, :data:`RANDOM_INT_HIGH`); floats are standard normal, bools fair coins.
    ``shapes`` hold the batch axis (:func:`resolve_shapes`).
    """

    def __init__(self, inputs: Sequence[InputInfo], shapes: Mapping[str, tuple[int, ...]], seed: int):
        for info in inputs:
            if info.dtype.kind not in "fiub":
                raise InputError(f"input '{info.name}' has dtype {info.dtype}: random data covers numbers and bools only")
        self.inputs: tuple[InputInfo, ...] = tuple(inputs)
        self.layout = layout = infer_layout(inputs)
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
        #: Arrays fed unchanged with every batch (recurrent state, sample rate).
        self.constants = {info.name: self._value(info, full[info.name], rng)
                          for info in inputs if info.name in layout.constants}

    def _value(self, info: InputInfo, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        if info.name in self.layout.zeros:
            return np.zeros(shape, info.dtype)
        if info.name in self.layout.rates:
            return np.full(shape, DEFAULT_SAMPLE_RATE).astype(info.dtype)
        if MASK_NAME.fullmatch(base_name(info.name)):
            return np.ones(shape, info.dtype)
        if info.dtype.kind == "f":
            return rng.standard_normal(shape, dtype=np.float32).astype(info.dtype)
        if info.dtype.kind in "iu":
            high = min(info.index_high or RANDOM_INT_HIGH, int(np.iinfo(info.dtype).max) + 1)
            return rng.integers(0, high, size=shape).astype(info.dtype)
        return rng.random(shape) < 0.5

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Samples ``start:stop`` of the per-sample inputs, stacked on a leading sample axis."""
        per_sample = [info for info in self.inputs if info.name not in self.constants]
        columns: dict[str, list[np.ndarray]] = {info.name: [] for info in per_sample}
        for index in range(start, stop):
            rng = np.random.default_rng([self.seed, index])
            for info in per_sample:
                columns[info.name].append(self._value(info, self.sample_shapes[info.name], rng))
        return {name: np.stack(values) for name, values in columns.items()}

    def feeds(self, count: int, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of samples ``0:count`` in batches (:meth:`Layout.batch_bounds`)."""
        for first, end in self.layout.batch_bounds(0, count, batch_size):
            yield self.layout.feeds(self.inputs, self.read(first, end), self.constants)


def random_feeds(
    model: onnx.ModelProto,
    count: int,
    seed: int = 0,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """``count`` seeded random feeds of one sample each (e.g. random calibration data)
    for ``model``'s inputs (:class:`RandomInputs`); where the model fixes its batch at *k*,
    feeds of *k* samples."""
    inputs = model_inputs(model)
    shapes = resolve_shapes(inputs, input_shapes, 1)
    if count < 1:
        raise UsageError(f"number of samples must be at least 1, got {count}")
    return RandomInputs(inputs, shapes, seed).feeds(count)


def attention_mask(feeds: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The real tokens of a batch of token inputs, [batch, seq] booleans, from its attention
    mask (an input named as :data:`MASK_NAME` says: 2-D, integer, bool or float), or None."""
    for name, value in feeds.items():
        value = np.asarray(value)
        if MASK_NAME.fullmatch(base_name(name)) and value.ndim == 2 and value.dtype.kind in "biuf":
            return value != 0
    return None
