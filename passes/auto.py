"""``auto``: the fastest model within an accuracy budget, found by measuring on the target.

The user states a budget (the validation tolerances: ``--min-agreement``, ``--min-cosine``
or ``--max-rel-error``) and gives data; ``auto`` chooses, layer by layer, a low-rank
decomposition (``spatial``, ``tucker``, ``cp``, ``separable``, ``svd``) and a rank level, or
none, and optionally a quantization, so that the model runs as fast as possible on the
target provider while meeting the budget on data the search never saw. Decisions are taken
on measured latency, not MACs: fewer MACs can run slower (extra nodes, memory-bound 1×1
convolutions, ranks off the SIMD width); ranks are rounded to 16 on CPU, 8 on CUDA.

This module states the pass and its options; the search itself lives in
:mod:`onnxopt.search` (above the passes), which the caller hands over as
``context.search`` together with the ``context.evaluator`` that scores and times models.
Every model it builds is built with the plain passes, as the pipeline config it saves.
With calibration data and PyTorch, the final candidates that decompose are also recovered
(the ``recover`` pass after the decomposition; ``recover=auto|true|false``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import onnx_ir as ir

from onnxopt.passbase import OptimizerPass, option
from onnxopt.registry import register

CONV_METHODS = ("spatial", "tucker", "cp", "separable")
MATRIX_METHODS = ("svd",)
ALL_METHODS = (*CONV_METHODS, *MATRIX_METHODS)


@dataclass(frozen=True)
class AutoOptions:
    methods: tuple[str, ...] = option(
        ALL_METHODS, "decomposition methods to try ('|'-separated): spatial, tucker, cp, separable (k×k convs), "
                     "svd (1×1 convs, Gemm, MatMul)")
    levels: tuple[float, ...] = option((0.9, 0.95, 0.98), "rank levels: singular-value energy kept, in (0, 1]")
    quantize: Literal["none", "int8", "fp16"] = option(
        "none", "quantize after decomposing, within the same budget; the result is never slower than the "
                "quantization alone")
    round: int | None = option(None, "round ranks up to a multiple of this (default: 16 on cpu, 8 on cuda)")
    refit: bool = option(False, "refit each decomposed layer's last factor on the search data (slower search)")
    min_layer_speedup: float = option(
        1.1, "a decomposed layer must run at least this much faster than the original layer, measured")
    min_speedup: float = option(
        1.02, "a lossy result must beat the next-slower candidate meeting the budget by this factor")
    min_macs: float = option(1e6, "skip layers with fewer MACs per sample")
    min_pointwise_channels: int = option(
        128, "1×1 convs, Gemm and MatMul are candidates when both weight dimensions reach this")
    max_layers: int = option(0, "consider only the N layers with the most MACs (0 = all)")
    per_layer: int = option(3, "time-saving candidates per layer whose sensitivity is measured")
    sensitivity_samples: int | None = option(
        None, "search samples the per-layer sensitivity is measured on (0 = all; default: all when scoring the "
              "whole search split takes under 3 s, else 16)")
    latency_runs: int = option(20, "timed rounds per latency measurement")
    patience: int = option(3, "stop adding layers after this many failed in a row")
    margin: float = option(
        0.25, "share of the budget's slack the search keeps in reserve, so that its answer also holds on the "
              "holdout split (0 = search right up to the budget)")
    include: tuple[str, ...] = option((), "only layers whose node name matches one of these globs")
    exclude: tuple[str, ...] = option((), "skip layers whose node name matches one of these globs")
    time_budget: float | None = option(None, "seconds the search may spend (default: the context's --time-budget)")
    cache_dir: str | None = option(None, "cache folder (default $XDG_CACHE_HOME/onnxopt/auto)")
    cache: bool = option(True, "read and write the measurement cache")
    recover: bool | Literal["auto"] = option(
        "auto", "distil the final candidates that decompose on the calibration data (the recover pass after the "
                "decomposition, before the quantization): auto = when --data is given and PyTorch is installed, "
                "true = required, false = never")
    recover_steps: int = option(200, "optimizer steps of each recovery (early stopping may end it sooner)")

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(ALL_METHODS)}")
        if not self.methods:
            raise ValueError("give at least one method")
        if not self.levels or any(not (0 < level <= 1) for level in self.levels):
            raise ValueError("levels must be energies in (0, 1]")
        if self.round is not None and self.round < 1:
            raise ValueError("round must be >= 1")
        if self.min_layer_speedup < 1 or self.min_speedup < 1:
            raise ValueError("min_layer_speedup and min_speedup must be >= 1")
        if self.per_layer < 1 or self.latency_runs < 1 or self.patience < 1 or self.recover_steps < 1:
            raise ValueError("per_layer, latency_runs, patience and recover_steps must be >= 1")
        if (self.sensitivity_samples or 0) < 0 or self.max_layers < 0 or self.min_macs < 0:
            raise ValueError("sensitivity_samples, max_layers and min_macs must be >= 0")
        if not 0 <= self.margin < 1:
            raise ValueError("margin must be in [0, 1)")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError("time_budget must be > 0")


@register
class SearchDecompositionPass(OptimizerPass, ir.passes.FunctionalPass):
    name = "auto"
    summary = ("fastest model within the accuracy budget: per-layer decomposition (and quantize=int8|fp16) "
               "chosen by latency measured on the target; needs --data and a budget")
    Options: ClassVar[type] = AutoOptions
    lossless = False
    needs_data = True
    needs_evaluator = True

    @classmethod
    def capability(cls) -> str:
        return super().capability() + ", needs an accuracy budget (searches with measurements)"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.context.evaluator is None or self.context.search is None:
            self.report.skip_pass("needs a candidate evaluator (run through 'onnxopt optimize' or "
                                  "onnxopt.api.prepare_context, with --data and a budget)")
            return ir.passes.PassResult(model.clone(), False)
        return self.context.search(model, self.options, self.context, self.report)


__all__ = ["ALL_METHODS", "CONV_METHODS", "MATRIX_METHODS", "AutoOptions", "SearchDecompositionPass"]
