"""``onnxopt optimize``: run a pipeline, validate the result, write it atomically."""

from __future__ import annotations

import contextlib
import sys

import click

from onnxopt.cli.common import (
    emit_json,
    is_quiet,
    json_text,
    parse_input_shape_options,
    reserved_stdout,
    stderr_console,
    verbosity_options,
)
from onnxopt.errors import UsageError

EXAMPLES = """
\b
Examples:
  onnxopt optimize model.onnx --passes simplify -o model.opt.onnx
  onnxopt optimize model.onnx --passes 'simplify,tucker:energy=0.95:min_macs=1e6' -o out.onnx
  onnxopt optimize model.onnx --config pipeline.yaml -o out.onnx --report report.json
  cat model.onnx | onnxopt optimize - --passes simplify -o - > out.onnx
"""


@click.command(help="Apply passes to MODEL ('-' = stdin) and write the result to OUTPUT.\n" + EXAMPLES)
@click.argument("model")
@click.option("-o", "--output", required=True, help="Output path, or '-' for stdout.")
@click.option("-p", "--passes", "passes", help="Pass spec, e.g. 'simplify,tucker:energy=0.95,fp16'.")
@click.option("--config", type=click.Path(dir_okay=False), help="Pipeline file (YAML, TOML or JSON).")
@click.option("--in-place", is_flag=True, help="Allow OUTPUT to be the input file.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON to stdout (not with -o -).")
@click.option("--input-shape", multiple=True, help="Fix a dynamic input shape, NAME:1x3x224x224 (repeatable).")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="Parallel workers for passes that support it.")
@verbosity_options
def command(model, output, passes, config, in_place, report_path, as_json, input_shape, jobs):
    from onnxopt import api, io
    from onnxopt.passbase import PassContext

    if as_json and output == io.STDIO:
        raise UsageError("--json prints to stdout, which carries the model with -o -; use --report FILE")
    if passes is None and config is None:
        raise UsageError("give --passes or --config ('onnxopt passes' lists the passes)")
    if passes is not None and config is not None:
        raise UsageError("give either --passes or --config, not both")
    specs = api.resolve_specs(passes, config)
    shapes = parse_input_shape_options(input_shape)
    io.check_output_target(output, [model], in_place)
    if report_path is not None:
        io.check_output_target(report_path, [model], False)

    to_stdout = output == io.STDIO
    guard = reserved_stdout() if to_stdout else contextlib.nullcontext(None)
    with guard as model_stream:
        source = io.load_proto(model)
        context = PassContext(jobs=jobs)
        with _progress(len(specs)) as on_pass_start:
            optimized, report = api.optimize(
                source, specs, context=context, input_shapes=shapes, on_pass_start=on_pass_start
            )
        report.output = output
        io.save_proto(optimized, output, stdout=model_stream)
        report.written = True

    if report_path is not None:
        io.write_text_atomic(report_path, json_text(report.to_dict()))
    if as_json:
        emit_json(report.to_dict())
    elif not is_quiet():
        from onnxopt.report import render_run

        render_run(report, stderr_console())
        if not to_stdout:
            stderr_console().print(f"wrote {output}")


@contextlib.contextmanager
def _progress(total: int):
    """A spinner per pass on stderr when it is a terminal; silent otherwise."""
    if is_quiet() or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=stderr_console(), transient=True) as progress:
        task = progress.add_task("optimizing", total=total)

        def on_pass_start(opt_pass, index, count):
            progress.update(task, description=f"pass {index + 1}/{count}: {opt_pass.name}", completed=index)

        yield on_pass_start
