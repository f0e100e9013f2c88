"""Torch implementations of ONNX's spatial operators: ConvTranspose, pooling, Pad, Resize.

Registered into :data:`onnxopt.recover.ops.OPS`. Pads follow ONNX ([b1, …, e1, …],
``auto_pad`` resolved as for Conv) and are applied explicitly with ``F.pad`` where torch's
symmetric ``padding`` cannot express them (-inf for MaxPool, zeros for AveragePool, whose
``count_include_pad=0`` divides by the pooled mask of real pixels).

Resize is computed per resized axis as ONNX defines it, not with ``F.interpolate``: each
output coordinate x maps to an input coordinate by ``coordinate_transformation_mode``
(half_pixel: (x + ½)/scale − ½; asymmetric: x/scale; align_corners; pytorch_half_pixel;
half_pixel_symmetric); ``nearest`` rounds it by ``nearest_mode`` and gathers,
``linear`` clamps it to [0, in − 1] and blends the two neighbours. Coordinates are
float32, as onnxruntime computes them. Scales give out = ⌊in·scale⌋; sizes give
scale = out/in. Cubic, antialias and tf_crop_and_resize raise ``Unsupported``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from onnxopt.recover.ops import axis_of, conv_pads, ints, op, torch_pads, unsupported


def _pool_geometry(x, attrs):
    kernel = list(attrs["kernel_shape"])
    rank = len(kernel)
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    pads = conv_pads(attrs, list(x.shape[2:]), kernel, strides, dilations)
    return rank, kernel, strides, dilations, pads


@op("ConvTranspose")
def conv_transpose(inputs, attrs, ctx):
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    rank = w.dim() - 2
    if rank not in (1, 2, 3) or "output_shape" in attrs or attrs.get("auto_pad", "NOTSET") != "NOTSET":
        raise unsupported(ctx, "output_shape, auto_pad or a rank other than 1-3")
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    output_padding = list(attrs.get("output_padding", [0] * rank))
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    function = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[rank - 1]
    if pads[:rank] == pads[rank:]:
        return [function(x, w, bias, strides, pads[:rank], output_padding, attrs.get("group", 1), dilations)]
    y = function(x, w, bias, strides, 0, output_padding, attrs.get("group", 1), dilations)
    for axis in range(rank):  # asymmetric pads crop the full output
        y = y.narrow(axis + 2, pads[axis], y.shape[axis + 2] - pads[axis] - pads[axis + rank])
    return [y]


@op("MaxPool")
def max_pool(inputs, attrs, ctx):
    x = inputs[0]
    rank, kernel, strides, dilations, pads = _pool_geometry(x, attrs)
    if rank not in (1, 2, 3) or attrs.get("storage_order", 0) or ctx.num_outputs > 1:
        raise unsupported(ctx, "indices output, storage_order or a rank other than 1-3")
    if any(pads):
        x = F.pad(x, torch_pads(pads), value=-math.inf)
    function = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
    return [function(x, kernel, strides, 0, dilations, ceil_mode=bool(attrs.get("ceil_mode", 0)))]


@op("AveragePool")
def average_pool(inputs, attrs, ctx):
    x = inputs[0]
    rank, kernel, strides, dilations, pads = _pool_geometry(x, attrs)
    if rank not in (1, 2, 3) or any(d != 1 for d in dilations):
        raise unsupported(ctx, "dilations or a rank other than 1-3")
    function = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    if not any(pads):
        return [function(x, kernel, strides, 0, ceil_mode)]
    padded = F.pad(x, torch_pads(pads))
    pooled = function(padded, kernel, strides, 0, ceil_mode)
    if attrs.get("count_include_pad", 0):
        return [pooled]
    mask = F.pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype), torch_pads(pads))
    return [pooled / function(mask, kernel, strides, 0, ceil_mode)]


@op("GlobalAveragePool", "GlobalMaxPool")
def global_pool(inputs, attrs, ctx):
    x = inputs[0]
    dims = tuple(range(2, x.dim()))
    if ctx.op_type == "GlobalMaxPool":
        return [x.amax(dim=dims, keepdim=True)]
    return [x.mean(dim=dims, keepdim=True)]


@op("Pad")
def pad(inputs, attrs, ctx):
    x = inputs[0]
    rank = x.dim()
    if ctx.opset < 11:
        pads, value, axes = list(attrs["pads"]), float(attrs.get("value", 0.0)), None
    else:
        pads = ints(inputs[1])
        value = inputs[2].item() if len(inputs) > 2 and inputs[2] is not None and inputs[2].numel() else 0
        axes = ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else None
    if axes is not None:  # pads for the listed axes only (opset 18)
        full = [0] * (2 * rank)
        for i, axis in enumerate(axis_of(a, rank) for a in axes):
            full[axis], full[axis + rank] = pads[i], pads[i + len(axes)]
        pads = full
    mode = attrs.get("mode", "constant")
    if mode == "constant":
        return [F.pad(x, torch_pads(pads), value=value)]
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    padded_axes = [a for a in range(rank) if pads[a] or pads[a + rank]]
    if not padded_axes:
        return [x]
    first = padded_axes[0]
    # torch pads these modes on the last 1-3 axes of a tensor with at least one axis before them
    if torch_mode is None or rank - first > 3 or first == 0:
        raise unsupported(ctx, f"mode={mode} on axes {padded_axes} of a {rank}-D tensor")
    trailing = pads[first:rank] + pads[rank + first:]
    return [F.pad(x, torch_pads(trailing), mode=torch_mode)]


def _present(tensor) -> bool:
    return tensor is not None and tensor.numel() > 0


def _source_coordinates(mode: str, out_size: int, in_size: int, scale: float) -> torch.Tensor:
    x = torch.arange(out_size, dtype=torch.float32)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_size > 1 else torch.zeros_like(x)
    if mode == "align_corners":
        return x * (in_size - 1) / (out_size - 1) if out_size > 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "half_pixel_symmetric":
        adjustment = out_size / (scale * in_size)
        offset = in_size / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    raise ValueError(mode)


def _nearest_index(coordinates: torch.Tensor, nearest_mode: str, in_size: int) -> torch.Tensor:
    floor, ceil = torch.floor(coordinates), torch.ceil(coordinates)
    half = (coordinates - floor) == 0.5
    index = {
        "round_prefer_floor": torch.where(half, floor, torch.round(coordinates)),
        "round_prefer_ceil": torch.where(half, ceil, torch.round(coordinates)),
        "floor": floor,
        "ceil": ceil,
    }[nearest_mode]
    return index.clamp(0, in_size - 1).to(torch.int64)


@op("Resize")
def resize(inputs, attrs, ctx):
    x = inputs[0]
    if ctx.opset < 11:
        raise unsupported(ctx, "opset < 11 (Upsample semantics)")
    mode = attrs.get("mode", "nearest")
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    nearest_mode = attrs.get("nearest_mode", "round_prefer_floor")
    if mode not in ("nearest", "linear") or attrs.get("antialias", 0) or transform == "tf_crop_and_resize" \
            or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise unsupported(ctx, f"mode={mode}, coordinate_transformation_mode={transform}, antialias or "
                               "keep_aspect_ratio_policy (nearest and linear are supported)")
    rank = x.dim()
    axes = [axis_of(a, rank) for a in attrs.get("axes", range(rank))]
    scales = inputs[2].tolist() if len(inputs) > 2 and _present(inputs[2]) else None
    sizes = ints(inputs[3]) if len(inputs) > 3 and _present(inputs[3]) else None
    for i, axis in enumerate(axes):
        in_size = x.shape[axis]
        if sizes is not None:
            out_size, scale = sizes[i], sizes[i] / in_size
        else:
            scale = float(scales[i])
            out_size = int(math.floor(in_size * scale))
        if out_size == in_size and scale == 1.0:
            continue
        coordinates = _source_coordinates(transform, out_size, in_size, scale)
        if mode == "nearest":
            x = x.index_select(axis, _nearest_index(coordinates, nearest_mode, in_size))
            continue
        coordinates = coordinates.clamp(0, in_size - 1)
        low = torch.floor(coordinates).to(torch.int64)
        high = (low + 1).clamp(max=in_size - 1)
        weight_shape = [1] * rank
        weight_shape[axis] = out_size
        weight = (coordinates - low.to(coordinates.dtype)).to(x.dtype).reshape(weight_shape)
        x = x.index_select(axis, low) * (1 - weight) + x.index_select(axis, high) * weight
    return [x]
