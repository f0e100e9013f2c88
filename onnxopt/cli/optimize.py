"""``onnxopt optimize``: run a pipeline, validate the result, write it atomically."""

from __future__ import annotations

import contextlib

import click

from onnxopt.cli.common import (
    EXIT_CODES_HELP,
    emit_json,
    is_quiet,
    reserved_stdout,
    stderr_console,
    verbosity_options,
)
from onnxopt.cli.validation_options import (
    build_labels,
    build_tolerances,
    data_options,
    provider_option,
    tolerance_options,
)
from onnxopt.errors import GateFailed, UsageError

EXAMPLES = """
\b
Examples:
  onnxopt optimize model.onnx --passes simplify -o model.opt.onnx
  onnxopt optimize model.onnx --passes 'simplify,tucker:energy=0.95:min_macs=1e6' -o out.onnx
  onnxopt optimize model.onnx --passes int8 --data images/ --preprocess imagenet -o int8.onnx --bench
  onnxopt optimize model.onnx --config pipeline.yaml -o out.onnx --report report.json
  cat model.onnx | onnxopt optimize - --passes simplify -o - > out.onnx

\b
Validation gate (on by default): the optimized model is run beside the original on the
same inputs (--data, or seeded random inputs) and must meet the tolerances; default
tolerances: relative error <= 1e-4 for lossless pipelines, cosine >= 0.999 for fp16 alone,
for other lossy passes a 5th-percentile per-sample cosine >= 0.98 with --data (0.95 on
random inputs, which only catch gross breakage), and detection outputs' attribute
channels likewise. A failure exits 1 and writes nothing (unless --force). Passes that
need calibration data (int8, refit) take the first --calibration-samples of --data; the
rest evaluates (disjoint, reported); with --data, decompositions refit by default.
""" + EXIT_CODES_HELP


@click.command(help="Apply passes to MODEL ('-' = stdin), validate, and write the result to OUTPUT.\n" + EXAMPLES)
@click.argument("model")
@click.option("-o", "--output", required=True, help="Output path, or '-' for stdout.")
@click.option("-p", "--passes", "passes", help="Pass spec, e.g. 'simplify,tucker:energy=0.95,fp16'.")
@click.option("--config", type=click.Path(dir_okay=False), help="Pipeline file (YAML, TOML or JSON).")
@click.option("--in-place", is_flag=True, help="Allow OUTPUT to be the input file.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON to stdout (not with -o -).")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="Parallel workers for passes that support it.")
@click.option("--no-validate", is_flag=True, help="Skip the validation gate (the report says so).")
@click.option("--force", is_flag=True, help="Write the model even when the validation gate fails (exit code still 1).")
@click.option("--bench", is_flag=True, help="Measure latency before/after (interleaved) and report the speedup.")
@click.option("--min-speedup", type=click.FloatRange(min=0), metavar="X", help="Fail the gate when the speedup is below X (implies --bench).")
@click.option("--calibration-samples", type=click.IntRange(1), default=100, show_default=True,
              help="Samples of --data used to calibrate passes that need data (at most half of it).")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Provider whose latency search passes (auto) optimize for.")
@click.option("--time-budget", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Bound the time search passes (auto) spend.")
@click.option("--save-config", type=click.Path(dir_okay=False),
              help="Search passes (auto) write the plain pipeline they found here (YAML).")
@data_options
@provider_option
@tolerance_options
@verbosity_options
def command(model, output, passes, config, in_place, report_path, as_json, jobs, no_validate, force,
            bench, min_speedup, calibration_samples, target, time_budget, save_config, **data_opts):
    from onnxopt import api, io
    from onnxopt.analysis.inputs import parse_input_shapes

    if as_json and output == io.STDIO:
        raise UsageError("--json prints to stdout, which carries the model with -o -; use --report FILE")
    shapes = parse_input_shapes(data_opts["input_shape"])
    for option_name, path in (("--report", report_path), ("--save-config", save_config)):
        if path == io.STDIO:
            raise UsageError(f"{option_name} needs a file name ('-' is not supported; use --json for stdout)")

    to_stdout = output == io.STDIO
    guard = reserved_stdout() if to_stdout else contextlib.nullcontext(None)
    with guard as model_stream, _progress() as progress:
        result = api.run(
            model, passes, config=config, output=output, report_path=report_path, in_place=in_place, force=force,
            data=data_opts["data"], preprocess=data_opts["preprocess"], input_shapes=shapes,
            samples=data_opts["samples"], batch_size=data_opts["batch_size"], seed=data_opts["seed"],
            labels=build_labels(**data_opts), tolerances=build_tolerances(**data_opts),
            providers=data_opts["providers"], validate=not no_validate, skip_reason="--no-validate",
            bench=bench, min_speedup=min_speedup, calibration_samples=calibration_samples, jobs=jobs,
            target=target, time_budget=time_budget, save_config=save_config,
            origin="stdin" if model == io.STDIO else model, stdout=model_stream,
            on_pass_start=progress.on_pass_start, on_progress=progress.update,
            on_validation_progress=lambda done, total: progress.in_phase("validating: samples", done, total),
        )

    report = result.report
    if as_json:
        emit_json(report.to_dict())
    elif not is_quiet():
        from onnxopt.cli.render import render_run

        render_run(report, stderr_console())
        if report.written and not to_stdout:
            stderr_console().print(f"wrote {output}")
    if result.passed is False:
        raise GateFailed(_gate_failure(report))


def _gate_failure(report) -> str:
    """The one line a failed gate exits with: its first failure, and whether anything was written."""
    failures = report.validation["failures"]
    suffix = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    written = "written anyway (--force)" if report.written else "nothing written"
    hint = f" — {report.validation['hint']}" if report.validation.get("hint") else ""
    return f"validation failed: {failures[0]}{suffix}; {written}{hint}"


def _progress():
    """Progress of the passes and the validation on stderr (:mod:`onnxopt.cli.progress`):
    a transient line on a terminal, plain rate-limited lines otherwise, nothing with -q."""
    from onnxopt.cli.progress import ProgressReporter

    return ProgressReporter("optimize")
