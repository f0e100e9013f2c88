"""What ``onnxopt check`` reports: a :class:`Finding` per problem, and the run's verdict."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"
STDIN_NAME = "<stdin>"


@dataclass(frozen=True)
class Finding:
    """One problem in one file: ``path: level: rule: message``."""

    path: str
    level: str  # "error" | "warning"
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.level}: {self.rule}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "level": self.level, "rule": self.rule, "message": self.message}


def failed(findings: Iterable[Finding], strict: bool = False) -> bool:
    """Whether the run fails: any error, or with ``strict`` any warning."""
    return any(f.level == ERROR or strict for f in findings)


def display_name(source: str | os.PathLike) -> str:
    return STDIN_NAME if str(source) == "-" else str(source)


def summary_line(files: int, findings: Iterable[Finding]) -> str:
    findings = list(findings)
    errors = sum(1 for f in findings if f.level == ERROR)
    warnings = sum(1 for f in findings if f.level == WARNING)

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    return f"{plural(files, 'file')} checked: {plural(errors, 'error')}, {plural(warnings, 'warning')}"
