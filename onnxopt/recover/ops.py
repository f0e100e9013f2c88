"""Torch implementations of ONNX operators, for the recovery interpreter.

Each function takes ``(inputs, attrs, ctx)``: the input tensors in ONNX order (``None``
for an omitted optional input, written ``''`` in ONNX), the node's attributes as Python
values, and an :class:`OpContext` (opset, number of outputs); it returns the list of
outputs. Computation is float32 as given; integer tensors (shapes, indices) stay int64.
Values that ONNX reads as data but torch needs as Python ints (Reshape's shape, Slice's
starts) are read with ``tolist()``: they are constants in the models this engine trains.

Pooling, padding and resizing live in :mod:`onnxopt.recover.spatial`, which registers
into :data:`OPS` too (the interpreter imports both). An attribute value this engine does not implement raises
:class:`Unsupported` naming the op and the value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


class Unsupported(Exception):
    """An op, or an attribute value of an op, that this engine cannot run."""


@dataclass(frozen=True)
class OpContext:
    opset: int
    num_outputs: int = 1
    op_type: str = ""


OpFunction = Callable[[list, dict, OpContext], list]
OPS: dict[str, OpFunction] = {}

# ONNX TensorProto data types -> torch dtypes (Cast, Constant)
DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
          9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def op(*names: str):
    def decorate(function: OpFunction) -> OpFunction:
        for name in names:
            OPS[name] = function
        return function

    return decorate


def ints(value: Tensor | None) -> list[int] | None:
    return None if value is None else [int(v) for v in value.reshape(-1).tolist()]


def axis_of(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def unsupported(ctx: OpContext, what: str) -> Unsupported:
    return Unsupported(f"{ctx.op_type}: {what}")


# -------------------------------------------------------------------- elementwise


def _binary(function):
    return lambda inputs, attrs, ctx: [function(inputs[0], inputs[1])]


def _divide(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates


OPS.update({"Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul),
            "Div": _binary(_divide), "Pow": _binary(lambda a, b: torch.pow(a, b).to(a.dtype))})


def _unary(function):
    return lambda inputs, attrs, ctx: [function(inputs[0])]


OPS.update({"Relu": _unary(torch.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
            "Sqrt": _unary(torch.sqrt), "Erf": _unary(torch.erf), "Exp": _unary(torch.exp),
            "Log": _unary(torch.log), "Neg": _unary(torch.neg), "Abs": _unary(torch.abs),
            "Reciprocal": _unary(torch.reciprocal), "Identity": _unary(lambda x: x),
            "HardSwish": _unary(F.hardswish)})


@op("LeakyRelu")
def leaky_relu(inputs, attrs, ctx):
    return [F.leaky_relu(inputs[0], attrs.get("alpha", 0.01))]


@op("PRelu")
def prelu(inputs, attrs, ctx):
    x, slope = inputs[0], inputs[1]
    return [torch.where(x < 0, x * slope, x)]


@op("HardSigmoid")
def hard_sigmoid(inputs, attrs, ctx):
    return [torch.clamp(attrs.get("alpha", 0.2) * inputs[0] + attrs.get("beta", 0.5), 0.0, 1.0)]


@op("Clip")
def clip(inputs, attrs, ctx):
    x = inputs[0]
    if ctx.opset < 11:
        low, high = attrs.get("min"), attrs.get("max")
    else:
        low = inputs[1] if len(inputs) > 1 else None
        high = inputs[2] if len(inputs) > 2 else None
    return [torch.clamp(x, min=low, max=high) if low is not None or high is not None else x]


@op("Sum", "Max", "Min", "Mean")
def variadic(inputs, attrs, ctx):
    function = {"Sum": torch.add, "Max": torch.maximum, "Min": torch.minimum, "Mean": torch.add}[ctx.op_type]
    result = inputs[0]
    for other in inputs[1:]:
        result = function(result, other)
    return [result / len(inputs) if ctx.op_type == "Mean" else result]


@op("Softmax")
def softmax(inputs, attrs, ctx):
    x = inputs[0]
    if ctx.opset >= 13:
        return [torch.softmax(x, axis_of(attrs.get("axis", -1), x.dim()))]
    axis = axis_of(attrs.get("axis", 1), x.dim())  # before opset 13: softmax of the 2-D flattening
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return [torch.softmax(flat, 1).reshape(x.shape)]


@op("Cast")
def cast(inputs, attrs, ctx):
    dtype = DTYPES.get(attrs["to"])
    if dtype is None:
        raise unsupported(ctx, f"to={attrs['to']} is not supported")
    return [inputs[0].to(dtype)]


# -------------------------------------------------------------------- linear algebra


@op("MatMul")
def matmul(inputs, attrs, ctx):
    return [torch.matmul(inputs[0], inputs[1])]


@op("Gemm")
def gemm(inputs, attrs, ctx):
    a, b = inputs[0], inputs[1]
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    y = attrs.get("alpha", 1.0) * (a @ b)
    c = inputs[2] if len(inputs) > 2 else None
    return [y + attrs.get("beta", 1.0) * c if c is not None else y]


def conv_pads(attrs: dict, spatial: list[int], kernel: list[int], strides: list[int],
              dilations: list[int]) -> list[int]:
    """ONNX pads [b1, b2, …, e1, e2, …] with ``auto_pad`` resolved (SAME_UPPER, SAME_LOWER, VALID)."""
    rank = len(spatial)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins + ends
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    return list(attrs.get("pads", [0] * (2 * rank)))


def torch_pads(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, …, e1, e2, …] -> torch's F.pad order (last axis first: b_n, e_n, …)."""
    rank = len(pads) // 2
    return [p for axis in reversed(range(rank)) for p in (pads[axis], pads[axis + rank])]


