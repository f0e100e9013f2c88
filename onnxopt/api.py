"""Python API: what the CLI does, for people who script it.

    import onnxopt
    model, report = onnxopt.optimize("model.onnx", passes="simplify,tucker:energy=0.95")
    onnxopt.save(model, "model.opt.onnx")

    from onnxopt import api
    result = api.run("model.onnx", "simplify,int8", output="int8.onnx", data="images/")
    result.passed, result.report.written  # the gate's verdict; written only if it passed (or force)

:func:`run` is the one trip ``onnxopt optimize`` takes: the spec parsed once into a
:class:`~onnxopt.pipeline.Pipeline`, the data, the passes' context, the gate, then the
write-or-not decision. :func:`optimize`, :func:`data_source`, :func:`prepare_context` and
:func:`gate_settings` are its steps, usable alone; each takes a spec or a ``Pipeline``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import onnx
import onnx_ir as ir

from onnxopt import io
from onnxopt.analysis import model_stats
from onnxopt.errors import InputError, PassFailed, UsageError
from onnxopt.passbase import OptimizerPass, PassContext
from onnxopt.pipeline import Pipeline, run_passes
from onnxopt.registry import PassSpec
from onnxopt.report import RunReport, json_text
from onnxopt.runtime.ir_version import runnable_bytes

if TYPE_CHECKING:
    from onnxopt.validate.gate import GateSettings
    from onnxopt.validate.sources import DataSource
    from onnxopt.validate.tolerances import Tolerances

logger = logging.getLogger(__name__)

PassesArg = str | list[PassSpec] | Pipeline
"""A pipeline as the functions below take it: a spec string, a list of specs, or parsed."""


@dataclass
class RunResult:
    """What :func:`run` returns: the optimized model, its report and the gate's verdict."""

    model: onnx.ModelProto
    report: RunReport

    @property
    def passed(self) -> bool | None:
        """True or False: the validation gate's verdict; None when validation was skipped."""
        return (self.report.validation or {}).get("passed")

    @property
    def written(self) -> bool:
        return self.report.written


