"""What to check: :class:`CheckConfig`, rule-id validation and the size/count parsers."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxopt.check.registry import rule_table
from onnxopt.errors import UsageError

if TYPE_CHECKING:
    from onnxopt.validate.tolerances import Tolerances

DEFAULT_TOLERANCE_MAX_REL_ERROR = 1e-4


@dataclass(frozen=True)
class CheckConfig:
    """What to check. Budgets and the reference are off when None.

    ``tolerances`` applies to ``reference`` only; None means relative L2 error ≤ 1e-4.
    ``strict`` does not change the findings, only :func:`onnxopt.check.failed`.
    """

    disabled: frozenset[str] = frozenset()
    max_size: int | None = None  # bytes on disk, external data included
    max_macs: int | None = None
    max_params: int | None = None
    opset_min: int | None = None
    opset_max: int | None = None
    reference: Path | None = None
    tolerances: Tolerances | None = None
    hints: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "disabled", frozenset(validate_rule_ids(self.disabled)))
        if self.opset_min is not None and self.opset_max is not None and self.opset_min > self.opset_max:
            raise UsageError(f"opset-min {self.opset_min} is above opset-max {self.opset_max}")

    def enabled(self, rule: str) -> bool:
        if rule not in rule_table():  # a typo in onnxopt itself, not in user input
            raise KeyError(rule)
        return rule not in self.disabled

    def effective_tolerances(self) -> Tolerances:
        from onnxopt.validate.tolerances import Tolerances

        if self.tolerances is None or self.tolerances.is_empty():
            return Tolerances(max_rel_error=DEFAULT_TOLERANCE_MAX_REL_ERROR)
        return self.tolerances


def validate_rule_ids(ids: Iterable[str]) -> list[str]:
    """The ids, checked; UsageError naming the valid ids (and the closest one) otherwise."""
    rules = rule_table()
    result = []
    for rule in ids:
        rule = rule.strip()
        if rule not in rules:
            close = difflib.get_close_matches(rule, list(rules), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UsageError(f"unknown rule '{rule}'{hint}; valid: {', '.join(rules)}")
        result.append(rule)
    return result


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
}
_COUNT_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "b": 1000**3, "t": 1000**4}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def _parse_quantity(value: Any, units: dict[str, int], what: str, example: str) -> int:
    if isinstance(value, bool):
        raise UsageError(f"bad {what} {value!r}; expected e.g. {example}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = _NUMBER.match(str(value))
        if not match:
            raise UsageError(f"bad {what} '{value}'; expected e.g. {example}")
        number, unit = float(match.group(1)), match.group(2).lower()
    if unit not in units:
        raise UsageError(f"bad {what} '{value}': unknown unit '{unit}'; expected e.g. {example}")
    result = number * units[unit]
    if not math.isfinite(result) or result < 0:
        raise UsageError(f"bad {what} '{value}'; expected e.g. {example}")
    return int(round(result))


def parse_size(value: Any) -> int:
    """``"50MB"`` → 50 000 000, ``"1.5GiB"``, ``"800k"``, ``2e6``: bytes (KB = 1000, KiB = 1024)."""
    return _parse_quantity(value, _SIZE_UNITS, "size", "50MB, 1.5GiB or 2e9")


def parse_count(value: Any) -> int:
    """``"2e9"``, ``"2G"``, ``"5M"``, ``"300k"``, ``5000000``: a count (k/M/G = powers of 1000)."""
    return _parse_quantity(value, _COUNT_UNITS, "count", "2e9, 2G, 5M or 300k")
