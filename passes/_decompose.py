"""Shared machinery of the low-rank decomposition passes: ``spatial``, ``tucker``, ``cp``,
``separable`` and ``svd``.

Each pass replaces one weight layer (a ``Conv``, or for ``svd`` also a ``Gemm`` /
``MatMul`` with a constant weight) by a short chain of cheaper layers computed in
``onnxopt.decomp``. This module holds what the five have in common, so that a pass module
only states its algebra, its rank selection and its factor layers:

* :class:`RankOptions` — rank selection (exactly one of ``rank``, ``energy``, ``vbmf``,
  ``speedup``; ``energy=0.95`` when none is given), rounding of ranks, the layer filters
  (``min_macs``, ``min_in_channels``, ``include``/``exclude`` globs) and ``refit``.
* :class:`DecomposePass` — walks the main graph (subgraphs of ``If``/``Loop`` are left
  alone), applies the common skip rules, calls the pass's ``_try_decompose(layer)`` per
  layer, rewires the graph and writes the report.

Skip rules (each a reason string in the report, never an exception): "already
decomposed", "excluded by pattern", "weight is not constant", "weight is shared with
another node", "1-D/3-D convolutions are not supported", "group=N is not supported",
kernel sizes the pass does not handle (1×1 convs belong to ``svd``, k×k ones to the
others), "input has N channels (< min_in_channels=M)", "below min_macs", "MACs would not
drop (before → after)", "speedup=S is out of reach (rank 1 gives …)", and a
``decomposition failed: …`` reason if the numerics raise.

Grouped convolutions (group > 1) are skipped by every pass. A pass *could* treat groups
separately — decompose each group's [F/g, C/g, kh, kw] kernel and emit every factor as a
grouped conv with the same g (block-diagonal factors) — but for the grouped layers in the
shared models (depthwise, C/g = 1) there is nothing to factor across channels, and only
the spatial scheme would apply (kh×kw → kh×1 · 1×kw per channel); not implemented.

Report, per decomposed layer: ``method``, ``ranks``, ``macs_before`` / ``macs_after``,
``macs_unit`` ("per sample" with the layer's real output size, from shape inference with
a dynamic batch dimension fixed to 1; "per output pixel" — or "per row" for matrices —
when a spatial dimension is dynamic), ``rel_error`` (‖W − Ŵ‖/‖W‖ of the weight) and
``seconds``; skipped layers carry a ``reason``. Progress goes to
``context.progress(message, done, total)`` per layer.

Speed: the numerics run on one BLAS thread (:func:`single_threaded_blas`; measured 10× faster
on this shared 2-core machine than OpenBLAS's spinning threads), and with ``--jobs N``
(``context.jobs``) N layers are decomposed concurrently in threads (numpy's LAPACK calls
release the GIL); the result does not depend on N.

Idempotency: every node a pass creates carries ``metadata_props["onnxopt.decomposed"] =
<method>`` (and ``onnxopt.decomposed_from`` = the original node's name) and a name
``<original>/<method>_<role>``; all decomposition passes skip such nodes ("already
decomposed"). A second run of any decomposition pass therefore changes nothing, and a
different decomposition pass run afterwards only touches layers the first one left.

Graph surgery keeps the original output's value name (downstream nodes and graph outputs
are untouched), names new nodes and initializers after the original node, keeps the
weight dtype, reuses the original bias value on the last factor, and removes the old
weight initializer (or ``Constant`` node) once nothing reads it.

Refit (``refit=true``; calibration batches through ``PassContext.calibration``): the
last factor of every decomposed layer and its bias are re-solved by streaming least
squares (:class:`onnxopt.decomp.LastFactorRefit`) so that the layer's *output* matches the
original layer's output on real activations (Zhang et al. 2016). One onnxruntime CPU
session runs a protobuf copy of the original model (taken before any rewrite) with, per
layer, a side branch that applies the layer's new factors but the last to the layer's
original input: it yields Y (the original layer's output, bias included) and Z (the input
of the last factor) in one pass over the data. Each layer is thus fitted on its own, on
the activations of the original network. Fitting Z taken from the decomposed network
instead (each layer compensating the error of the decomposed layers before it, in one
pass) was measured here and rejected: on yolo_style_det at energy 0.9 (28 layers) it
dropped the output cosine from 0.965 (no refit) to 0.48, because every layer corrects for
upstream errors that the upstream refits then remove; the per-layer fit raised it to
0.9999. (A sequential fit, one pass over the data per layer, would avoid that at L times
the cost.)

Memory of the refit does not grow with the number of samples: per layer the accumulators
hold 8·((R+1)² + F·(R+1)) bytes (R = input width of the last factor, K·kw for
``spatial``), plus one batch of the exposed activations: batch × Σ_layers (|Y| + |Z|) ×
dtype size, plus the original model's protobuf copy and the onnxruntime session.
Without calibration data the refit is skipped with a warning in the report.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import onnx_ir as ir

from onnxopt import irutil
from onnxopt.analysis.shapes import known_shape, static_shapes
from onnxopt.passbase import OptimizerPass, option
from onnxopt.report import human_count

logger = logging.getLogger(__name__)

DEFAULT_ENERGY = 0.95
MARK = "onnxopt.decomposed"
SOURCE = "onnxopt.decomposed_from"
_METHODS = ("spatial", "tucker", "cp", "separable", "svd")
_DECOMPOSED_NAME = re.compile(r"/(" + "|".join(_METHODS) + r")_[a-z]+$")


# ---------------------------------------------------------------------------- options


@dataclass(frozen=True)
class RankOptions:
    """Options shared by every decomposition pass (one selector at most; see __post_init__)."""

    rank: int | float | None = option(
        None, "rank per layer: a whole number (rank=8) is an absolute rank; a number with a decimal point "
              "is a fraction of the layer's full rank in (0, 1] (rank=0.25; rank=1.0 is the full rank)")
    energy: float | None = option(
        None, f"keep this share (0, 1] of the singular-value energy of the relevant unfoldings; "
              f"the default ({DEFAULT_ENERGY}) when no other rank selector is given")
    vbmf: bool = option(False, "choose ranks by analytical empirical VBMF (Nakajima et al. 2013; Kim et al. 2016)")
    speedup: float | None = option(
        None, "choose the rank so that each layer's MACs drop by this factor (before rounding; use round=1 "
              "for the exact MAC target)")
    round: int = option(
        16, "round ranks up to a multiple of this: 16 suits x86 SIMD kernels (AVX2, AVX-512), 8 GPU tensor "
            "cores; 1 turns rounding off")
    min_macs: float = option(0.0, "skip layers with fewer MACs per sample than this")
    min_in_channels: int = option(
        16, "skip layers whose input has fewer channels (a 3-channel stem: decomposing MobileNetV2's cut "
            "top-1 from 84 % to 23 %)")
    include: tuple[str, ...] = option((), "only layers whose node name matches one of these globs ('|'-separated)")
    exclude: tuple[str, ...] = option((), "skip layers whose node name matches one of these globs ('|'-separated)")
    refit: bool = option(
        False, "re-solve each layer's last factor and bias by least squares on calibration data (--data)")
    force: bool = option(False, "decompose even where a layer's MACs would not drop (exactness checks)")

    def __post_init__(self):
        given = [name for name, value in (("rank", self.rank), ("energy", self.energy),
                                          ("vbmf", self.vbmf or None), ("speedup", self.speedup))
                 if value is not None] + self._extra_selectors()
        if len(given) > 1:
            raise ValueError(f"give at most one rank selector, got {', '.join(given)}")
        if self.rank is not None:
            from onnxopt.decomp.ranks import check_rank_value

            check_rank_value(self.rank)  # rank=2.5: "write a whole number ... or a fraction in (0, 1]"
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {self.energy:g}")
        if self.speedup is not None and not (math.isfinite(self.speedup) and self.speedup >= 1):
            raise ValueError(f"speedup must be >= 1, got {self.speedup:g}")
        if self.round < 1:
            raise ValueError(f"round must be >= 1 (1 = no rounding), got {self.round}")
        if self.min_macs < 0:
            raise ValueError(f"min_macs must be >= 0, got {self.min_macs:g}")
        if self.min_in_channels < 1:
            raise ValueError(f"min_in_channels must be >= 1, got {self.min_in_channels}")

    def _extra_selectors(self) -> list[str]:
        """Selectors a pass adds (e.g. ``multiplier`` for ``separable``)."""
        return []

    @property
    def selector(self) -> tuple[str, Any]:
        """The rank selector in effect: ``("energy", 0.95)`` when none was given."""
        for key in ("rank", "energy", "speedup"):
            value = getattr(self, key)
            if value is not None:
                return key, value
        if self.vbmf:
            return "vbmf", True
        return "energy", DEFAULT_ENERGY

    def describe_selector(self) -> str:
        key, value = self.selector
        if key == "vbmf":
            return "vbmf"
        default = " (default)" if key == "energy" and self.energy is None else ""
        if key == "rank":  # 1.0 (the full rank) must not read as rank 1
            from onnxopt.decomp.ranks import format_rank

            return f"rank={format_rank(value)}"
        return f"{key}={value:g}{default}"


# ---------------------------------------------------------------------------- layers and plans


class SkipLayer(Exception):
    """Raised by a pass's rank selection to skip the layer with ``str(exc)`` as the reason."""