def run(
    model: str | os.PathLike | onnx.ModelProto | ir.Model,
    passes: PassesArg | None = None,
    *,
    config: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    report_path: str | os.PathLike | None = None,
    in_place: bool = False,
    force: bool = False,
    data: str | os.PathLike | None = None,
    preprocess: str | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    samples: int | None = None,
    batch_size: int = 1,
    seed: int = 0,
    labels: Mapping[str, int] | None = None,
    tolerances: Tolerances | None = None,
    providers: str = "cpu",
    validate: bool = True,
    skip_reason: str = "not requested",
    bench: bool = False,
    min_speedup: float | None = None,
    calibration_samples: int = 100,
    jobs: int = 1,
    target: str = "cpu",
    time_budget: float | None = None,
    save_config: str | os.PathLike | None = None,
    origin: str | None = None,
    stdout: BinaryIO | None = None,
    on_pass_start: Callable[[OptimizerPass, int, int], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    on_validation_progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Optimize, validate and write a model, as ``onnxopt optimize`` does.

    ``passes`` (or ``config``) is parsed once and checked whole before the model is read.
    With ``data`` (an .npz, .npy or image folder) decompositions refit by default and
    passes that need data calibrate on its first ``calibration_samples`` (at most half),
    the rest evaluates; without it the gate runs on seeded random inputs. ``validate=False``
    skips the gate (the report gives ``skip_reason``).

    ``output`` (a path, or ``"-"`` for ``stdout``, default ``sys.stdout.buffer``) is written
    atomically only when the gate passed or was skipped, or with ``force``; the input file
    is never written (unless it is ``output`` and ``in_place``); outputs are checked before
    any work. ``report_path`` receives the JSON report. The gate's failure is not an
    exception: see :attr:`RunResult.passed`. The callbacks report progress (see
    :func:`optimize` and :attr:`~onnxopt.passbase.PassContext.progress`).
    """
    if not validate and (bench or min_speedup is not None):
        raise UsageError("--bench/--min-speedup are part of validation; drop --no-validate")
    has_data = data is not None
    pipeline, default_notes = with_data_defaults(Pipeline.parse(passes, config), has_data)
    from_file = isinstance(model, str | os.PathLike)
    io.check_output_targets([output, report_path, save_config], [os.fspath(model)] if from_file else [], in_place)

    original = _as_proto(model)
    if origin is None:
        origin = ("stdin" if os.fspath(model) == io.STDIO else os.fspath(model)) if from_file else "input"
    source = data_source(original, data=data, preprocess=preprocess, input_shapes=input_shapes,
                         samples=samples, batch_size=batch_size, seed=seed)
    context, evaluation, notes = prepare_context(
        original, pipeline, source, has_data=has_data, calibration_samples=calibration_samples,
        batch_size=batch_size, jobs=jobs, providers=providers, tolerances=tolerances, labels=labels,
        target=target, time_budget=time_budget, save_config=save_config,
    )
    if on_progress is not None:
        context.progress = on_progress
    validation = None
    if validate:
        validation = gate_settings(pipeline, evaluation, providers=providers, tolerances=tolerances, labels=labels,
                                   batch_size=batch_size, bench=bench, min_speedup=min_speedup)
    optimized, report = optimize(original, pipeline, context=context, input_shapes=input_shapes,
                                 on_pass_start=on_pass_start, validation=validation, origin=origin,
                                 on_validation_progress=on_validation_progress)
    report.notes.extend([*default_notes, *notes])
    if not validate:
        report.validation["reason"] = skip_reason
    report.output = None if output is None else os.fspath(output)

    result = RunResult(optimized, report)
    if output is not None and (result.passed is not False or force):
        io.save_proto(optimized, output, stdout=stdout)
        report.written = True
    if report_path is not None:
        io.write_text_atomic(report_path, json_text(report.to_dict()))
    return result


def _as_proto(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, ir.Model):
        return ir.to_proto(model)
    return io.load_proto(model)


def optimize(
    model: str | os.PathLike | onnx.ModelProto | ir.Model,
    passes: PassesArg | None = None,
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
    says whether it met the tolerances; the caller decides what to do with a failure
    (:func:`run` writes nothing). Without it — the default here, unlike :func:`run`'s — the
    report records that validation was skipped. ``on_validation_progress(done, total)`` is
    called after each validation batch.

    The input is never modified: a path is read, a ``ModelProto`` or ``ir.Model`` is copied;
    ``context`` is copied too. Not for concurrent use by threads of one process (onnxruntime's
    quantizer and shape inference run with the working directory in a scratch folder).
    Raises :class:`~onnxopt.errors.OnnxoptError` subclasses (``UsageError`` for a bad
    pipeline, ``InputError`` for an unusable model, ``PassFailed`` when a pass raises).
    """
    pipeline = Pipeline.parse(passes, config)
    # a copy: the caller's context is not changed (it may be reused for another model)
    context = dataclasses.replace(context) if context is not None else PassContext()
    if input_shapes and context.input_shapes is None:  # search passes (auto) time layers at these shapes
        context.input_shapes = dict(input_shapes)
    opt_passes = pipeline.instantiate(context)
    original = _as_proto(model)
    origin = origin or (str(model) if isinstance(model, (str, os.PathLike)) else "input")
    io.check_model(original, origin)
    if context.random_inputs is None:  # calib=random and data-less fp16 checks: inputs the model can take
        from onnxopt.analysis.inputs import random_feeds

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
        _validate(original, result, report, validation, on_validation_progress)
    return result, report


def _validate(original: onnx.ModelProto, result: onnx.ModelProto, report: RunReport, validation: GateSettings,
              on_validation_progress: Callable[[int, int], None] | None) -> None:
    """Run the gate on ``original`` vs ``result`` and record it in ``report``."""
    from onnxopt.runtime.isolation import check_candidate, first_batch
    from onnxopt.validate.gate import run_gate

    asked = {key: value for pass_report in report.passes for key, value in pass_report.validate_with.items()}
    original_bytes, optimized_bytes = runnable_bytes(original), result.SerializeToString()
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


def gate_settings(
    passes: PassesArg,
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
    from onnxopt.runtime import resolve_providers
    from onnxopt.validate.gate import GateSettings, default_tolerances
    from onnxopt.validate.sources import RandomSource

    if has_data is None:
        has_data = not isinstance(source, RandomSource)
    pipeline = Pipeline.parse(passes)
    choice = resolve_providers(providers)
    reason = "given"
    if tolerances is None or tolerances.is_empty():
        tolerances, reason = default_tolerances(pipeline.pass_classes, has_data=has_data)
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
    from onnxopt.analysis.inputs import model_inputs, resolve_shapes
    from onnxopt.validate.data import open_data
    from onnxopt.validate.sources import random_source

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
    if len(source) < 2:
        raise InputError(f"{source.description}: needs at least 2 samples to calibrate and evaluate on disjoint parts")
    count = max(1, min(calibration_samples, len(source) // 2))
    return source.split(count)


def with_data_defaults(pipeline: Pipeline, has_data: bool) -> tuple[Pipeline, list[str]]:
    """The pipeline with the defaults that real data (``--data``) turns on, and notes.

    With data, decomposition passes refit (``refit=true``) unless the spec sets ``refit``
    (``refit=false`` turns it off): the refit re-solves each layer's last factor on the
    calibration part, and the gate then judges on real data. Search passes (``auto``)
    choose for themselves.
    """
    if not has_data:
        return pipeline, []
    steps, refitted = [], []
    for step in pipeline.steps:
        if step.has_option("refit") and "refit" not in step.spec.options and not step.pass_class.needs_evaluator:
            step = step.with_option("refit", True)
            refitted.append(step.spec.name)
        steps.append(step)
    notes = [f"refit on by default with --data: {', '.join(dict.fromkeys(refitted))} (refit=false turns it off)"] \
        if refitted else []
    return Pipeline(tuple(steps)), notes


def prepare_context(
    original: onnx.ModelProto,
    passes: PassesArg,
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
    from onnxopt.runtime import resolve_providers

    pipeline = Pipeline.parse(passes)
    # passes see the providers the run really uses: "auto" resolved, CUDA only where it loads
    context = PassContext(jobs=jobs, providers=tuple(resolve_providers(providers).providers),
                          time_budget=time_budget, save_config=str(save_config) if save_config else None)
    notes: list[str] = []
    evaluation = source
    if pipeline.uses_data() and has_data:
        calibration, evaluation = split_calibration(source, calibration_samples)
        context.calibration = lambda: (batch.feeds for batch in calibration.batches(batch_size))
        context.calibration_description = calibration.description
        notes.append(f"calibration: {calibration.description}; evaluation: {evaluation.description} (disjoint)")
    if pipeline.needs_evaluator():
        from onnxopt.validate.evaluator import SplitEvaluator
        from onnxopt.validate.gate import LOSSY_TOLERANCES

        notes.extend(resolve_providers(target).notes)  # explicit cuda that does not load: exit 2

        if not has_data:
            notes.append("search scored on random inputs: give --data with real samples for a meaningful budget")
            calibration, evaluation = split_calibration(source, calibration_samples)
        budget = tolerances if tolerances is not None and not tolerances.is_empty() else LOSSY_TOLERANCES
        context.evaluator = SplitEvaluator(
            runnable_bytes(original), calibration, evaluation, budget,
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
