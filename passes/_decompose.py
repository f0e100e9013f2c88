"""Shared machinery of the low-rank decomposition passes ``spatial``, ``tucker``, ``cp``,
``separable`` and ``svd``: each replaces a weight layer (a ``Conv``; for ``svd`` also a
``Gemm`` / ``MatMul`` with a constant weight) by a short chain of cheaper layers computed in
``onnxopt.decomp``; a pass module states only its algebra, rank selection and factors.

* :class:`RankOptions` — one rank selector (``rank``, ``energy``, ``vbmf``, ``speedup``;
  ``energy=0.95`` when none is given), rounding, layer filters, ``refit``, ``force``;
  :class:`WhitenOptions` adds ``whiten`` (auto|true|false) for ``svd`` and ``tucker``.
* :class:`DecomposePass` — walks the main graph (``If``/``Loop`` bodies are left alone),
  skips what :func:`~onnxopt.passes._layers.read_layer` rejects, collects the layers' input
  statistics when whitening (``_whiten``), calls ``_try_decompose``
  per layer (in ``--jobs`` threads, one BLAS thread each; the result does not depend on
  it), skips "MACs would not drop" unless ``force``, emits the factors (``_surgery``),
  refits them (``_refit``) and reports ``method``, ``ranks``, ``macs_before`` /
  ``macs_after`` / ``macs_unit``, ``rel_error`` (‖W − Ŵ‖/‖W‖) and ``seconds`` per layer.
  Skip reasons, never exceptions: those of ``read_layer``, "MACs would not drop",
  "speedup=S is out of reach (rank 1 gives …)", "decomposition failed: …". Factor nodes are
  marked, so a second run of any decomposition pass changes nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import onnx_ir as ir

from onnxopt import irutil
from onnxopt.analysis.shapes import static_shapes
from onnxopt.decomp import blas_threads, select_by
from onnxopt.passbase import OptimizerPass, option
from onnxopt.passes._layers import (  # noqa: F401  (conv_out_hw, Factor: names other modules import from here)
    DecomposedLayer,
    Decomposition,
    Factor,
    Layer,
    conv_out_hw,
    read_layer,
)
from onnxopt.passes._refit import refit_last_factors
from onnxopt.passes._surgery import emit_factors
from onnxopt.passes._whiten import collect_input_moments
from onnxopt.report import human_count

DEFAULT_ENERGY = 0.95


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
        16, "skip layers whose input has fewer channels (a 3-channel stem saves little and costs much "
            "accuracy)")
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


@dataclass(frozen=True)
class WhitenOptions(RankOptions):
    """Rank options plus ``whiten``, for the passes that factor against input statistics."""

    whiten: bool | Literal["auto"] = option(
        "auto", "factor each layer against the second moment of its real input on the calibration data "
                "(SVD-LLM / ASVD whitening: at the ranks the weights select, the factors minimise the output "
                "error rather than the weight error); auto: on when the pass gets calibration data (with --data, "
                "unless refit=false)")


class SkipLayer(Exception):
    """Raised by a pass's rank selection to skip the layer with ``str(exc)`` as the reason."""


def check_speedup_reachable(speedup: float, original_macs: float, smallest_macs: float) -> None:
    """Skip a layer whose MACs cannot drop by ``speedup`` even at rank 1 (rank 1 would only
    destroy the layer; ``select_rank`` would otherwise fall back to it with a warning)."""
    best = original_macs / smallest_macs if smallest_macs else float("inf")
    if best < speedup:
        raise SkipLayer(f"speedup={speedup:g} is out of reach (rank 1 gives {best:.2f}×)")


# ---------------------------------------------------------------------------- the base pass


