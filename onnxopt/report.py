"""What a run did: per-pass reports and the run report, as data (JSON); the CLI renders them."""

from __future__ import annotations

import json
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


def json_text(data: Any) -> str:
    """``data`` as indented JSON text (numpy scalars and arrays as numbers and lists)."""
    return json.dumps(data, indent=2, default=_json_default) + "\n"


def _json_default(value: Any):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


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
