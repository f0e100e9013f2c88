"""``onnxopt compare``: how far apart two models' outputs are on the same data.

A thin layer over :mod:`onnxopt.validate`: read the models, build the data source and the
tolerances from the shared options (:mod:`onnxopt.cli.validation_options`), run
:func:`~onnxopt.validate.compare_models` or :func:`~onnxopt.validate.compare_providers`,
and print a table (or JSON). Exit 1 when a gate fails.
"""

from __future__ import annotations

import click

from onnxopt.cli.common import emit_json, stderr_console, stdout_console, verbosity_options
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


def _print_table(result, tolerances, failures) -> None:
    from onnxopt.cli.tables import print_metrics

    console = stdout_console()

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    if result.mode == "providers":
        say(f"{result.reference}: {', '.join(result.providers)} against {result.reference_provider}")
    else:
        say(f"candidate {result.candidate} against reference {result.reference}")
    say(f"data: {result.source}; batch size {result.batch_size}; {result.seconds:.1f} s")
    print_metrics(console, [row.to_dict() for row in result.rows], mode=result.mode, providers=result.providers)
    gate = ", ".join(f"{k}={v:g}" for k, v in tolerances.to_dict().items() if v is not None)
    if failures:
        say(f"gate ({gate}): FAILED")
        for line in failures:
            say(f"  {line}")
    else:
        say(f"gate ({gate}): passed")


def _progress(total_hint: int):
    """Progress of the comparison on stderr (:mod:`onnxopt.cli.progress`): a transient bar
    on a terminal, plain rate-limited lines otherwise, nothing with -q."""
    from onnxopt.cli.progress import ProgressReporter

    progress = ProgressReporter("compare")
    progress.start()
    progress.in_phase("samples", 0, total_hint)
    return progress


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
    from onnxopt import io
    from onnxopt.runtime import cpu as hostcpu
    from onnxopt.runtime import resolve_providers
    from onnxopt.validate import Tolerances, compare_models, compare_providers

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
    # A model that crashes onnxruntime must not take this process with it: both run first in a child.
    from onnxopt.runtime.isolation import check_candidate, first_batch

    check_candidate(
        reference.SerializeToString() if candidate is not None else None,
        (candidate if candidate is not None else reference).SerializeToString(),
        first_batch(source, opts["batch_size"]), choice.providers,
        config=hostcpu.EXACT_INTEGER_KERNELS if exact_int8 else None,
        subject=model_b if model_b is not None else model_a, reference=model_a,
    )

    progress = _progress(len(source))
    common = {"batch_size": opts["batch_size"], "labels": labels, "progress": progress.steps}
    ok = False
    try:
        if candidate is None:
            result = compare_providers(reference, source, choice.providers, name=model_a, **common)
        else:
            result = compare_models(
                reference, candidate, source, providers=choice.providers, names=(model_a, model_b),
                candidate_config=hostcpu.EXACT_INTEGER_KERNELS if exact_int8 else None, **common
            )
        ok = True
    finally:
        progress.close(ok=ok)
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