class DecomposePass(OptimizerPass, ir.passes.InPlacePass):
    """Base of the decomposition passes; subclasses set ``method`` and implement
    ``_kernel_reason`` and ``_try_decompose``."""

    Options: ClassVar[type] = RankOptions
    method: ClassVar[str]
    op_types: ClassVar[tuple[str, ...]] = ("Conv",)
    lossless = False
    needs_data = False  # the pass works without data;
    optional_data = True  # refit=true uses calibration data; whitening too (WhitenOptions)

    @classmethod
    def uses_data(cls, options: RankOptions) -> bool:
        return bool(getattr(options, "refit", False)) or getattr(options, "whiten", False) is True

    # -- hooks

    def _kernel_reason(self, kh: int, kw: int) -> str | None:
        """A skip reason for kernels this pass does not handle (default: 1×1)."""
        if kh == 1 and kw == 1:
            return "1×1 kernel: nothing to factor spatially (use the svd pass)"
        return None

    def _try_decompose(self, layer: Layer) -> Decomposition | str:
        """The layer's decomposition, or a skip reason (returned, or raised as :class:`SkipLayer`)."""
        raise NotImplementedError

    # -- helpers for subclasses

    def _check_macs_drop(self, layer: Layer, macs_after: float) -> None:
        """Skip the layer ("MACs would not drop") unless its MACs drop or ``force`` is set."""
        if not (macs_after < layer.macs or self.options.force):
            raise SkipLayer(f"MACs would not drop ({human_count(layer.macs)} → {human_count(macs_after)} "
                            f"{layer.macs_unit})")

    def _select_rank(self, max_rank: int | tuple[int, int], *, singular_values=None, vbmf_matrix=None,
                     macs_for=None, original_macs: float | None = None, round_to: int | None = None):
        """One rank in [1, max_rank] (or a pair for ``max_rank = (F, C)``) from the options'
        selector, rounded up to ``round`` (``round_to`` overrides it); see
        :func:`onnxopt.decomp.select_by`. ``speedup`` out of reach even at rank 1 skips the layer."""
        key, value = self.options.selector
        if key == "speedup":
            ones = (1, 1) if isinstance(max_rank, tuple) else (1,)
            check_speedup_reachable(value, original_macs, macs_for(*ones))
        return select_by(self.options.selector, max_rank, singular_values=singular_values,
                         vbmf_matrix=vbmf_matrix, macs_for=macs_for, original_macs=original_macs,
                         round_to=self.options.round if round_to is None else round_to)

    # -- the walk

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        opset = irutil.opset_version(model)
        self.report.figures["rank_selection"] = self.options.describe_selector()
        candidates = [n for n in graph if n.op_type in self.op_types and n.domain in ("", "ai.onnx")]
        if not candidates:
            return ir.passes.PassResult(model, False)
        shapes = static_shapes(model, [n.inputs[0].name for n in candidates if n.inputs and n.inputs[0] is not None])
        layers: list[tuple[str, ir.Node, Layer | str]] = []
        for index, node in enumerate(candidates):
            name = node.name or (node.outputs[0].name if node.outputs else f"{node.op_type}_{index}")
            layers.append((name, node, read_layer(node, name, shapes, self.options, self._kernel_reason)))
        work = [layer for _, _, layer in layers if not isinstance(layer, str)]
        if self._whitening():
            collect_input_moments(model, work, context=self.context, report=self.report, pass_name=self.name)
        results: dict[int, tuple[Decomposition | str, float]] = {}
        jobs = max(1, min(int(self.context.jobs or 1), len(work)))
        for layer in work:
            layer.opset = opset
            layer.progress = self.context.progress if jobs == 1 else None  # not from worker threads
        with blas_threads(1):  # small matrices: BLAS threads cost more than they give (onnxopt.decomp._blas)
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
        planned: list[DecomposedLayer] = []
        for name, node, layer in layers:
            if isinstance(layer, str):
                self.report.skip(name, layer, op=node.op_type)
                continue
            result, seconds = results[id(layer)]
            if isinstance(result, str):
                self.report.skip(name, result, op=node.op_type)
            else:
                planned.append(DecomposedLayer(layer, result, [], seconds))
        self.context.progress(f"{self.name}: done", len(work), len(work))
        if not planned:
            return ir.passes.PassResult(model, False)

        refit = self.options.refit
        if refit and self.context.calibration is None:
            self.report.warn("refit=true but no calibration data was given (--data): the last factors are not refit")
            refit = False
        original = ir.to_proto(model) if refit else None  # before any rewrite
        for done in planned:
            done.nodes = emit_factors(graph, done.layer, done.decomposition, self.method)
        if refit:
            refit_last_factors(model, original, planned, context=self.context, report=self.report,
                               pass_name=self.name, method=self.method)
        self._record(planned)
        return ir.passes.PassResult(model, True)

    def _whitening(self) -> bool:
        """Whether to collect input statistics: ``whiten`` true, or auto with calibration data."""
        choice = getattr(self.options, "whiten", False)
        if choice is False:
            return False
        if self.context.calibration is None:
            if choice is True:
                self.report.warn("whiten=true but no calibration data was given (--data): the weights are "
                                 "factored without whitening")
            return False
        return True

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

    # -- report

    def _record(self, done: list[DecomposedLayer]) -> None:
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

