"""Python API: what the CLI does, for people who script it.

    import onnxopt
    model, report = onnxopt.optimize("model.onnx", passes="simplify,tucker:energy=0.95")
    onnxopt.save(model, "model.opt.onnx")
    print(report.to_dict()["after"]["macs"])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import onnx
import onnx_ir as ir

from onnxopt import io
from onnxopt.analysis import model_stats
from onnxopt.errors import InputError, PassFailed, UsageError
from onnxopt.passbase import OptimizerPass, PassContext
from onnxopt.pipeline import run_passes
from onnxopt.registry import PassSpec, build_passes, load_config, parse_spec
from onnxopt.report import RunReport

logger = logging.getLogger(__name__)

ModelLike = "str | os.PathLike | onnx.ModelProto | ir.Model"


def resolve_specs(passes: str | list[PassSpec] | None = None, config: str | os.PathLike | None = None) -> list[PassSpec]:
    """The pipeline from a spec string, a list of specs, or a config file (exactly one)."""
    if passes is not None and config is not None:
        raise UsageError("give either passes or a config file, not both")
    if config is not None:
        return load_config(config)
    if passes is None or (isinstance(passes, str) and not passes.strip()):
        raise UsageError("no passes given (use --passes or --config; 'onnxopt passes' lists them)")
    return parse_spec(passes) if isinstance(passes, str) else list(passes)


def _as_proto(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, ir.Model):
        return ir.to_proto(model)
    return io.load_proto(model)


def optimize(
    model: str | os.PathLike | onnx.ModelProto | ir.Model,
    passes: str | list[PassSpec] | None = "simplify",
    *,
    config: str | os.PathLike | None = None,
    context: PassContext | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    on_pass_start: Callable[[OptimizerPass, int, int], None] | None = None,
) -> tuple[onnx.ModelProto, RunReport]:
    """Apply a pipeline and return the optimized model (a new ``ModelProto``) and its report.

    The input is never modified: a path is read, a ``ModelProto`` or ``ir.Model`` is copied.
    Raises :class:`~onnxopt.errors.OnnxoptError` subclasses (``UsageError`` for a bad
    pipeline, ``InputError`` for an unusable model, ``PassFailed`` when a pass raises).
    """
    specs = resolve_specs(passes if config is None else None, config)
    opt_passes = build_passes(specs, context)  # validate the pipeline before loading anything
    original = _as_proto(model)
    io.check_model(original, "input")
    try:
        working = ir.from_proto(original)  # a copy: the caller's model stays untouched
    except Exception as exc:
        raise InputError(f"input: cannot read the graph: {exc}") from None

    report = RunReport()
    report.before = model_stats(original, input_shapes).to_dict()
    working, report.passes = run_passes(working, opt_passes, on_start=on_pass_start)

    result = io.to_proto(working, original_ir_version=original.ir_version)
    try:
        io.check_model(result, "optimized model")
    except InputError as exc:
        raise PassFailed("checker", str(exc)) from None
    report.after = model_stats(result, input_shapes).to_dict()
    return result, report


def load(source: str | os.PathLike) -> onnx.ModelProto:
    """Read a model the way the CLI does (external data contained to the model's folder)."""
    return io.load_proto(source)


def save(model: onnx.ModelProto | ir.Model, output: str | os.PathLike) -> None:
    """Write atomically (external data beside the file above 2 GB)."""
    proto = io.to_proto(model) if isinstance(model, ir.Model) else model
    io.save_proto(proto, output)
