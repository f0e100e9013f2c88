"""The layers a decomposition pass works on: what is read from the graph for one weight
layer (:class:`Layer`), what a pass plans for it (:class:`Decomposition`, a chain of
:class:`Factor`), and the skip rules that decide whether a node is such a layer.

:func:`read_layer` returns a :class:`Layer` or the skip reason, in this order: "already
decomposed", "excluded by pattern", "weight is not constant", the weight's rank
(1-D/3-D convolutions, a matrix that is not 2-D), "group=N is not supported", "weight is
shared with another node", the pass's kernel rule, "input has N channels (< min_in_channels=M)",
a non-float weight, "below min_macs". MACs come from :mod:`onnxopt.decomp.costs`, per
sample where shapes are static, else per output pixel (convs) or per row (matrices).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxopt import irutil
from onnxopt.analysis.shapes import known_shape
from onnxopt.decomp import conv_output_hw, dense_conv_macs, matrix_macs
from onnxopt.report import human_count

MARK = "onnxopt.decomposed"
SOURCE = "onnxopt.decomposed_from"
METHODS = ("spatial", "tucker", "cp", "separable", "svd")
_DECOMPOSED_NAME = re.compile(r"/(" + "|".join(METHODS) + r")_[a-z]+$")
_SHARED = "weight is shared with another node"


@dataclass
class Layer:
    """One weight layer a pass may decompose, with everything read from the graph."""

    node: ir.Node
    name: str
    kind: Literal["conv", "gemm", "matmul"]
    weight_value: ir.Value
    weight: np.ndarray  # conv: [F, C, kh, kw]; gemm / matmul: the effective [K, N] matrix
    bias_value: ir.Value | None  # Conv B / Gemm C, reused as is on the last factor
    conv: irutil.ConvAttributes | None = None
    in_hw: tuple[int, int] | None = None  # real spatial sizes (conv), None when unknown
    out_hw: tuple[int, int] | None = None
    rows: int | None = None  # matrices: rows of the activation (per sample), None when unknown
    attributes: dict[str, Any] = field(default_factory=dict)  # gemm: transA, alpha, beta
    macs: float = 0.0  # original MACs (per sample, or per output pixel / row)
    opset: int = 0  # the model's default-domain opset
    # E[xᵀx] of the layer's input rows (matrices: features; convs: input channels) on the
    # calibration data, when the pass whitens (see passes/_whiten.py); else None
    input_moment: np.ndarray | None = None
    # progress(message, done, total) from inside one layer's numerics; None where layers
    # are decomposed in worker threads
    progress: Callable[[str, int, int], None] | None = None

    @property
    def exact(self) -> bool:
        return self.out_hw is not None if self.kind == "conv" else self.rows is not None

    @property
    def macs_unit(self) -> str:
        if self.exact:
            return "per sample"
        return "per output pixel" if self.kind == "conv" else "per row"

    @property
    def dtype(self) -> np.dtype:
        return self.weight.dtype

    def cost_hw(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(out_hw, in_hw) for ``onnxopt.decomp.costs``: the real sizes, or one output pixel
        (and the stride's worth of input pixels) when they are unknown."""
        if self.out_hw is not None and self.in_hw is not None:
            return self.out_hw, self.in_hw
        strides = self.conv.strides if self.conv is not None else (1, 1)
        return (1, 1), (int(strides[0]), int(strides[1]))

    def cost_rows(self) -> int:
        return self.rows if self.rows is not None else 1


@dataclass
class Factor:
    """One layer of the replacement chain; the chain's input is the original layer's input."""

    role: str  # "first", "core", "last", ... (names the node: <layer>/<method>_<role>)
    op_type: Literal["Conv", "Gemm", "MatMul"]
    weight: np.ndarray
    attributes: dict[str, Any] = field(default_factory=dict)
    bias: np.ndarray | None = None  # a new bias; the last factor otherwise gets the original one


@dataclass
class Decomposition:
    ranks: dict[str, int]
    factors: list[Factor]
    macs_after: float
    rel_error: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DecomposedLayer:
    """A layer with its planned decomposition; ``nodes`` once emitted, ``refit`` once refit."""

    layer: Layer
    decomposition: Decomposition
    nodes: list[ir.Node]
    seconds: float
    refit: dict[str, Any] | None = None


