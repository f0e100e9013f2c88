"""``onnxopt bench``: latency, throughput and memory of a model, or of two models A/B.

A thin layer over :func:`onnxopt.bench.latency.bench_models`: read the models, build one
input batch with the shared data options, run the interleaved benchmark on each provider,
and print a table (or JSON). The input options are the ones ``onnxopt compare`` uses
(:mod:`onnxopt.cli.validation_options`), picked by name: ``--labels`` and ``--samples``
mean nothing for a latency measurement, so they are left out.
"""

from __future__ import annotations

from typing import Any

import click

from onnxopt.cli.common import emit_json, note, table_console, verbosity_options
from onnxopt.cli.validation_options import build_feeds, input_options, provider_option
from onnxopt.errors import UsageError

# Defaults for two models (an A/B comparison); see HELP and onnxopt.bench.latency.
AB_MIN_TIME = 1.0  # seconds of timed rounds at least
AB_TARGET_CI = 0.03  # relative width of the speedup's 95 % interval to reach (± 1.5 %)
AB_MAX_TIME = 6.0  # seconds of timed rounds at most while that is not reached

HELP = """Measure the latency of MODEL, or compare MODEL2 against MODEL on the same inputs.

Sessions are created once and warmed up; with two models the timed runs are interleaved
(A B, B A, A B, …) in one process, so that machine noise hits both alike. Prints, per
model: mean, p50, p90, p99, min and std latency, throughput (samples/s = batch / p50) and
size; with two models the speedup median(A) / median(B) (above 1: MODEL2 is faster) with
the 10th–90th percentile of the per-round ratios and a bootstrap 95 % interval; and the
process's peak resident memory.

With two models the defaults aim at a ratio you can trust on a small, busy machine:
onnxruntime's thread pools do not spin between runs (--spinning auto), at least
--min-time 1 s is timed, and rounds continue until the 95 % interval of the speedup is
at most --target-ci wide (± 1.5 % by default), for at most --max-time seconds. The output
says what was done and why sampling stopped.

\b
Examples:
  onnxopt bench model.onnx --runs 200
  onnxopt bench model.onnx model.opt.onnx --batch-size 8 --threads 1 --json
"""


def _ms(value: float) -> str:
    return f"{value:.3f}"


def _print_result(result) -> None:
    from rich import box
    from rich.table import Table

    from onnxopt.report import human_bytes

    console = table_console()
    threads = result.threads if result.threads is not None else "default"
    order = "interleaved " if result.interleaved else ""
    console.print(
        f"{result.provider}: {result.rounds} {order}rounds after {result.warmup} warm-up runs, "
        f"batch {result.batch_size}, threads {threads}",
        markup=False,
        highlight=False,
    )
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("model", "size", "mean ms", "p50 ms", "p90 ms", "p99 ms", "min ms", "std ms", "samples/s"):
        if column == "model":
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for bench in result.models:
        s = bench.stats
        table.add_row(
            bench.label,
            human_bytes(bench.size_bytes),
            _ms(s.mean_ms),
            _ms(s.p50_ms),
            _ms(s.p90_ms),
            _ms(s.p99_ms),
            _ms(s.min_ms),
            _ms(s.std_ms),
            f"{s.throughput:.1f}",
        )
    console.print(table)
    for line in sampling_lines(result):
        console.print(line, markup=False, highlight=False)
    for comparison in result.comparisons:
        lo, hi = comparison.ci95
        other = result.models[comparison.other].label
        base = result.models[comparison.baseline].label
        if lo <= 1.0 <= hi:
            verdict = "no significant difference"
        else:
            verdict = "faster" if comparison.speedup > 1 else "slower"
        console.print(
            f"speedup of {other} over {base}: {comparison.speedup:.3f}× ({verdict}); "
            f"per-round ratio p10–p90 {comparison.ratio_p10:.3f}–{comparison.ratio_p90:.3f} "
            f"(median {comparison.ratio_p50:.3f}), "
            f"95 % CI {lo:.3f}–{hi:.3f}",
            markup=False,
            highlight=False,
        )
    console.print(f"peak RSS of the process: {human_bytes(result.peak_rss_bytes)}", highlight=False)


