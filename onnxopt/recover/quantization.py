"""QuantizeLinear and DequantizeLinear as fake quantization, for the recovery interpreter.

QuantizeLinear: q = saturate(round(x / s) + z), round half to even as ONNX rounds,
saturated to the range of the output type (z's type; else ``output_dtype``; else uint8).
DequantizeLinear: y = (q − z) · s. Scales and zero points are scalars (per tensor) or
1-D along ``axis`` (per axis); blocked quantization (``block_size``) raises Unsupported.
The integers are carried as float32 tensors holding integral values so that gradients
flow: the rounding has a straight-through gradient (:func:`round_ste`, identity) and the
saturation the gradient of a clamp (zero outside the range), the usual fake quantization.
Registered into :data:`onnxopt.recover.ops.OPS`; :data:`RANGES` also serves the
interpreter's trainable quantized weights.
"""

from __future__ import annotations

import torch

from onnxopt.recover.ops import axis_of, op, unsupported

#: integer dtypes a quantized tensor may have -> (lowest, highest) value
RANGES: dict[torch.dtype, tuple[int, int]] = {
    torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767),
    torch.uint16: (0, 65535), torch.int32: (-2**31, 2**31 - 1)}
_ONNX_TYPES = {2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16}  # QuantizeLinear output_dtype


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even; the gradient passes through unchanged (straight-through)."""
    return x + (torch.round(x) - x).detach()


def per_axis(value: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    """A scale or zero point shaped to broadcast against a tensor of ``rank`` along ``axis``."""
    if value.numel() == 1:  # per tensor, whatever the axis says
        return value.reshape(())
    shape = [1] * rank
    shape[axis_of(axis, rank)] = -1
    return value.reshape(shape)


def _scale_and_zero(inputs, attrs, ctx, rank):
    if attrs.get("block_size", 0):
        raise unsupported(ctx, "block_size (blocked quantization) is not supported")
    scale = per_axis(inputs[1].float(), attrs.get("axis", 1), rank)
    zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    return scale, zero


@op("QuantizeLinear")
def quantize_linear(inputs, attrs, ctx):
    x = inputs[0]
    scale, zero = _scale_and_zero(inputs, attrs, ctx, x.dim())
    dtype = zero.dtype if zero is not None else _ONNX_TYPES.get(attrs.get("output_dtype", 2))
    if dtype is None:
        raise unsupported(ctx, f"output_dtype={attrs.get('output_dtype')} is not supported")
    if dtype not in RANGES or dtype == torch.int32:
        raise unsupported(ctx, f"{dtype} zero point is not supported")
    low, high = RANGES[dtype]
    q = round_ste(x.float() / scale)
    if zero is not None:
        q = q + per_axis(zero.float(), attrs.get("axis", 1), x.dim())
    return [torch.clamp(q, low, high)]


@op("DequantizeLinear")
def dequantize_linear(inputs, attrs, ctx):
    q = inputs[0]
    scale, zero = _scale_and_zero(inputs, attrs, ctx, q.dim())
    q = q.float()
    if zero is not None:
        q = q - per_axis(zero.float(), attrs.get("axis", 1), q.dim())
    return [q * scale]