def check_speedup_reachable(speedup: float, original_macs: float, smallest_macs: float) -> None:
    """Skip a layer whose MACs cannot drop by ``speedup`` even at rank 1 (rank 1 would only
    destroy the layer; ``select_rank`` would otherwise fall back to it with a warning)."""
    best = original_macs / smallest_macs if smallest_macs else float("inf")
    if best < speedup:
        raise SkipLayer(f"speedup={speedup:g} is out of reach (rank 1 gives {best:.2f}×)")


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
class _Done:
    layer: Layer
    decomposition: Decomposition
    nodes: list[ir.Node]
    seconds: float
    refit: dict[str, Any] | None = None


# ---------------------------------------------------------------------------- BLAS threads


def single_threaded_blas():
    """Run numpy's linear algebra on one BLAS thread, restoring the setting afterwards.

    Measured on this 2-core machine while other processes ran: the spatial SVDs of the
    yolo detector took 29 s with OpenBLAS's default threads and 2.5 s on one thread
    (threads that spin-wait for a busy core). The layers' matrices are small (≤ a few
    thousand wide), so one thread costs little when the machine is idle; parallelism
    comes from decomposing layers concurrently (``--jobs``) instead.
    """
    from onnxopt.decomp._blas import blas_threads

    return blas_threads(1)