def sampling_lines(result) -> list[str]:
    """What the measurement did beyond the plain run count: spinning, when it stopped."""
    lines = []
    if result.interleaved and result.spinning is False:
        lines.append(
            "interleaved: thread spinning off (session.intra_op/inter_op.allow_spinning=0), "
            "so that one session's idle threads do not take the cores the other one runs on"
        )
    elif result.interleaved and result.spinning:
        lines.append("interleaved: thread spinning on (--spinning on): sessions may disturb each other")
    timed = f"{result.rounds} rounds in {result.timed_seconds:.1f} s"
    width = result.ci_width
    if result.stop_reason == "target_ci":
        lines.append(
            f"sampling: {timed}; stopped when the 95 % CI of the speedup was {100 * width:.1f} % wide "
            f"(target {100 * result.target_ci:g} %)"
        )
    elif result.stop_reason == "max_time":
        lines.append(
            f"sampling: {timed}; stopped at --max-time {result.max_time:g} s with the 95 % CI "
            f"{100 * width:.1f} % wide (target {100 * result.target_ci:g} %): the machine is noisy, "
            "trust the interval rather than the ratio"
        )
    elif result.interleaved:
        lines.append(f"sampling: {timed}")
    return lines


def sampling_settings(count: int, min_time: float | None, target_ci: float, max_time: float) -> dict[str, Any]:
    """``min_time``/``target_ci``/``max_time`` for :func:`bench_models` from the options.

    One model: ``--min-time`` as given, nothing adaptive. Two: ``--min-time`` defaults to
    :data:`AB_MIN_TIME`; a default ``--max-time`` below an explicit ``--min-time`` is
    raised to it (an explicit one below is an error).
    """
    if count < 2:
        return {"min_time": min_time}
    ctx = click.get_current_context(silent=True)
    max_default = ctx is None or ctx.get_parameter_source("max_time") == click.core.ParameterSource.DEFAULT
    if min_time is None:
        min_time = min(AB_MIN_TIME, max_time)
    if max_default:
        max_time = max(max_time, min_time)
    elif max_time < min_time:
        raise UsageError(f"--max-time {max_time:g} is below --min-time {min_time:g}")
    return {"min_time": min_time, "target_ci": target_ci or None, "max_time": max_time}


@click.command(help=HELP)
@click.argument("model", metavar="MODEL")
@click.argument("model2", metavar="[MODEL2]", required=False)
@provider_option
@input_options
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option(
    "--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs per model."
)
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Timed rounds.")
@click.option(
    "--min-time",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help=f"Keep timing until this many seconds have passed (at least --runs rounds). "
    f"Default: {AB_MIN_TIME:g} with two models, none with one.",
)
@click.option(
    "--target-ci",
    type=click.FloatRange(min=0),
    default=AB_TARGET_CI,
    show_default=True,
    metavar="FRACTION",
    help="Two models: keep timing until the speedup's 95 % interval is at most this wide, "
    "relative to the speedup (0.03 = ± 1.5 %); 0 turns it off.",
)
@click.option(
    "--max-time",
    type=click.FloatRange(min=0),
    default=AB_MAX_TIME,
    show_default=True,
    metavar="SECONDS",
    help="Two models: stop timing after this many seconds even if --target-ci is not reached.",
)
@click.option(
    "--spinning",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="onnxruntime thread-pool spinning between runs; auto: off with two models "
    "(interleaved sessions with spinning threads disturb each other), on with one.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@verbosity_options
def command(
    model: str,
    model2: str | None,
    providers: str,
    threads: int | None,
    warmup: int,
    runs: int,
    min_time: float | None,
    target_ci: float,
    max_time: float,
    spinning: str,
    as_json: bool,
    **opts: Any,
) -> None:
    from onnxopt import io
    from onnxopt.bench.latency import bench_models
    from onnxopt.runtime import resolve_providers

    if model2 is not None and model == "-" and model2 == "-":
        raise UsageError("only one of the two models can be read from stdin ('-')")
    choice = resolve_providers(providers)
    for line in choice.notes:
        note(line)
    names = [model] if model2 is None else [model, model2]
    protos = [io.load_proto(name) for name in names]
    feeds = build_feeds(protos[0], opts)
    blobs = [proto.SerializeToString() for proto in protos]
    labels = ["stdin" if name == "-" else name for name in names]
    if len(labels) == 2 and labels[0] == labels[1]:
        labels = [f"{labels[0]} (A)", f"{labels[1]} (B)"]

    sampling = sampling_settings(len(blobs), min_time, target_ci, max_time)
    results = [
        bench_models(
            blobs,
            feeds,
            provider=provider,
            threads=threads,
            warmup=warmup,
            runs=runs,
            labels=labels,
            spinning={"auto": None, "on": True, "off": False}[spinning],
            **sampling,
        )
        for provider in choice.providers
    ]
    if as_json:
        emit_json(
            {
                "providers": choice.providers,
                "notes": choice.notes,
                "results": [result.to_dict() for result in results],
            }
        )
        return
    for result in results:
        _print_result(result)