@op("Conv")
def conv(inputs, attrs, ctx):
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    rank = w.dim() - 2
    if rank not in (1, 2, 3):
        raise unsupported(ctx, f"{rank}-D convolution")
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    pads = conv_pads(attrs, list(x.shape[2:]), kernel, strides, dilations)
    if pads[:rank] == pads[rank:]:
        padding = pads[:rank]
    else:
        x, padding = F.pad(x, torch_pads(pads)), [0] * rank
    function = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    return [function(x, w, bias, strides, padding, dilations, attrs.get("group", 1))]


@op("BatchNormalization")
def batch_normalization(inputs, attrs, ctx):
    if attrs.get("training_mode", 0):
        raise unsupported(ctx, "training_mode=1 (recovery keeps BatchNorm in inference mode)")
    x, scale, bias, mean, var = inputs[:5]
    # inference mode: the running statistics are read, never updated
    return [F.batch_norm(x, mean, var, scale, bias, training=False, eps=attrs.get("epsilon", 1e-5))]


@op("LayerNormalization")
def layer_normalization(inputs, attrs, ctx):
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = axis_of(attrs.get("axis", -1), x.dim())
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt(var + attrs.get("epsilon", 1e-5))
    y = (x - mean) * inv_std * scale
    return [y + bias if bias is not None else y, mean, inv_std]


# -------------------------------------------------------------------- shapes and indexing


