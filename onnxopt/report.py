"""What a run did: per-pass reports and the run report, as JSON or as rich tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PassReport:
    """Record of one pass: what it changed, what it skipped and why, and its figures.

    ``applied`` and ``skipped`` hold one dict per item (usually a node): ``{"node": name,
    ...details}``; every skipped item has a ``reason``. ``skipped_reason`` is set when the
    whole pass was skipped (e.g. onnxsim could not handle the model). ``validate_with``:
    onnxruntime session config entries under which the validation gate runs the result,
    so that it computes what the model's target computes (e.g. exact integer kernels).
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    applied: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    skipped_reason: str | None = None
    modified: bool = False
    seconds: float = 0.0
    validate_with: dict[str, str] = field(default_factory=dict)

    def apply(self, node: str, **details: Any) -> None:
        self.applied.append({"node": node, **details})

    def skip(self, node: str, reason: str, **details: Any) -> None:
        self.skipped.append({"node": node, "reason": reason, **details})

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def skip_pass(self, reason: str) -> None:
        self.skipped_reason = reason

    @property
    def status(self) -> str:
        if self.skipped_reason is not None:
            return "skipped"
        return "modified" if self.modified else "unchanged"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "options": self.options,
            "seconds": round(self.seconds, 4),
            "modified": self.modified,
            "skipped_reason": self.skipped_reason,
            "applied": self.applied,
            "skipped": self.skipped,
            "figures": self.figures,
            "warnings": self.warnings,
            "validate_with": self.validate_with,
        }


@dataclass
class RunReport:
    """Everything ``optimize`` measured, in the order it happened."""

    passes: list[PassReport] = field(default_factory=list)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    benchmark: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    output: str | None = None
    written: bool = False

    def all_warnings(self) -> list[str]:
        return [*self.warnings, *(f"{p.name}: {w}" for p in self.passes for w in p.warnings)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passes": [p.to_dict() for p in self.passes],
            "before": self.before,
            "after": self.after,
            "validation": self.validation,
            "benchmark": self.benchmark,
            "warnings": self.all_warnings(),
            "notes": self.notes,
            "output": self.output,
            "written": self.written,
        }


def human_count(value: float | int | None) -> str:
    if value is None:
        return "?"
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def human_bytes(value: int | None) -> str:
    if value is None:
        return "?"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value} B"


def _ratio(before, after) -> str:
    if not before or after is None or math.isnan(float(before)):
        return ""
    return f"{after / before:.3f}×"


def render_run(report: RunReport, console) -> None:
    """Print the run report as tables (to the console the CLI chose, normally stderr)."""
    from rich.table import Table

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
    from onnxopt.cli.tables import print_metrics  # the table `onnxopt compare` prints

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
