"""``onnxopt check``: fast, static health checks of ONNX files for pre-commit hooks and CI.

An exported model that does not load, that onnxruntime refuses, or that carries NaN
weights is usually found late, at deployment. These rules find such problems without
running the model (unless a reference file is given), so they can run on every commit.
A broken file is a *finding* ``(path, level, rule, message)``, never an exception.

Each rule has a stable kebab-case id and can be disabled; rules register themselves in
:mod:`onnxopt.check.rules` (one module per concern) with their level and the rules they
run after (:mod:`onnxopt.check.registry`); :mod:`onnxopt.check.runner` runs them in that
order on the file that :mod:`onnxopt.check.loading` read. The rules, in the order they run,
are listed below (``onnxopt check --list-rules``).
"""

from onnxopt.check.config import CheckConfig, parse_count, parse_size, validate_rule_ids
from onnxopt.check.findings import ERROR, STDIN_NAME, WARNING, Finding, display_name, failed, summary_line
from onnxopt.check.registry import rule_table
from onnxopt.check.rules.hints import tucker2_mac_ratio
from onnxopt.check.rules.reference import Reference, load_reference
from onnxopt.check.runner import check_model_file

RULES: dict[str, tuple[str, str]] = rule_table()
"""id -> (level, one-line description), in the order the rules run."""

__doc__ = (__doc__ or "") + "\n" + "\n".join(f"- ``{rule}`` ({level}): {text}" for rule, (level, text) in RULES.items())

__all__ = [
    "ERROR",
    "RULES",
    "STDIN_NAME",
    "WARNING",
    "CheckConfig",
    "Finding",
    "Reference",
    "check_model_file",
    "display_name",
    "failed",
    "load_reference",
    "parse_count",
    "parse_size",
    "summary_line",
    "tucker2_mac_ratio",
    "validate_rule_ids",
]
