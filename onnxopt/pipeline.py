"""Run a list of passes, time each one, then the cleanup every pipeline ends with.

Cleanup (always, after the user's passes): remove unused nodes and initializers, then
sort topologically. The ONNX checker runs on the final protobuf (see ``onnxopt.api``)
because that is what gets written.

A pass that raises stops the run with :class:`~onnxopt.errors.PassFailed` naming the
pass; the caller then writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

from onnxopt.errors import OnnxoptError, PassFailed, one_line
from onnxopt.passbase import OptimizerPass
from onnxopt.report import PassReport

logger = logging.getLogger(__name__)


def _reason(exc: BaseException) -> str:
    text = one_line(exc)
    return type(exc).__name__ if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"


def cleanup(model: ir.Model) -> ir.Model:
    for cleanup_pass in (RemoveUnusedNodesPass(), TopologicalSortPass()):
        try:
            model = cleanup_pass(model).model
        except Exception as exc:
            raise PassFailed(f"cleanup ({type(cleanup_pass).__name__})", _reason(exc)) from exc
    return model


def run_passes(
    model: ir.Model,
    passes: list[OptimizerPass],
    *,
    on_start: Callable[[OptimizerPass, int, int], None] | None = None,
) -> tuple[ir.Model, list[PassReport]]:
    """Apply ``passes`` in order, then cleanup. Returns the model and one report per pass."""
    reports = []
    for index, opt_pass in enumerate(passes):
        if on_start is not None:
            on_start(opt_pass, index, len(passes))
        logger.info("running pass %s", opt_pass.name)
        start = time.perf_counter()
        try:
            result = opt_pass(model)
        except OnnxoptError:
            raise
        except Exception as exc:
            raise PassFailed(opt_pass.name, _reason(exc)) from exc
        opt_pass.report.seconds = time.perf_counter() - start
        opt_pass.report.modified = bool(result.modified)
        model = result.model
        reports.append(opt_pass.report)
    return cleanup(model), reports