@op("Constant")
def constant(inputs, attrs, ctx):
    for key, dtype in (("value", None), ("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in attrs:
            value = attrs[key]
            return [value if isinstance(value, Tensor) else torch.tensor(value, dtype=dtype)]
    raise unsupported(ctx, f"attribute {sorted(attrs)} is not supported")


@op("ConstantOfShape")
def constant_of_shape(inputs, attrs, ctx):
    value = attrs.get("value")
    fill = value.reshape(-1)[0] if value is not None else torch.zeros((), dtype=torch.float32)
    return [torch.full(ints(inputs[0]), fill.item(), dtype=fill.dtype)]


@op("Shape")
def shape(inputs, attrs, ctx):
    dims = list(inputs[0].shape)
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return [torch.tensor(dims[start:end], dtype=torch.int64)]


@op("Reshape")
def reshape(inputs, attrs, ctx):
    x, target = inputs[0], ints(inputs[1])
    if not attrs.get("allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [torch.reshape(x, tuple(target))]


@op("Flatten")
def flatten(inputs, attrs, ctx):
    x = inputs[0]
    axis = axis_of(attrs.get("axis", 1), x.dim())
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@op("Transpose")
def transpose(inputs, attrs, ctx):
    x = inputs[0]
    return [x.permute(*attrs.get("perm", list(reversed(range(x.dim())))))]


@op("Concat")
def concat(inputs, attrs, ctx):
    return [torch.cat([t for t in inputs if t is not None], dim=attrs["axis"])]


def _axes(inputs: list, attrs: dict, ctx: OpContext, since: int, index: int = 1) -> list[int] | None:
    """Axes given as an attribute (before opset ``since``) or as input ``index``."""
    if ctx.opset < since:
        return attrs.get("axes")
    return ints(inputs[index]) if len(inputs) > index else None


@op("Squeeze")
def squeeze(inputs, attrs, ctx):
    x = inputs[0]
    axes = _axes(inputs, attrs, ctx, 13)
    if axes is None:
        return [x.squeeze()] if x.dim() else [x]
    return [x.squeeze(tuple(axis_of(a, x.dim()) for a in axes))]


@op("Unsqueeze")
def unsqueeze(inputs, attrs, ctx):
    x = inputs[0]
    axes = _axes(inputs, attrs, ctx, 13)
    rank = x.dim() + len(axes)
    for axis in sorted(axis_of(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return [x]


@op("Split")
def split(inputs, attrs, ctx):
    x = inputs[0]
    axis = axis_of(attrs.get("axis", 0), x.dim())
    sizes = attrs.get("split") if ctx.opset < 13 else ints(inputs[1]) if len(inputs) > 1 else None
    if sizes is None:
        parts = attrs.get("num_outputs", ctx.num_outputs)
        chunk = math.ceil(x.shape[axis] / parts)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(parts)]
    return list(torch.split(x, sizes, dim=axis))


@op("Slice")
def slice_(inputs, attrs, ctx):
    x = inputs[0]
    if ctx.opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = ints(inputs[1]), ints(inputs[2])
        axes = ints(inputs[3]) if len(inputs) > 3 else None
        steps = ints(inputs[4]) if len(inputs) > 4 else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis_of(axis, x.dim())
        start, end, step = slice(start, end, step).indices(x.shape[axis])  # ONNX clamps as Python does
        if step == 1:
            x = x.narrow(axis, start, max(end - start, 0))
        else:
            index = torch.arange(start, end, step, dtype=torch.int64)
            x = x.index_select(axis, index)
    return [x]


@op("Gather")
def gather(inputs, attrs, ctx):
    x, indices = inputs[0], inputs[1].to(torch.int64)
    axis = axis_of(attrs.get("axis", 0), x.dim())
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    picked = x.index_select(axis, indices.reshape(-1))
    # a tuple: a 0-d index into a 1-d tensor (Shape -> Gather) gives shape ()
    return [picked.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1:]))]


def _reduce(inputs, attrs, ctx, since: int, function):
    """ReduceMean/ReduceSum: axes an attribute, or an input from opset ``since``."""
    x = inputs[0]
    axes = _axes(inputs, attrs, ctx, since)
    keep = bool(attrs.get("keepdims", 1))
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.dim()))
    return [function(x, dim=tuple(axis_of(a, x.dim()) for a in axes), keepdim=keep)]


@op("ReduceMean")
def reduce_mean(inputs, attrs, ctx):
    return _reduce(inputs, attrs, ctx, 18, torch.mean)


@op("ReduceSum")
def reduce_sum(inputs, attrs, ctx):
    return _reduce(inputs, attrs, ctx, 13, torch.sum)


@op("Equal")
def equal(inputs, attrs, ctx):
    return [torch.eq(inputs[0], inputs[1])]


@op("Where")
def where(inputs, attrs, ctx):
    condition, x, y = inputs
    return [torch.where(condition.to(torch.bool), x, y)]


@op("Expand")
def expand(inputs, attrs, ctx):
    x, shape = inputs[0], ints(inputs[1])
    return [x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(shape)))]

