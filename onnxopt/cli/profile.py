"""``onnxopt profile``: where a model's time goes, node by node, and what a pass could do.

A thin layer over :func:`onnxopt.bench.profile.profile_model`: read the model, build one
input batch with the same input options as ``onnxopt bench``, profile it with
onnxruntime's profiler, and print the ranked per-node table and the per-op-type table (or
JSON).
"""

from __future__ import annotations

from typing import Any

import click

from onnxopt.cli.common import emit_json, note, table_console, verbosity_options
from onnxopt.cli.validation_options import build_feeds, input_options, provider_option
from onnxopt.errors import UsageError

HELP = """Profile MODEL ('-' = stdin) with onnxruntime's profiler and rank its nodes by time.

Per node: mean kernel time per run, share of the model's kernel time, MACs, parameters,
and which pass could target it (decompose = tucker/cp/spatial for dense k×k convolutions,
svd for large 1×1 convolutions and dense layers, int8 for every Conv/Gemm/MatMul). Kernels
that onnxruntime adds itself (layout reorders, copies) are shown as unmatched, so the
shares add up to 100 %. A second table sums the time per op type; for a transformer, one
line sums the MatMul time inside attention blocks and inside MLP blocks. MACs of inputs
with a dynamic sequence dimension are counted at the sequence length run (--input-shape,
default 128).

\b
Examples:
  onnxopt profile model.onnx --top 10
  onnxopt profile model.onnx --input-shape input:1x3x224x224 --runs 50 --json
"""


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _print_result(result, top: int) -> None:
    from rich import box
    from rich.table import Table

    from onnxopt.report import human_count

    console = table_console()
    threads = result.threads if result.threads is not None else "default"
    console.print(
        f"{result.provider}: {result.runs} profiled runs after {result.warmup} warm-up, threads {threads}; "
        f"kernel time {result.kernel_ms:.3f} ms/run, run time {result.run_ms:.3f} ms/run",
        markup=False,
        highlight=False,
    )
    rows = result.nodes if top == 0 else result.nodes[:top]
    title = (
        "nodes by time" if top == 0 or top >= len(result.nodes) else f"top {top} of {len(result.nodes)} nodes"
    )
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    columns = ("#", "node", "op", "ms/run", "share", "cum.", "MACs", "params", "pass target")
    for column in columns:
        if column in ("node", "pass target"):
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="left" if column == "op" else "right", no_wrap=True)
    cumulative = 0.0
    for rank, row in enumerate(rows, 1):
        cumulative += row.share
        op = row.op_type if row.matched else f"{row.op_type} (unmatched)"
        table.add_row(
            str(rank),
            row.name,
            op,
            f"{row.mean_ms:.4f}",
            _pct(row.share),
            _pct(cumulative),
            human_count(row.macs) if row.matched else "–",
            human_count(row.params) if row.matched else "–",
            row.target or "",
        )
    console.print(table, markup=False)

    ops = Table(title="op types by time", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("op", "nodes", "ms/run", "share", "MACs", "params"):
        ops.add_column(column, justify="left" if column == "op" else "right", no_wrap=True)
    for row in result.op_types:
        ops.add_row(
            row.op_type,
            str(row.nodes),
            f"{row.mean_ms:.4f}",
            _pct(row.share),
            human_count(row.macs) if row.op_type != "unmatched" else "–",
            human_count(row.params) if row.op_type != "unmatched" else "–",
        )
    console.print(ops, markup=False)
    if result.blocks:
        from onnxopt.bench.profile import describe_block_times

        console.print(describe_block_times(result.blocks), markup=False, highlight=False)
    if result.unmatched_share > 0:
        console.print(
            f"unmatched: {_pct(result.unmatched_share)} of kernel time ran in kernels onnxruntime added "
            "(layout reorders, copies) that have no node in the model",
            markup=False,
            highlight=False,
        )
    if result.not_timed:
        console.print(
            f"{len(result.not_timed)} nodes have no kernel of their own (fused into a neighbour or "
            "folded away); their time is in the node they were fused into",
            markup=False,
            highlight=False,
        )


@click.command(help=HELP)
@click.argument("model", metavar="MODEL")
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Rows of the node table (0 = all).",
)
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True, help="Profiled runs.")
@click.option(
    "--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Unprofiled runs first."
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@provider_option
@input_options
@click.option("--json", "as_json", is_flag=True, help="Print every node and op type as JSON on stdout.")
@verbosity_options
def command(
    model: str,
    top: int,
    runs: int,
    warmup: int,
    threads: int | None,
    providers: str,
    as_json: bool,
    **opts: Any,
) -> None:
    from onnxopt import io
    from onnxopt.bench.profile import profile_model
    from onnxopt.runtime import resolve_providers

    choice = resolve_providers(providers)
    if len(choice.providers) != 1:
        raise UsageError(
            f"profile runs on one provider; got {','.join(choice.providers)} (use --providers cpu or cuda)"
        )
    for line in choice.notes:
        note(line)
    proto = io.load_proto(model)
    feeds = build_feeds(proto, opts)
    result = profile_model(
        proto, feeds, provider=choice.providers[0], runs=runs, threads=threads, warmup=warmup
    )
    if as_json:
        emit_json({"model": "stdin" if model == "-" else model, "notes": choice.notes, **result.to_dict()})
        return
    _print_result(result, top)