# ---------------------------------------------------------------------------- shapes


def conv_out_hw(attrs: irutil.ConvAttributes, in_hw: tuple[int, int]) -> tuple[int, int] | None:
    """ONNX Conv output size for a 2-D conv, auto_pad included; None if not positive."""
    out = []
    for axis in range(2):
        size, k, s, d = in_hw[axis], attrs.kernel[axis], attrs.strides[axis], attrs.dilations[axis]
        if attrs.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-size // s))
            continue
        pads = (0, 0) if attrs.auto_pad == "VALID" else (attrs.pads[axis], attrs.pads[2 + axis])
        out.append((size + pads[0] + pads[1] - d * (k - 1) - 1) // s + 1)
    return (out[0], out[1]) if min(out) > 0 else None


def explicit_pads(attributes: dict[str, Any], kernel: tuple[int, int], in_hw: tuple[int, int]) -> list[int]:
    """(top, left, bottom, right) pads of a factor conv, resolving ``auto_pad``."""
    auto_pad = attributes.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for axis in range(2):
            s, d = attributes["strides"][axis], attributes["dilations"][axis]
            out = -(-in_hw[axis] // s)
            total = max(0, (out - 1) * s + (kernel[axis] - 1) * d + 1 - in_hw[axis])
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
        return begin + end
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    return list(attributes.get("pads", [0, 0, 0, 0]))


# ---------------------------------------------------------------------------- the base pass


class DecomposePass(OptimizerPass, ir.passes.InPlacePass):
    """Base of the decomposition passes; subclasses set ``method`` and implement
    ``_kernel_reason`` and ``_try_decompose``."""

    Options: ClassVar[type] = RankOptions
    method: ClassVar[str]
    op_types: ClassVar[tuple[str, ...]] = ("Conv",)
    lossless = False
    needs_data = False  # the pass works without data;
    optional_data = True  # refit=true uses calibration data

    @classmethod
    def uses_data(cls, options: RankOptions) -> bool:
        return bool(getattr(options, "refit", False))

    # -- hooks

    def _kernel_reason(self, kh: int, kw: int) -> str | None:
        """A skip reason for kernels this pass does not handle (default: 1×1)."""
        if kh == 1 and kw == 1:
            return "1×1 kernel: nothing to factor spatially (use the svd pass)"
        return None

    def _try_decompose(self, layer: Layer) -> Decomposition | str:
        raise NotImplementedError

    # -- helpers for subclasses

    def _macs_reason(self, layer: Layer, macs_after: float) -> str | None:
        """The "MACs would not drop" skip reason, or None when the layer should be decomposed."""
        if macs_after < layer.macs or self.options.force:
            return None
        return f"MACs would not drop ({human_count(layer.macs)} → {human_count(macs_after)} {layer.macs_unit})"

    def _select_rank(self, max_rank: int, *, singular_values=None, vbmf_matrix=None, macs_for_rank=None,
                     original_macs: float | None = None, round_to: int | None = None) -> int:
        """One rank in [1, max_rank] from the options' selector; ``singular_values`` and
        ``vbmf_matrix`` are callables, evaluated only when the selector needs them."""
        from onnxopt.decomp import select_rank

        key, value = self.options.selector
        kwargs: dict[str, Any] = {}
        values = None
        if key == "rank":
            kwargs["rank"] = value
        elif key == "energy":
            kwargs["energy"] = value
            values = singular_values()
        elif key == "vbmf":
            kwargs["vbmf_matrix"] = vbmf_matrix()
        else:
            check_speedup_reachable(value, original_macs, macs_for_rank(1))
            kwargs.update(speedup=value, macs_for_rank=macs_for_rank, original_macs=original_macs)
        round_to = self.options.round if round_to is None else round_to
        return select_rank(values, max_rank, round_to=round_to, **kwargs)

    # -- the walk

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        self._opset = irutil.opset_version(model)
        self.report.figures["rank_selection"] = self.options.describe_selector()
        candidates = [n for n in graph if n.op_type in self.op_types and n.domain in ("", "ai.onnx")]
        if not candidates:
            return ir.passes.PassResult(model, False)
        shapes = static_shapes(model, [n.inputs[0].name for n in candidates if n.inputs and n.inputs[0] is not None])
        layers: list[tuple[str, ir.Node, Layer | str]] = []
        for index, node in enumerate(candidates):
            name = node.name or (node.outputs[0].name if node.outputs else f"{node.op_type}_{index}")
            layers.append((name, node, self._layer(node, name, shapes)))
        work = [layer for _, _, layer in layers if not isinstance(layer, str)]
        results: dict[int, tuple[Decomposition | str, float]] = {}
        jobs = max(1, min(int(self.context.jobs or 1), len(work)))
        self._sweep_progress = jobs == 1
        with single_threaded_blas():
            if jobs == 1:
                for index, layer in enumerate(work):
                    self.context.progress(f"{self.name}: {layer.name}", index, len(work))
                    results[id(layer)] = self._plan(layer)
            else:
                from concurrent.futures import ThreadPoolExecutor, as_completed

                with ThreadPoolExecutor(jobs) as pool:  # numpy's LAPACK/BLAS calls release the GIL
                    futures = {pool.submit(self._plan, layer): layer for layer in work}
                    for done_count, future in enumerate(as_completed(futures), 1):
                        layer = futures[future]
                        results[id(layer)] = future.result()
                        self.context.progress(f"{self.name}: {layer.name}", done_count, len(work))
        planned: list[_Done] = []
        for name, node, layer in layers:
            if isinstance(layer, str):
                self.report.skip(name, layer, op=node.op_type)
                continue
            result, seconds = results[id(layer)]
            if isinstance(result, str):
                self.report.skip(name, result, op=node.op_type)
            else:
                planned.append(_Done(layer, result, [], seconds))
        self.context.progress(f"{self.name}: done", len(work), len(work))
        if not planned:
            return ir.passes.PassResult(model, False)

        refit = self.options.refit
        if refit and self.context.calibration is None:
            self.report.warn("refit=true but no calibration data was given (--data): the last factors are not refit")
            refit = False
        original = ir.to_proto(model) if refit else None  # before any rewrite
        for done in planned:
            done.nodes = self._emit(graph, done.layer, done.decomposition)
        if refit:
            self._refit(model, original, planned)
        self._record(planned)
        return ir.passes.PassResult(model, True)

    def _plan(self, layer: Layer) -> tuple[Decomposition | str, float]:
        """``_try_decompose`` with numerical failures turned into skip reasons, timed."""
        start = time.perf_counter()
        try:
            result = self._try_decompose(layer)
        except SkipLayer as exc:
            result = str(exc)
        except (ValueError, np.linalg.LinAlgError) as exc:
            result = f"decomposition failed: {exc}"
        return result, time.perf_counter() - start

    # -- reading a layer

    def _layer(self, node: ir.Node, name: str, shapes: dict) -> Layer | str:
        if node.metadata_props.get(MARK) or _DECOMPOSED_NAME.search(node.name or ""):
            return "already decomposed"
        include, exclude = self.options.include, self.options.exclude
        if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            return "excluded by pattern (matches no include glob)"
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            return "excluded by pattern (matches an exclude glob)"
        if node.op_type == "Conv":
            layer = self._conv_layer(node, name, shapes)
        else:
            layer = self._matrix_layer(node, name, shapes)
        if isinstance(layer, str):
            return layer
        if not np.issubdtype(layer.weight.dtype, np.floating):
            return f"weight dtype {layer.weight.dtype} is not supported (float only)"
        if self.options.min_macs and layer.exact and layer.macs < self.options.min_macs:
            return f"below min_macs ({human_count(layer.macs)} < {human_count(self.options.min_macs)})"
        return layer

    def _conv_layer(self, node: ir.Node, name: str, shapes: dict) -> Layer | str:
        if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[0] is None:
            return "weight is not constant"
        w_value = node.inputs[1]
        W = irutil.constant_array(w_value)
        if W is None:
            return "weight is not constant"
        if W.ndim != 4:
            return f"1-D/3-D convolutions are not supported (this one is {W.ndim - 2}-D)"
        attrs = irutil.conv_attributes(node, W.shape)
        if attrs.group != 1:
            return f"group={attrs.group} is not supported"
        if irutil.use_count(w_value) > 1:
            return "weight is shared with another node"
        F, C, kh, kw = W.shape
        reason = self._kernel_reason(kh, kw)
        if reason:
            return reason
        if C < self.options.min_in_channels:
            return f"input has {C} channels (< min_in_channels={self.options.min_in_channels})"
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        layer = Layer(node, name, "conv", w_value, W, bias, conv=attrs)
        x_shape = shapes.get(node.inputs[0].name)
        if known_shape(x_shape, 4):
            layer.in_hw = (int(x_shape[2]), int(x_shape[3]))
            layer.out_hw = conv_out_hw(attrs, layer.in_hw)
            if layer.out_hw is None:
                layer.in_hw = None
        from onnxopt.decomp import dense_conv_macs

        layer.macs = dense_conv_macs(C, F, kh, kw, layer.cost_hw()[0])
        return layer

    def _matrix_layer(self, node: ir.Node, name: str, shapes: dict) -> Layer | str:
        if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[0] is None:
            return "weight is not constant"
        w_value = node.inputs[1]
        B = irutil.constant_array(w_value)
        if B is None:
            return "weight is not constant" if node.op_type == "Gemm" else "right operand is not constant"
        if B.ndim != 2:
            return f"right operand is {B.ndim}-D (only a 2-D weight [K, N] is supported)"
        if irutil.use_count(w_value) > 1:
            return "weight is shared with another node"
        a_shape = shapes.get(node.inputs[0].name)
        if node.op_type == "Gemm":
            attributes = {
                "transA": node.attributes.get_int("transA", 0),
                "transB": node.attributes.get_int("transB", 0),
                "alpha": node.attributes.get_float("alpha", 1.0),
                "beta": node.attributes.get_float("beta", 1.0),
            }
            Wm = B.T if attributes["transB"] else B
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            rows = None
            if known_shape(a_shape, 2):
                rows = int(a_shape[1] if attributes["transA"] else a_shape[0])
            layer = Layer(node, name, "gemm", w_value, Wm, bias, rows=rows, attributes=attributes)
        else:
            rows = None
            if a_shape is not None and len(a_shape) >= 2 and known_shape(a_shape[:-1]):
                rows = math.prod(int(d) for d in a_shape[:-1])
            elif a_shape is not None and len(a_shape) == 1:
                rows = 1
            layer = Layer(node, name, "matmul", w_value, B, None, rows=rows)
        K, N = layer.weight.shape
        if K < self.options.min_in_channels:
            return f"input has {K} features (< min_in_channels={self.options.min_in_channels})"
        layer.macs = layer.cost_rows() * K * N
        return layer

    # -- rewriting

    def _emit(self, graph: ir.Graph, layer: Layer, decomposition: Decomposition) -> list[ir.Node]:
        previous = layer.node.inputs[0]
        nodes = []
        factors = decomposition.factors
        for index, factor in enumerate(factors):
            stem = f"{layer.name}/{self.method}_{factor.role}"
            weight = irutil.add_initializer(graph, f"{stem}.weight", factor.weight.astype(layer.dtype, copy=False))
            inputs: list[ir.Value | None] = [previous, weight]
            if factor.bias is not None:
                inputs.append(irutil.add_initializer(graph, f"{stem}.bias", factor.bias.astype(layer.dtype)))
            elif index == len(factors) - 1 and layer.bias_value is not None:
                inputs.append(layer.bias_value)
            node = ir.Node(
                "", factor.op_type, inputs, ir.convenience.convert_attributes(factor.attributes),
                num_outputs=1, name=stem, metadata_props={MARK: self.method, SOURCE: layer.name},
            )
            node.outputs[0].name = irutil.unique_name(graph, stem)
            node.outputs[0].type = layer.node.outputs[0].type
            nodes.append(node)
            previous = node.outputs[0]
        irutil.replace_node(graph, layer.node, nodes)
        _drop_if_unused(graph, layer.weight_value)
        return nodes

    # -- report

    def _record(self, done: list[_Done]) -> None:
        before = after = 0.0
        exact = True
        for item in done:
            layer, dec = item.layer, item.decomposition
            entry: dict[str, Any] = dict(
                op=layer.node.op_type, method=self.method, ranks=dec.ranks,
                macs_before=int(round(layer.macs)), macs_after=int(round(dec.macs_after)),
                mac_ratio=round(layer.macs / dec.macs_after, 3) if dec.macs_after else None,
                macs_unit=layer.macs_unit, rel_error=round(float(dec.rel_error), 6),
                seconds=round(item.seconds, 4), **dec.details,
            )
            if item.refit is not None:
                entry["refit"] = item.refit
            self.report.apply(layer.name, **entry)
            before += layer.macs
            after += dec.macs_after
            exact = exact and layer.exact
        self.report.figures.update(
            layers_decomposed=len(done),
            layers_skipped=len(self.report.skipped),
            macs_before=int(before) if exact else None,
            macs_after=int(after) if exact else None,
        )
        if not exact:
            self.report.figures["note"] = ("some spatial sizes are dynamic: those layers' MACs are per output "
                                           "pixel (or row), and min_macs does not apply to them")

    # -- refit

    def _refit(self, model: ir.Model, original, done: list[_Done]) -> None:
        """Re-solve every decomposed layer's last factor on calibration data (see module doc)."""
        try:
            with single_threaded_blas():  # same reason as for the decompositions (see there)
                self._refit_all(model, original, done)
        except Exception as exc:  # calibration data or onnxruntime problems: keep the plain factors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.report.warn(f"refit skipped: {type(exc).__name__}: {first}")
            logger.info("refit failed", exc_info=True)

    def _refit_all(self, model: ir.Model, original, done: list[_Done]) -> None:
        from onnxopt.decomp import LastFactorRefit

        y_names = [d.nodes[-1].outputs[0].name for d in done]
        z_names = _add_side_branches(original, done)
        elem_type = {n: ir.DataType.from_numpy(d.layer.dtype).value
                     for names in (y_names, z_names) for n, d in zip(names, done)}
        names = y_names + z_names
        session = _session(original, names, elem_type)
        del original
        wanted = {i.name for i in session.get_inputs()}

        solvers: list[LastFactorRefit | None] = [None] * len(done)
        batches = 0
        for feeds in self.context.calibration():
            values = dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})))
            tokens = _real_tokens(feeds)
            for index, item in enumerate(done):
                Z, Y = self._refit_samples(item, values[z_names[index]], values[y_names[index]], tokens)
                if solvers[index] is None:
                    solvers[index] = LastFactorRefit(Z.shape[1], Y.shape[1], fit_bias=item.layer.kind != "matmul")
                solvers[index].update(Z, Y)
            batches += 1
            self.context.progress(f"{self.name}: refit batch {batches}", batches, 0)
            del values
        if batches == 0:
            self.report.warn("refit=true but the calibration data yielded no batch: nothing refit")
            return
        refit_layers = 0
        for item, solver in zip(done, solvers):
            item.refit = self._apply_refit(model.graph, item, solver)
            refit_layers += item.refit.get("applied", False)
        self.report.figures["refit"] = {
            "batches": batches, "samples": solvers[0].n_samples if solvers[0] else 0,
            "layers_refit": refit_layers,
            "data": self.context.calibration_description,
        }

    def _refit_samples(self, item: _Done, Z: np.ndarray, Y: np.ndarray,
                       tokens: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Z, Y) as LastFactorRefit wants them: [N, R, H, W] / [rows, R] and [N, F, H, W] / [rows, F].

        ``tokens``: the batch's attention mask ([batch, seq], True = a real token); rows of
        [batch, seq, features] activations at padded positions are left out — on short
        sentences padded to 128 tokens they are most of the rows, and fitting them fits padding.
        """
        last = item.nodes[-1]
        if last.op_type == "Conv":
            kh, kw = item.decomposition.factors[-1].weight.shape[2:]
            if (kh, kw) != (1, 1):
                from onnxopt.decomp import im2col

                attrs = item.decomposition.factors[-1].attributes
                pads = explicit_pads(attrs, (kh, kw), Z.shape[2:])
                Z = im2col(Z, (kh, kw), attrs["strides"], pads, attrs["dilations"])
            return Z, Y
        if tokens is not None and Z.ndim == 3 and Z.shape[:2] == tokens.shape and Y.shape[:2] == tokens.shape:
            return Z[tokens], Y[tokens]
        return Z.reshape(-1, Z.shape[-1]), Y.reshape(-1, Y.shape[-1])

    def _apply_refit(self, graph: ir.Graph, item: _Done, solver) -> dict[str, Any]:
        last = item.nodes[-1]
        factor = item.decomposition.factors[-1]
        layer = item.layer
        F = solver.out_channels
        # current effective weight [F, R] and bias [F] of the last factor
        if last.op_type == "Conv":
            current_w = factor.weight.reshape(F, -1).astype(np.float64)
        else:
            current_w = factor.weight.T.astype(np.float64) * float(factor.attributes.get("alpha", 1.0))
        bias_array = irutil.constant_array(layer.bias_value) if layer.bias_value is not None else None
        if layer.bias_value is not None and bias_array is None:
            return {"applied": False, "reason": "bias is not constant"}
        current_b = np.zeros(F)
        if bias_array is not None:
            beta = float(factor.attributes.get("beta", 1.0)) if last.op_type == "Gemm" else 1.0
            try:
                current_b = np.broadcast_to(bias_array.astype(np.float64) * beta, (F,)).copy()
            except ValueError:
                return {"applied": False, "reason": f"bias of shape {bias_array.shape} is not per output"}
        weight, bias = solver.solve()
        before = solver.relative_residual(current_w, current_b)
        after = solver.relative_residual(weight, bias)
        info = {"residual_before": round(before, 6), "residual_after": round(after, 6)}
        if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))) or not after < before:
            return {"applied": False, "reason": "the refit did not lower the output residual", **info}
        dtype = layer.dtype
        stem = f"{layer.name}/{self.method}_{factor.role}"
        old_weight = last.inputs[1]
        if last.op_type == "Conv":
            new_weight = weight.reshape(factor.weight.shape)
        else:
            new_weight = weight.T
            if last.op_type == "Gemm":
                last.attributes["alpha"] = ir.AttrFloat32("alpha", 1.0)
                last.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        last.replace_input_with(1, irutil.add_initializer(graph, f"{stem}.weight", new_weight.astype(dtype)))
        _drop_if_unused(graph, old_weight)
        if solver.fit_bias:
            old_bias = last.inputs[2] if len(last.inputs) > 2 else None
            new_bias = irutil.add_initializer(graph, f"{stem}.bias", bias.astype(dtype))
            if old_bias is None:
                last.resize_inputs(3)
            last.replace_input_with(2, new_bias)
            if old_bias is not None:
                _drop_if_unused(graph, old_bias)
        return {"applied": True, **info}


# ---------------------------------------------------------------------------- graph helpers


def _drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove an initializer or ``Constant`` node that nothing reads any more."""
    if value is None or irutil.use_count(value) > 0 or value.is_graph_input():
        return
    if value.name in graph.initializers and graph.initializers[value.name] is value:
        graph.initializers.pop(value.name)
        return
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.graph is graph:
        graph.remove(producer, safe=True)


