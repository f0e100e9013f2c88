"""Python API: what the CLI does, for people who script it.

    import onnxopt
    model, report = onnxopt.optimize("model.onnx", passes="simplify,tucker:energy=0.95")
    onnxopt.save(model, "model.opt.onnx")
    macs_after = report.to_dict()["after"]["macs"]
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import onnx
import onnx_ir as ir

from onnxopt import io
from onnxopt.analysis import model_stats
from onnxopt.errors import InputError, PassFailed, UsageError
from onnxopt.passbase import OptimizerPass, PassContext
from onnxopt.pipeline import run_passes
from onnxopt.registry import PassSpec, build_passes, load_config, parse_spec
from onnxopt.report import RunReport

if TYPE_CHECKING:
    from onnxopt.validate.gate import GateSettings
    from onnxopt.validate.inputs import DataSource
    from onnxopt.validate.metrics import Tolerances

logger = logging.getLogger(__name__)

def resolve_specs(passes: str | list[PassSpec] | None = None, config: str | os.PathLike | None = None) -> list[PassSpec]:
    """The pipeline from a spec string, a list of specs, or a config file (exactly one)."""
    if passes is not None and config is not None:
        raise UsageError("give either --passes or --config, not both")
    if config is not None:
        return load_config(config)
    if passes is None or (isinstance(passes, str) and not passes.strip()):
        raise UsageError("give --passes or --config ('onnxopt passes' lists the passes)")
    return parse_spec(passes) if isinstance(passes, str) else list(passes)


def _as_proto(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, ir.Model):
        return ir.to_proto(model)
    return io.load_proto(model)


def optimize(
    model: str | os.PathLike | onnx.ModelProto | ir.Model,
    passes: str | list[PassSpec] | None = None,
    *,
    config: str | os.PathLike | None = None,
    origin: str | None = None,
    context: PassContext | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    on_pass_start: Callable[[OptimizerPass, int, int], None] | None = None,
    validation: GateSettings | None = None,
    on_validation_progress: Callable[[int, int], None] | None = None,
) -> tuple[onnx.ModelProto, RunReport]:
    """Apply a pipeline and return the optimized model (a new ``ModelProto``) and its report.

    With ``validation`` (see :func:`gate_settings` and :func:`data_source`), the optimized
    model is compared with the original on onnxruntime and ``report.validation["passed"]``
    says whether it met the tolerances; the caller decides what to do with a failure (the
    CLI writes nothing). Without it — the API's default, unlike the CLI's — the report
    records that validation was skipped. ``on_validation_progress(done, total)`` is called
    after each validation batch.

    The input is never modified: a path is read, a ``ModelProto`` or ``ir.Model`` is copied;
    ``context`` is copied too. Not for concurrent use by threads of one process (onnxruntime's
    quantizer and shape inference run with the working directory in a scratch folder).
    Raises :class:`~onnxopt.errors.OnnxoptError` subclasses (``UsageError`` for a bad
    pipeline, ``InputError`` for an unusable model, ``PassFailed`` when a pass raises).
    """
    specs = resolve_specs(passes, config)
    # a copy: the caller's context is not changed (it may be reused for another model)
    context = dataclasses.replace(context) if context is not None else PassContext()
    if input_shapes and context.input_shapes is None:  # search passes (auto) time layers at these shapes
        context.input_shapes = dict(input_shapes)
    opt_passes = build_passes(specs, context)  # validate the pipeline before loading anything
    original = _as_proto(model)
    origin = origin or (str(model) if isinstance(model, (str, os.PathLike)) else "input")
    io.check_model(original, origin)
    if context.random_inputs is None:  # calib=random and data-less fp16 checks: inputs the model can take
        from onnxopt.validate.inputs import random_feeds

        context.random_inputs = lambda count: random_feeds(original, count, seed=1, input_shapes=context.input_shapes)
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
    if validation is None:
        report.validation = {"skipped": True, "passed": None, "reason": "not requested"}
    elif not (io.fits_in_protobuf(original) and io.fits_in_protobuf(result)):
        report.validation = {"skipped": True, "passed": None, "reason": "models over 2 GB are not validated"}
        report.warnings.append("validation skipped: models over 2 GB are not validated in memory")
    else:
        from onnxopt.runtime.isolation import check_candidate, first_batch
        from onnxopt.validate.gate import run_gate

        asked = {key: value for pass_report in report.passes for key, value in pass_report.validate_with.items()}
        original_bytes, optimized_bytes = io.runnable_bytes(original), result.SerializeToString()
        # A native crash in onnxruntime would kill this process: both run first in a child
        # (CandidateFailed, exit 3, when the optimized model crashes or does not load/run).
        check_candidate(original_bytes, optimized_bytes, first_batch(validation.source, validation.batch_size),
                        validation.providers, passes=report.passes, config=asked)
        gate = run_gate(original_bytes, optimized_bytes, validation, optimized_config=asked,
                        progress=on_validation_progress)
        report.validation = gate.report
        report.benchmark = gate.benchmark
        if gate.benchmark and gate.benchmark.get("warning"):
            report.warnings.append(gate.benchmark["warning"])
    return result, report


def gate_settings(
    passes: str | list[PassSpec],
    source: DataSource,
    *,
    providers: str = "cpu",
    tolerances: Tolerances | None = None,
    labels: Mapping[str, int] | None = None,
    batch_size: int = 1,
    bench: bool = False,
    min_speedup: float | None = None,
    has_data: bool | None = None,
) -> GateSettings:
    """Validation settings for :func:`optimize` with the CLI's defaults.

    ``source`` is the evaluation data (see :func:`data_source`); ``tolerances`` default by
    what the pipeline contains and whether the data is real (``has_data``; by default,
    unless ``source`` holds random inputs) — see :mod:`onnxopt.validate.gate`.
    """
    from onnxopt.registry import get
    from onnxopt.runtime import resolve_providers
    from onnxopt.validate.gate import GateSettings, default_tolerances
    from onnxopt.validate.inputs import RandomSource

    if has_data is None:
        has_data = not isinstance(source, RandomSource)

    specs = parse_spec(passes) if isinstance(passes, str) else passes
    choice = resolve_providers(providers)
    reason = "given"
    if tolerances is None or tolerances.is_empty():
        tolerances, reason = default_tolerances([get(spec.name) for spec in specs], has_data=has_data)
        reason = f"default for {reason}"
    return GateSettings(
        source=source, providers=list(choice.providers), tolerances=tolerances, tolerance_reason=reason,
        labels=labels, batch_size=batch_size,
        bench=bench or min_speedup is not None, min_speedup=min_speedup, notes=list(choice.notes),
        has_data=has_data,
    )


def data_source(
    model: onnx.ModelProto,
    *,
    data: str | os.PathLike | None = None,
    preprocess: str | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    samples: int | None = None,
    batch_size: int = 1,
    seed: int = 0,
    default_random_samples: int = 8,
) -> DataSource:
    """Samples from ``data`` (streamed), or seeded random inputs when it is None."""
    from onnxopt.errors import UsageError
    from onnxopt.validate.inputs import model_inputs, open_data, random_source, resolve_shapes

    inputs = model_inputs(model)
    shapes = resolve_shapes(inputs, dict(input_shapes or {}), batch_size)
    if data is None:
        if preprocess is not None:
            raise UsageError("--preprocess needs --data (a folder of images)")
        return random_source(inputs, shapes, samples or default_random_samples, seed)
    source = open_data(str(data), inputs, preprocess=preprocess, shapes=shapes)
    return source.subset(0, samples) if samples is not None else source


def split_calibration(source: DataSource, calibration_samples: int) -> tuple[DataSource, DataSource]:
    """Disjoint calibration and evaluation parts: the first samples calibrate.

    At most half of the data goes to calibration, so evaluation always keeps samples.
    """
    from onnxopt.errors import InputError

    if len(source) < 2:
        raise InputError(f"{source.description}: needs at least 2 samples to calibrate and evaluate on disjoint parts")
    count = max(1, min(calibration_samples, len(source) // 2))
    return source.split(count)


def data_defaults(passes: str | list[PassSpec], has_data: bool) -> tuple[list[PassSpec], list[str]]:
    """The pipeline with the defaults that real data (``--data``) turns on, and notes.

    With data, decomposition passes refit (``refit=true``) unless the spec sets ``refit``
    (``refit=false`` turns it off): the refit re-solves each layer's last factor on the
    calibration part, and the gate then judges on real data. Search passes (``auto``)
    choose for themselves.
    """
    import dataclasses

    from onnxopt.registry import get

    specs = parse_spec(passes) if isinstance(passes, str) else list(passes)
    if not has_data:
        return specs, []
    result, refitted = [], []
    for spec in specs:
        cls = get(spec.name)
        options = {f.name for f in dataclasses.fields(cls.Options)} if dataclasses.is_dataclass(cls.Options) else set()
        if "refit" in options and "refit" not in spec.options and not cls.needs_evaluator:
            spec = PassSpec(spec.name, {**spec.options, "refit": True})
            refitted.append(spec.name)
        result.append(spec)
    notes = [f"refit on by default with --data: {', '.join(dict.fromkeys(refitted))} (refit=false turns it off)"] \
        if refitted else []
    return result, notes


def prepare_context(
    original: onnx.ModelProto,
    passes: str | list[PassSpec],
    source: DataSource,
    *,
    has_data: bool,
    calibration_samples: int = 100,
    batch_size: int = 1,
    jobs: int = 1,
    providers: str = "cpu",
    tolerances: Tolerances | None = None,
    labels: Mapping[str, int] | None = None,
    target: str = "cpu",
    time_budget: float | None = None,
    save_config: str | os.PathLike | None = None,
) -> tuple[PassContext, DataSource, list[str]]:
    """The context passes run with, the evaluation data, and notes for the report.

    When a pass needs data and ``has_data`` (real ``--data`` rather than random inputs),
    ``source`` is split: the first ``calibration_samples`` (at most half) calibrate and
    search, the rest evaluates — disjoint. Search passes (``auto``) also get a
    :class:`~onnxopt.validate.evaluator.SplitEvaluator` with ``tolerances`` as the budget.
    """
    from onnxopt.registry import build_options, get

    specs = parse_spec(passes) if isinstance(passes, str) else list(passes)
    classes = [get(spec.name) for spec in specs]
    wants_data = any(cls.uses_data(build_options(cls, spec.options)) for cls, spec in zip(classes, specs))
    from onnxopt.runtime import resolve_providers

    # passes see the providers the run really uses: "auto" resolved, CUDA only where it loads
    context = PassContext(jobs=jobs, providers=tuple(resolve_providers(providers).providers),
                          time_budget=time_budget, save_config=str(save_config) if save_config else None)
    notes: list[str] = []
    evaluation = source
    if wants_data and has_data:
        calibration, evaluation = split_calibration(source, calibration_samples)
        context.calibration = lambda: (batch.feeds for batch in calibration.batches(batch_size))
        context.calibration_description = calibration.description
        notes.append(f"calibration: {calibration.description}; evaluation: {evaluation.description} (disjoint)")
    if any(cls.needs_evaluator for cls in classes):
        from onnxopt.runtime import resolve_providers
        from onnxopt.validate.evaluator import SplitEvaluator
        from onnxopt.validate.gate import LOSSY_TOLERANCES

        notes.extend(resolve_providers(target).notes)  # explicit cuda that does not load: exit 2

        if not has_data:
            notes.append("search scored on random inputs: give --data with real samples for a meaningful budget")
            calibration, evaluation = split_calibration(source, calibration_samples)
        budget = tolerances if tolerances is not None and not tolerances.is_empty() else LOSSY_TOLERANCES
        context.evaluator = SplitEvaluator(
            io.runnable_bytes(original), calibration, evaluation, budget,
            target=target, batch_size=batch_size, labels=labels,
        )
        context.search = _run_search
        notes.append(f"search budget: {', '.join(f'{k}={v:g}' for k, v in budget.to_dict().items() if v is not None)}"
                     f" on {target}")
    return context, evaluation, notes


def _run_search(*args, **kwargs):
    """The search engine a search pass hands its model to (imported on first use)."""
    from onnxopt.search import run_search

    return run_search(*args, **kwargs)


def load(source: str | os.PathLike) -> onnx.ModelProto:
    """Read a model the way the CLI does (external data contained to the model's folder)."""
    return io.load_proto(source)


def save(model: onnx.ModelProto | ir.Model, output: str | os.PathLike) -> None:
    """Write atomically (external data beside the file above 2 GB)."""
    proto = io.to_proto(model) if isinstance(model, ir.Model) else model
    io.save_proto(proto, output)
