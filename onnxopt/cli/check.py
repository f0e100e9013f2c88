"""``onnxopt check``: lint ONNX files — the pre-commit hook and CI gate.

A thin layer over :mod:`onnxopt.check`: it merges ``[tool.onnxopt.check]`` from
``pyproject.toml`` with the flags (flags win), checks each file, prints one line per
finding (``path: level: rule-id: message``) and a summary, or one JSON document, and sets
the exit code: 1 when any error (or, with ``--strict``, any warning) was found, 0
otherwise, 2 for usage errors. A broken model is a finding (exit 1), never exit 2: the
hook must report it, not fail to run.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from onnxopt.cli.common import emit_json, is_quiet, verbosity_options
from onnxopt.cli.validation_options import tolerance_options
from onnxopt.errors import UsageError

logger = logging.getLogger(__name__)

CONFIG_TABLE = "tool.onnxopt.check"
# key in [tool.onnxopt.check] -> (parameter name, kind)
CONFIG_KEYS: dict[str, tuple[str, str]] = {
    "disable": ("disable", "rules"),
    "strict": ("strict", "bool"),
    "hints": ("hints", "bool"),
    "max-size": ("max_size", "size"),
    "max-macs": ("max_macs", "count"),
    "max-params": ("max_params", "count"),
    "opset-min": ("opset_min", "int"),
    "opset-max": ("opset_max", "int"),
    "reference": ("reference", "path"),
    "atol": ("atol", "float"),
    "rtol": ("rtol", "float"),
    "max-rel-error": ("max_rel_error", "float"),
    "min-cosine": ("min_cosine", "float"),
    "min-agreement": ("min_agreement", "float"),
}
TOLERANCE_KEYS = ("atol", "rtol", "min_cosine", "min_agreement", "max_rel_error")

EXAMPLES = """
\b
Examples:
  onnxopt check models/*.onnx
  onnxopt check model.onnx --max-size 50MB --max-macs 2e9 --opset-min 13 --strict
  onnxopt check model.onnx --reference ref.npz --max-rel-error 1e-3
  onnxopt check model.onnx --hints
  cat model.onnx | onnxopt check -
  onnxopt check --list-rules

\b
Options also come from [tool.onnxopt.check] in the nearest pyproject.toml that has
that table (or --config FILE); flags override it, --disable adds to its list.
Exit codes: 0 no error (no warning with --strict), 1 findings that fail the run,
2 usage error. A broken model is a finding: exit 1.
"""


# --------------------------------------------------------------------------- config file


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise UsageError(f"{path}: reading TOML needs Python 3.11+ or the 'tomli' package") from None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None


def _table(data: dict[str, Any]) -> dict[str, Any] | None:
    table: Any = data
    for key in CONFIG_TABLE.split("."):
        if not isinstance(table, dict) or key not in table:
            return None
        table = table[key]
    return table


def find_config(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` that has ``[tool.onnxopt.check]``."""
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                if _table(_read_toml(candidate)) is not None:
                    return candidate
            except UsageError:
                logger.warning("ignoring %s: it is not valid TOML", candidate)
    return None


def load_config(path: Path) -> dict[str, Any]:
    """``[tool.onnxopt.check]`` of ``path`` as parameter values; UsageError on bad keys or values."""
    from onnxopt.check import parse_count, parse_size, validate_rule_ids

    table = _table(_read_toml(path))
    if table is None:
        raise UsageError(f"{path}: no [{CONFIG_TABLE}] table")
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [{CONFIG_TABLE}] must be a table")
    values: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("_", "-")
        if key not in CONFIG_KEYS:
            import difflib

            close = difflib.get_close_matches(key, list(CONFIG_KEYS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UsageError(f"{path}: unknown key '{raw_key}' in [{CONFIG_TABLE}]{hint}; "
                             f"valid: {', '.join(CONFIG_KEYS)}")
        name, kind = CONFIG_KEYS[key]
        where = f"{path}: [{CONFIG_TABLE}] {raw_key}"
        if kind == "rules":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise UsageError(f"{where} must be a list of rule ids")
            values[name] = tuple(validate_rule_ids(_split_rules(items)))
        elif kind == "bool":
            if not isinstance(value, bool):
                raise UsageError(f"{where} must be true or false")
            values[name] = value
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{where} must be an integer")
            values[name] = value
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"{where} must be a number")
            values[name] = float(value)
        elif kind == "size":
            values[name] = _with_where(parse_size, value, where)
        elif kind == "count":
            values[name] = _with_where(parse_count, value, where)
        elif kind == "path":
            if not isinstance(value, str):
                raise UsageError(f"{where} must be a path string")
            values[name] = str(path.parent / value)  # relative to the config file
    return values


def _with_where(parse, value, where: str):
    try:
        return parse(value)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def _split_rules(values) -> list[str]:
    """``--disable a,b --disable c`` → [a, b, c]."""
    return [part.strip() for value in values for part in str(value).split(",") if part.strip()]


# --------------------------------------------------------------------------- files


def _expand(files: tuple[str, ...]) -> list[str]:
    """Folders become the ``*.onnx`` files under them (sorted); files stay as given."""
    result: list[str] = []
    for item in files:
        path = Path(item)
        if item != "-" and path.is_dir():
            found = sorted(str(p) for p in path.rglob("*.onnx") if p.is_file())
            # A folder without models stays an item: it is reported (load-error), not dropped.
            result.extend(found or [item])
        else:
            result.append(item)
    if result.count("-") > 1:
        raise UsageError("'-' (stdin) can be given only once")
    return result


@dataclass
class _FileResult:
    path: str
    findings: list
    seconds: float


def _list_rules(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from onnxopt.check import RULES

    width = max(len(rule) for rule in RULES)
    for rule, (level, text) in RULES.items():
        click.echo(f"{rule:<{width}}  {level:<7}  {text}")
    ctx.exit(0)


def _complete_rules(_ctx, _param, incomplete: str) -> list[str]:
    from onnxopt.check import RULES

    return [rule for rule in RULES if rule.startswith(incomplete)]


def _level(level: str) -> str:
    return click.style(level, fg="red" if level == "error" else "yellow", bold=level == "error")


@click.command(help="Check ONNX model files (a folder: its *.onnx files; '-' = stdin) for problems "
                    "that break loading, running or deployment.\n" + EXAMPLES)
@click.argument("files", nargs=-1, required=True, metavar="FILE...", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of lines.")
@click.option("--strict/--no-strict", default=None, help="Fail (exit 1) on warnings too.")
@click.option("--disable", multiple=True, metavar="RULE", shell_complete=_complete_rules,
              help="Skip a rule (repeatable, or comma-separated); --list-rules shows the ids.")
@click.option("--max-size", metavar="SIZE", help="Budget: file size with external data, e.g. 50MB, 1.5GiB.")
@click.option("--max-macs", metavar="N", help="Budget: multiply-accumulates at batch size 1, e.g. 2e9 or 2G.")
@click.option("--max-params", metavar="N", help="Budget: parameters, e.g. 5e6 or 5M.")
@click.option("--opset-min", type=int, metavar="N", help="Required: ai.onnx opset at least N.")
@click.option("--opset-max", type=int, metavar="N", help="Required: ai.onnx opset at most N.")
@click.option("--reference", metavar="NPZ",
              help="Run the model on inputs 'input:<name>' of this .npz and compare with 'output:<name>' "
                   "(default gate: relative L2 error <= 1e-4; see the tolerance flags).")
@tolerance_options
@click.option("--hints/--no-hints", default=None,
              help="Also list layers a decomposition or INT8 pass would speed up (as warnings).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Read [tool.onnxopt.check] from FILE instead of the nearest pyproject.toml.")
@click.option("--list-rules", is_flag=True, is_eager=True, expose_value=False, callback=_list_rules,
              help="List the rule ids and levels, then exit.")
@verbosity_options
def command(files, as_json, strict, disable, max_size, max_macs, max_params, opset_min, opset_max,
            reference, hints, config_path, **tolerance_flags):
    from onnxopt.check import (
        CheckConfig,
        check_model_file,
        failed,
        load_reference,
        parse_count,
        parse_size,
        summary_line,
        validate_rule_ids,
    )
    from onnxopt.validate.tolerances import Tolerances

    if config_path and not Path(config_path).is_file():
        raise UsageError(f"config file '{config_path}' not found")
    config_file = Path(config_path) if config_path else find_config(Path.cwd())
    settings = load_config(config_file) if config_file else {}
    if config_file:
        logger.info("using %s", config_file)

    # Flags override the file; --disable adds to its list.
    disabled = set(settings.get("disable", ())) | set(validate_rule_ids(_split_rules(disable)))
    flags = {
        "strict": strict, "hints": hints, "opset_min": opset_min, "opset_max": opset_max, "reference": reference,
        "max_size": _with_where(parse_size, max_size, "--max-size") if max_size is not None else None,
        "max_macs": _with_where(parse_count, max_macs, "--max-macs") if max_macs is not None else None,
        "max_params": _with_where(parse_count, max_params, "--max-params") if max_params is not None else None,
        **{k: tolerance_flags.get(k) for k in TOLERANCE_KEYS},
    }
    merged = {**settings, **{k: v for k, v in flags.items() if v is not None}}
    if merged.get("reference") is not None:
        load_reference(merged["reference"])  # a bad reference file is a usage error: exit 2 now
    config = CheckConfig(
        disabled=frozenset(disabled),
        max_size=merged.get("max_size"),
        max_macs=merged.get("max_macs"),
        max_params=merged.get("max_params"),
        opset_min=merged.get("opset_min"),
        opset_max=merged.get("opset_max"),
        reference=Path(merged["reference"]) if merged.get("reference") else None,
        tolerances=Tolerances(**{k: merged.get(k) for k in TOLERANCE_KEYS}),
        hints=bool(merged.get("hints", False)),
        strict=bool(merged.get("strict", False)),
    )

    results: list[_FileResult] = []
    for item in _expand(files):
        start = time.perf_counter()
        findings = check_model_file(item, config)
        results.append(_FileResult(_display(item), findings, time.perf_counter() - start))
        if not as_json:
            for finding in findings:
                click.echo(f"{finding.path}: {_level(finding.level)}: {finding.rule}: {finding.message}")
    all_findings = [f for r in results for f in r.findings]
    is_failed = failed(all_findings, config.strict)
    if as_json:
        emit_json(_document(results, config, config_file, is_failed))
    elif not is_quiet():
        line = summary_line(len(results), all_findings)
        click.echo(click.style(line, fg="red" if is_failed else "green") if sys.stdout.isatty() else line)
    click.get_current_context().exit(1 if is_failed else 0)


def _display(item: str) -> str:
    from onnxopt.check import display_name

    return display_name(item)


def _document(results: list[_FileResult], config, config_file: Path | None, is_failed: bool) -> dict:
    from onnxopt.check import ERROR, WARNING

    def count(findings, level):
        return sum(1 for f in findings if f.level == level)

    all_findings = [f for r in results for f in r.findings]
    return {
        "files": [
            {
                "path": r.path,
                "errors": count(r.findings, ERROR),
                "warnings": count(r.findings, WARNING),
                "seconds": round(r.seconds, 4),
                "findings": [f.to_dict() for f in r.findings],
            }
            for r in results
        ],
        "summary": {
            "files": len(results),
            "errors": count(all_findings, ERROR),
            "warnings": count(all_findings, WARNING),
            "strict": config.strict,
            "failed": is_failed,
        },
        "config_file": str(config_file) if config_file else None,
        "disabled": sorted(config.disabled),
    }