def _real_tokens(feeds: dict[str, np.ndarray]) -> np.ndarray | None:
    """The attention mask of a batch of token inputs (an input named ``mask``, ``*_mask``:
    2-D, integer, bool or float) as booleans, or None."""
    for name, value in feeds.items():
        base = name.rsplit(":", 1)[0].lower()
        if (base == "mask" or base.endswith("_mask")) and value.ndim == 2 and value.dtype.kind in "biuf":
            return value != 0
    return None


def _session(proto, extra_outputs: list[str], elem_types: dict[str, int]):
    """An onnxruntime CPU session on a copy of ``proto`` that also outputs ``extra_outputs``."""
    import onnx
    import onnxruntime as ort

    from onnxopt.io import clamp_ir_version

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    existing = {o.name for o in model.graph.output}
    for name in extra_outputs:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_types[name], None))
            existing.add(name)
    clamp_ir_version(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _add_side_branches(original, done: list[_Done]) -> list[str]:
    """Copy every layer's factors but the last into ``original`` (a ModelProto), reading the
    original layer's input; returns the names of the branch outputs (the refit's Z)."""
    z_names = []
    taken = {t.name for t in original.graph.initializer} | {o for n in original.graph.node for o in n.output}
    for item in done:
        rename: dict[str, str] = {}
        for node in item.nodes[:-1]:
            proto = ir.serde.serialize_node(node)
            for i, name in enumerate(proto.input):
                proto.input[i] = rename.get(name, name)
            for value in node.inputs[1:]:
                if value is not None and value.const_value is not None and value.name not in taken:
                    tensor = ir.serde.serialize_tensor(value.const_value)
                    tensor.name = value.name
                    original.graph.initializer.append(tensor)
                    taken.add(value.name)
            out = proto.output[0]
            new = f"{out}/refit_branch"
            rename[out] = new
            proto.output[0] = new
            proto.name = f"{proto.name}/refit_branch"
            original.graph.node.append(proto)
        z_names.append(rename[item.nodes[-2].outputs[0].name])
    return z_names
