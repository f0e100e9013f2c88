"""``onnxopt compare``: how far apart two models' outputs are on the same data.

A thin layer over :mod:`onnxopt.validate`: read the models, build the data source and the
tolerances from the shared options (:mod:`onnxopt.cli.validation_options`), run
:func:`~onnxopt.validate.compare_models` or :func:`~onnxopt.validate.compare_providers`,
and print a table (or JSON). Exit 1 when a gate fails.
"""

from __future__ import annotations

import click

from onnxopt.cli.common import emit_json, is_quiet, stderr_console, stdout_console, verbosity_options
from onnxopt.cli.validation_options import (
    build_labels,
    build_source,
    build_tolerances,
    data_options,
    provider_option,
    tolerance_options,
)
from onnxopt.errors import GateFailed, UsageError

DEFAULT_MAX_REL_ERROR = 1e-4

HELP = f"""Compare B.onnx against A.onnx (the reference) on the same inputs, or one model
across providers (--providers cpu,cuda; the first provider is the reference).

Prints, per output and provider: max and mean abs error, relative L2 error ||a−b||/||a||,
cosine similarity (mean and worst sample), SNR, and for [N, classes] outputs the top-1
agreement and, with --labels, each model's top-1/top-5 accuracy.

Without any tolerance option the gate is --max-rel-error {DEFAULT_MAX_REL_ERROR:g}. Exit 1 when
the gate fails, 2 on bad usage or input. Either model may be '-' (stdin), not both.

--exact-int8 runs B with exact integer kernels: on an x86 CPU without VNNI, the results a
VNNI CPU computes — to judge an INT8 model made for one (int8:reduce_range=false).
"""


def _fmt(value, kind: str = "g") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if kind == "cos":
        return f"{value:.6f}"
    if kind == "db":
        return f"{value:.1f}"
    if kind == "ratio":
        return f"{value:.4f}"
    return f"{value:.3g}"


def _print_table(result, tolerances, failures) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    if result.mode == "providers":
        say(f"{result.reference}: {', '.join(result.providers)} against {result.reference_provider}")
    else:
        say(f"candidate {result.candidate} against reference {result.reference}")
    say(f"data: {result.source}; batch size {result.batch_size}; {result.seconds:.1f} s")
    # One provider column only when there is something to tell apart.
    show_provider = result.mode == "providers" or len(result.providers) > 1

    def provider_cell(row) -> list[str]:
        if not show_provider:
            return []
        return [row.provider if result.mode == "models" else f"{row.provider} vs {row.reference_provider}"]

    name_width = max((len(row.metrics.name) for row in result.rows), default=6)

    def new_table(columns: list[str], title: str | None = None):
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        for column in (["provider"] if show_provider else []) + columns:
            left = column in ("provider", "output")
            width = min(name_width, 24) if column == "output" else None
            table.add_column(column, justify="left" if left else "right", no_wrap=not left, min_width=width)
        return table

    table = new_table(["output", "max abs", "mean abs", "rel L2", "cos mean", "cos min", "SNR dB", "agree"])
    for row in result.rows:
        m = row.metrics
        table.add_row(
            *provider_cell(row), Text(m.name), _fmt(m.max_abs_error), _fmt(m.mean_abs_error), _fmt(m.rel_l2_error),
            _fmt(m.cosine_mean, "cos"), _fmt(m.cosine_min, "cos"), _fmt(m.snr_db, "db"),
            _fmt(m.top1_agreement, "ratio"),
        )
    console.print(table)
    if any(row.metrics.classifier for row in result.rows):
        say("agree = share of samples where both models rank the same class first (top-1)")
    labeled = [row for row in result.rows if row.metrics.labeled]
    if labeled:
        accuracy = new_table(
            ["output", "labeled", "ref top-1", "cand top-1", "ref top-5", "cand top-5"], "accuracy"
        )
        for row in labeled:
            m = row.metrics
            accuracy.add_row(
                *provider_cell(row), Text(m.name), str(m.labeled), _fmt(m.reference_top1, "ratio"),
                _fmt(m.candidate_top1, "ratio"), _fmt(m.reference_top5, "ratio"), _fmt(m.candidate_top5, "ratio"),
            )
        console.print(accuracy)
    gate = ", ".join(f"{k}={v:g}" for k, v in tolerances.to_dict().items() if v is not None)
    if failures:
        say(f"gate ({gate}): FAILED")
        for line in failures:
            say(f"  {line}")
    else:
        say(f"gate ({gate}): passed")


def _progress(total_hint: int):
    """A rich progress bar on stderr when it is a terminal; else None."""
    console = stderr_console()
    if is_quiet() or not console.is_terminal:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("comparing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    )
    task = progress.add_task("compare", total=total_hint)
    return progress, lambda done, total: progress.update(task, completed=done, total=total)


@click.command(help=HELP)
@click.argument("model_a", metavar="A.onnx")
@click.argument("model_b", metavar="[B.onnx]", required=False)
@data_options
@provider_option
@tolerance_options
@click.option("--exact-int8", is_flag=True,
              help="Run B with onnxruntime's exact integer kernels (session.x64quantprecision; slower): "
                   "what a VNNI CPU computes, here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (and gate) as JSON on stdout.")
@verbosity_options
def command(model_a: str, model_b: str | None, exact_int8: bool, as_json: bool, **opts) -> None:
    from onnxopt import hostcpu, io
    from onnxopt.validate import Tolerances, compare_models, compare_providers
    from onnxopt.validate.providers import resolve_providers

    if model_b is not None and model_a == "-" and model_b == "-":
        raise UsageError("only one of the two models can be read from stdin ('-')")
    choice = resolve_providers(opts["providers"])
    for note in choice.notes:
        stderr_console().print(f"note: {note}", markup=False, highlight=False)
    if exact_int8 and model_b is None:
        raise UsageError("--exact-int8 runs the second model (B.onnx) with exact integer kernels: give two models")
    if model_b is None and len(choice.providers) < 2:
        detail = f" ({'; '.join(choice.notes)})" if choice.notes else ""
        raise UsageError(
            "with one model, compare needs two providers, e.g. --providers cpu,cuda; "
            f"got {','.join(choice.providers)}{detail}"
        )
    tolerances = build_tolerances(default=Tolerances(max_rel_error=DEFAULT_MAX_REL_ERROR), **opts)
    reference = io.load_proto(model_a)
    candidate = io.load_proto(model_b) if model_b is not None else None
    source = build_source(reference, **opts)
    labels = build_labels(**opts)

    progress, callback = _progress(len(source))
    common = {"batch_size": opts["batch_size"], "labels": labels, "progress": callback}
    try:
        if progress is not None:
            progress.start()
        if candidate is None:
            result = compare_providers(reference, source, choice.providers, name=model_a, **common)
        else:
            result = compare_models(
                reference, candidate, source, providers=choice.providers, names=(model_a, model_b),
                candidate_config=hostcpu.EXACT_INTEGER_KERNELS if exact_int8 else None, **common
            )
    finally:
        if progress is not None:
            progress.stop()
    result.notes[:0] = choice.notes
    failures = result.failures(tolerances)

    if as_json:
        data = result.to_dict()
        data["gate"] = {"tolerances": tolerances.to_dict(), "passed": not failures, "failures": failures}
        emit_json(data)
    else:
        for note in result.notes[len(choice.notes):]:
            stderr_console().print(f"note: {note}", markup=False, highlight=False)
        _print_table(result, tolerances, failures)
    if failures:
        raise GateFailed(f"{len(failures)} gate check(s) failed: {failures[0]}")