def conv_out_hw(attrs: irutil.ConvAttributes, in_hw: tuple[int, int]) -> tuple[int, int] | None:
    """ONNX Conv output size for a 2-D conv, auto_pad included; None if not positive."""
    if attrs.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = (-(-in_hw[0] // attrs.strides[0]), -(-in_hw[1] // attrs.strides[1]))
    else:
        pads = (0, 0, 0, 0) if attrs.auto_pad == "VALID" else attrs.pads
        out = conv_output_hw(in_hw, attrs.kernel, attrs.strides, pads, attrs.dilations)
    return (out[0], out[1]) if min(out) > 0 else None


# ---------------------------------------------------------------------------- skip rules


def read_layer(node: ir.Node, name: str, shapes: dict, options,
               kernel_reason: Callable[[int, int], str | None]) -> Layer | str:
    """The :class:`Layer` of ``node``, or the reason it is skipped (module docstring).

    ``options``: the pass's :class:`~onnxopt.passes._decompose.RankOptions`;
    ``kernel_reason(kh, kw)``: the pass's rule for the conv kernels it handles."""
    if node.metadata_props.get(MARK) or _DECOMPOSED_NAME.search(node.name or ""):
        return "already decomposed"
    if not irutil.selected(name, options.include, options.exclude):
        if not irutil.selected(name, options.include, ()):
            return "excluded by pattern (matches no include glob)"
        return "excluded by pattern (matches an exclude glob)"
    if node.op_type == "Conv":
        layer = _conv_layer(node, name, shapes, options.min_in_channels, kernel_reason)
    else:
        layer = _matrix_layer(node, name, shapes, options.min_in_channels)
    if isinstance(layer, str):
        return layer
    if not np.issubdtype(layer.weight.dtype, np.floating):
        return f"weight dtype {layer.weight.dtype} is not supported (float only)"
    if options.min_macs and layer.exact and layer.macs < options.min_macs:
        return f"below min_macs ({human_count(layer.macs)} < {human_count(options.min_macs)})"
    return layer


def _constant_weight(node: ir.Node, not_constant: str) -> tuple[ir.Value, np.ndarray] | str:
    """Input 1 of ``node`` and its value, or a skip reason (``not_constant`` when it is not
    a constant)."""
    if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[0] is None:
        return "weight is not constant"
    array = irutil.constant_array(node.inputs[1])
    if array is None:
        return not_constant
    return node.inputs[1], array


def _bias(node: ir.Node) -> ir.Value | None:
    return node.inputs[2] if len(node.inputs) > 2 else None


def _too_few_inputs(count: int, unit: str, min_in_channels: int) -> str | None:
    if count < min_in_channels:
        return f"input has {count} {unit} (< min_in_channels={min_in_channels})"
    return None


def _conv_layer(node: ir.Node, name: str, shapes: dict, min_in_channels: int,
                kernel_reason: Callable[[int, int], str | None]) -> Layer | str:
    found = _constant_weight(node, "weight is not constant")
    if isinstance(found, str):
        return found
    w_value, W = found
    if W.ndim != 4:
        return f"1-D/3-D convolutions are not supported (this one is {W.ndim - 2}-D)"
    attrs = irutil.conv_attributes(node, W.shape)
    if attrs.group != 1:
        return f"group={attrs.group} is not supported"
    if irutil.use_count(w_value) > 1:
        return _SHARED
    F, C, kh, kw = W.shape
    reason = kernel_reason(kh, kw) or _too_few_inputs(C, "channels", min_in_channels)
    if reason:
        return reason
    layer = Layer(node, name, "conv", w_value, W, _bias(node), conv=attrs)
    x_shape = shapes.get(node.inputs[0].name)
    if known_shape(x_shape, 4):
        layer.in_hw = (int(x_shape[2]), int(x_shape[3]))
        layer.out_hw = conv_out_hw(attrs, layer.in_hw)
        if layer.out_hw is None:
            layer.in_hw = None
    layer.macs = dense_conv_macs(C, F, kh, kw, layer.cost_hw()[0])
    return layer


def _matrix_layer(node: ir.Node, name: str, shapes: dict, min_in_channels: int) -> Layer | str:
    found = _constant_weight(node, "weight is not constant" if node.op_type == "Gemm" else "right operand is not constant")
    if isinstance(found, str):
        return found
    w_value, B = found
    if B.ndim != 2:
        return f"right operand is {B.ndim}-D (only a 2-D weight [K, N] is supported)"
    if irutil.use_count(w_value) > 1:
        return _SHARED
    a_shape = shapes.get(node.inputs[0].name)
    if node.op_type == "Gemm":
        attributes = {
            "transA": node.attributes.get_int("transA", 0),
            "transB": node.attributes.get_int("transB", 0),
            "alpha": node.attributes.get_float("alpha", 1.0),
            "beta": node.attributes.get_float("beta", 1.0),
        }
        rows = None
        if known_shape(a_shape, 2):
            rows = int(a_shape[1] if attributes["transA"] else a_shape[0])
        layer = Layer(node, name, "gemm", w_value, B.T if attributes["transB"] else B, _bias(node),
                      rows=rows, attributes=attributes)
    else:
        rows = None
        if a_shape is not None and len(a_shape) >= 2 and known_shape(a_shape[:-1]):
            rows = math.prod(int(d) for d in a_shape[:-1])
        elif a_shape is not None and len(a_shape) == 1:
            rows = 1
        layer = Layer(node, name, "matmul", w_value, B, None, rows=rows)
    K, N = layer.weight.shape
    reason = _too_few_inputs(K, "features", min_in_channels)
    if reason:
        return reason
    layer.macs = matrix_macs(K, N, layer.cost_rows())
    return layer
