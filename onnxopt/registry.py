"""Pass names, pass specs and pipeline config files.

Spec grammar (CLI ``--passes``), e.g. ``simplify,tucker:energy=0.95:min_macs=1e6,fp16``::

    spec    := pass ("," pass)*
    pass    := name (":" option)*
    option  := key "=" value | key          # a bare key sets a boolean option to true
    value   := scalar | scalar ("|" scalar)+  # "|" separates list items (globs)

Values are typed from the pass's ``Options`` dataclass. Config files (YAML, TOML or JSON)
hold the same pipeline: ``passes:`` a spec string, or a list of names and tables
(``- simplify``, ``- {name: tucker, energy: 0.95}``). Every mistake is a
:class:`UsageError` naming the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxopt.errors import UsageError
from onnxopt.passbase import OptimizerPass, PassContext
from onnxopt.runtime import one_line

_PASSES: dict[str, type[OptimizerPass]] = {}
_ALIASES: dict[str, str] = {}


def register(cls: type[OptimizerPass]) -> type[OptimizerPass]:
    """Class decorator: make a pass available under its name and aliases."""
    for key in (cls.name, *cls.aliases):
        if key in _PASSES or key in _ALIASES:
            raise ValueError(f"pass name '{key}' registered twice")
    _PASSES[cls.name] = cls
    for alias in cls.aliases:
        _ALIASES[alias] = cls.name
    return cls


def _ensure_loaded() -> None:
    import onnxopt.passes  # noqa: F401  (registers the built-in passes)


def available() -> dict[str, type[OptimizerPass]]:
    _ensure_loaded()
    return dict(_PASSES)


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}valid: {', '.join(sorted(choices))}"


def get(name: str) -> type[OptimizerPass]:
    _ensure_loaded()
    key = _ALIASES.get(name, name)
    if key not in _PASSES:
        raise UsageError(f"unknown pass '{name}'; {_did_you_mean(name, [*_PASSES, *_ALIASES])}")
    return _PASSES[key]


@dataclass(frozen=True)
class PassSpec:
    name: str
    options: dict[str, Any]

    def __str__(self) -> str:
        parts = [self.name]
        for key, value in self.options.items():
            if isinstance(value, (list, tuple)):
                value = "|".join(map(str, value))
            parts.append(f"{key}={value}")
        return ":".join(parts)


def parse_spec(text: str) -> list[PassSpec]:
    specs = []
    for chunk in text.split(","):
        chunk = chunk.strip()
        if not chunk:
            raise UsageError(f"empty pass in '{text}' (passes are separated by ',')")
        name, *raw_options = chunk.split(":")
        options: dict[str, Any] = {}
        for raw in raw_options:
            key, sep, value = raw.partition("=")
            key = key.strip()
            if not key:
                raise UsageError(f"empty option in '{chunk}' (options are 'key=value' after ':')")
            if key in options:
                raise UsageError(f"option '{key}' given twice in '{chunk}'")
            options[key] = value.strip() if sep else True
        specs.append(PassSpec(name.strip(), options))
    return specs


def _load_config_data(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file (config files are UTF-8 YAML, TOML or JSON)") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib

            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
    except Exception as exc:
        # YAML's message says where on its later lines
        raise UsageError(f"{path}: invalid {suffix[1:].upper()} config: {one_line(exc)}") from None
    raise UsageError(f"{path}: unknown config format '{suffix}'; valid: .yaml, .yml, .toml, .json")


def load_config(path: str | Path) -> list[PassSpec]:
    """Read a pipeline from a YAML, TOML or JSON file."""
    path = Path(path)
    data = _load_config_data(path)
    if not isinstance(data, dict) or "passes" not in data:
        raise UsageError(f"{path}: a config needs a top-level 'passes' list")
    unknown = set(data) - {"passes"}
    if unknown:
        raise UsageError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; valid: passes")
    entries = data["passes"]
    if isinstance(entries, str):
        return parse_spec(entries)
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{path}: 'passes' must be a non-empty list or a spec string")
    specs = []
    for entry in entries:
        if isinstance(entry, str):
            specs.extend(parse_spec(entry))
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            options = {k: v for k, v in entry.items() if k != "name"}
            specs.append(PassSpec(entry["name"], options))
        else:
            raise UsageError(f"{path}: each pass is a name or a table with a 'name' key, got {entry!r}")
    return specs


# ---------------------------------------------------------------- option typing

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def number_as_written(value: Any, where: str) -> int | float:
    """A number that keeps the form it was written in: ``"4"`` → 4 (int), ``"1.0"``,
    ``"0.5"``, ``"1e3"`` → float; ints and floats from a config file stay as they are.

    For options typed ``int | float`` whose meaning depends on the form, e.g. a
    decomposition's ``rank`` (``rank=4`` absolute, ``rank=1.0`` the full rank).
    """
    if isinstance(value, bool):
        raise UsageError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, int | float):
        return value
    text = str(value).strip()
    if re.fullmatch(r"[+-]?[0-9]+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{where}: expected a number, got {value!r}") from None


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
            if type(None) in args:
                return None
        if {a for a in args if a is not type(None)} == {int, float}:
            return number_as_written(value, where)
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except UsageError as exc:
                errors.append(str(exc))
        raise UsageError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        text = str(value)
        if text in args:
            return text
        raise UsageError(f"{where}: invalid value {value!r}; {_did_you_mean(text, [str(a) for a in args])}")
    if origin is tuple:
        if value is True:
            raise UsageError(f"{where}: expected a value (key=value)")
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split("|") if v != ""]
        item_type = args[0] if args else str
        return tuple(_coerce(item, item_type, where) for item in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise UsageError(f"{where}: expected an integer, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: expected an integer, got {value!r}") from None
        if not number.is_integer():
            raise UsageError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    if annotation is float:
        if isinstance(value, bool):
            raise UsageError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if value is True:
            raise UsageError(f"{where}: expected a value (key=value)")
        return str(value)
    raise TypeError(f"unsupported option type {annotation!r}")  # a bug in a pass, not user input


def option_fields(options_cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(options_cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(options_cls)]


def build_options(pass_cls: type[OptimizerPass], raw: dict[str, Any]) -> Any:
    """Type the raw ``key -> value`` mapping with the pass's Options dataclass."""
    fields = {f.name: (f, hint) for f, hint in option_fields(pass_cls.Options)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            valid = list(fields) or ["(this pass has no options)"]
            raise UsageError(f"pass '{pass_cls.name}': unknown option '{key}'; {_did_you_mean(key, valid)}")
        values[key] = _coerce(value, fields[key][1], f"pass '{pass_cls.name}' option '{key}'")
    try:
        return pass_cls.Options(**values)
    except (ValueError, TypeError) as exc:  # __post_init__ checks cross-field rules
        raise UsageError(f"pass '{pass_cls.name}': {exc}") from None


def build_passes(specs: list[PassSpec], context: PassContext | None = None) -> list[OptimizerPass]:
    """Instantiate passes; all specs are validated before any pass is created."""
    resolved = [(get(spec.name), spec) for spec in specs]
    options = [build_options(cls, spec.options) for cls, spec in resolved]
    return [cls(opts, context) for (cls, _), opts in zip(resolved, options)]


def describe_passes() -> list[dict[str, Any]]:
    """Everything ``onnxopt passes`` shows, as data."""
    rows = []
    for name, cls in sorted(available().items()):
        options = []
        for f, hint in option_fields(cls.Options):
            default = f.default if f.default is not dataclasses.MISSING else None
            options.append({
                "name": f.name,
                "type": _type_name(hint),
                "default": list(default) if isinstance(default, tuple) else default,
                "help": f.metadata.get("help", ""),
            })
        rows.append({
            "name": name,
            "aliases": list(cls.aliases),
            "summary": cls.summary,
            "lossless": cls.lossless,
            "needs_data": cls.needs_data,
            "providers": list(cls.providers),
            "capability": cls.capability(),
            "options": options,
        })
    return rows


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args if a is not type(None)) + (" | none" if type(None) in args else "")
    if origin is typing.Literal:
        return "|".join(map(str, args))
    if origin is tuple:
        return f"list of {_type_name(args[0]) if args else 'str'} ('|'-separated)"
    return getattr(hint, "__name__", str(hint))
