"""The run report of ``optimize`` as tables on the terminal (stderr)."""

from __future__ import annotations

import math

from rich.table import Table

from onnxopt.cli.tables import print_metrics
from onnxopt.report import RunReport, human_bytes, human_count


def _ratio(before, after) -> str:
    if not before or after is None or math.isnan(float(before)):
        return ""
    return f"{after / before:.3f}×"


def render_run(report: RunReport, console) -> None:
    """Print the run report as tables (to the console the CLI chose, normally stderr)."""
    table = Table(title="passes", title_justify="left")
    for column in ("pass", "status", "time", "applied", "skipped", "notes"):
        table.add_column(column)
    for p in report.passes:
        notes = p.skipped_reason or ""
        reasons = sorted({s["reason"] for s in p.skipped})
        if reasons:
            notes = "; ".join(filter(None, [notes, *reasons[:3]])) + (" …" if len(reasons) > 3 else "")
        table.add_row(p.name, p.status, f"{p.seconds:.2f}s", str(len(p.applied)), str(len(p.skipped)), notes)
    console.print(table)
    for p in report.passes:  # search passes (auto) say where their time went
        phases = p.figures.get("seconds_by_phase")
        if phases:
            console.print(f"{p.name} seconds by phase: " +
                          ", ".join(f"{name} {seconds:.1f}" for name, seconds in phases.items() if seconds >= 0.05))

    if report.before and report.after:
        stats = Table(title="model", title_justify="left")
        for column in ("", "before", "after", "ratio"):
            stats.add_column(column)
        for key, fmt in (("parameters", human_count), ("macs", human_count), ("nodes", str), ("size_bytes", human_bytes)):
            b, a = report.before.get(key), report.after.get(key)
            stats.add_row(key.replace("_bytes", ""), fmt(b), fmt(a), _ratio(b, a))
        console.print(stats)

    _render_validation(report, console)
    for note in report.notes:
        console.print(f"note: {note}")
    for warning in report.all_warnings():
        console.print(f"[yellow]warning:[/yellow] {warning}")


def _render_validation(report: RunReport, console) -> None:
    validation = report.validation
    if not validation:
        return
    if validation.get("skipped"):
        console.print(f"[yellow]validation skipped[/yellow] ({validation.get('reason', 'not requested')})")
        return
    tolerances = ", ".join(f"{k}={v:g}" for k, v in validation["tolerances"].items() if v is not None)
    providers = validation.get("providers") or []
    title = (f"validation on {validation['source']} ({', '.join(providers) or '?'}): {tolerances} "
             f"({validation['tolerance_reason']})")
    console.print(title, markup=False, highlight=False)
    print_metrics(console, validation["results"], mode=validation.get("mode", "models"), providers=providers)
    for failure in validation.get("failures", []):
        console.print(f"[red]FAIL[/red] {failure}")
    if validation.get("passed"):
        console.print("[green]validation passed[/green]")
    benchmark = report.benchmark
    if benchmark and benchmark.get("speedup") is not None:
        style = "red bold" if benchmark["speedup"] < 1 else "green"
        console.print(f"[{style}]latency on {benchmark['provider']}: {benchmark['speedup']:.2f}× "
                      f"(median original / optimized, interleaved)[/{style}]")
