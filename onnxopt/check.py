"""``onnxopt check``: fast, static health checks of ONNX files for pre-commit hooks and CI.

Why: an exported model that does not load, that onnxruntime refuses, or that carries NaN
weights is usually found late — at deployment. This module finds those problems in well
under a second per small model, without running the model (unless a reference file is
given), so it can run on every commit. A broken file is a *finding*, never an exception:
a pre-commit check must report it, not crash on it.

Each problem is a :class:`Finding` ``(path, level, rule, message)``; ``level`` is
``"error"`` or ``"warning"``. Every rule has a stable kebab-case id, listed in
:data:`RULES`, and can be disabled. The rules, in the order they run:

==================== ======= ==================================================================
id                   level   what it reports
==================== ======= ==================================================================
load-error           error   unreadable, empty, truncated or random-bytes file; a protobuf
                             that is not an ONNX model; a directory; a Git LFS pointer file;
                             stdin closed
size                 error   the .onnx file itself is over the 2 GiB protobuf limit (its
                             weights must be stored as external data)
                     warning weights stored inside the file come within 64 MiB of that limit
external-data        error   an external-data file is missing, unreadable, an absolute path or
                             outside the model's folder (also: external data read from stdin)
ir-version           error   IR version newer than the installed onnxruntime loads
opset-version        error   an opset (any domain) newer than the installed onnxruntime supports
checker              error   ``onnx.checker.check_model`` fails (structure, SSA, topological
                             order, unknown ops, attributes)
shape-inference      error   strict ONNX shape and type inference fails; together with
                             ``checker`` this is ``onnx.checker``'s *full* check
duplicate-names      error   a tensor name is defined twice (node outputs, graph inputs,
                             initializers), or two nodes of one graph share a name and
                             onnxruntime really refuses the model (its session is created to
                             verify: the claim is its own error message)
                     warning two nodes of one graph share a name and onnxruntime loads the
                             model anyway (it folds ``Constant`` nodes into initializers when
                             it loads a graph, so their names never meet)
node-names           warning nodes without a name (legal, but profiles, quantization exclusion
                             lists and per-layer reports cannot address them)
input-shadowed       warning a graph input has an initializer of the same name (IR ≥ 4): it
                             becomes an overridable default that onnxruntime will not
                             constant-fold
unused-initializer   warning initializers or ``Constant`` nodes nothing reads (dead weight)
non-finite-weights   error   NaN or ±Inf in an initializer or a constant tensor attribute
ort-session          error   onnxruntime cannot create a CPU session (graph optimizations
                             off, native log output suppressed)
max-size             error   budget: file size (plus external data) above ``max_size``
max-params           error   budget: parameters above ``max_params``
max-macs             error   budget: MACs above ``max_macs``; a warning when MACs are unknown
                             (dynamic shapes beyond the batch dimension)
opset-range          error   the ai.onnx opset is outside ``opset_min``..``opset_max``
reference            error   outputs on the ``reference`` inputs differ from the expected ones
                             beyond the tolerances (default: relative L2 error ≤ 1e-4)
hints                warning only with ``hints=True``: layers a Tucker-2 decomposition would
                             cut by a useful share of MACs, the INT8 candidates, and the
                             MatMul/Gemm candidates for svd / int8-dynamic (MACs at
                             sequence length 128 where a sequence dim is dynamic)
==================== ======= ==================================================================

Dependencies between rules: nothing runs after ``load-error``, ``size`` (error) or
``external-data`` (with such a rule disabled the file is skipped without a finding: it
cannot be checked without its bytes or weights, and files outside the model's folder are
never read); ``shape-inference``, MAC counting and
``ort-session`` are skipped when ``checker``, ``ir-version`` or ``opset-version`` already
failed, and ``ort-session`` also after a ``duplicate-names`` error on tensor names (the
same root cause reported once, and onnxruntime is never handed a structurally broken
graph). Duplicate *node* names are judged by onnxruntime itself: its session decides
between an error (it refuses them: then ``duplicate-names`` reports it and
``ort-session`` does not repeat it) and a warning; where no session is created
(``ort-session`` disabled or skipped) the level follows what onnxruntime 1.31 was
measured to do — it refuses two nodes of one graph with one name unless they are
``Constant`` nodes — and the message says it was not verified. ``reference`` needs a
session. Disabling a rule also lifts the skips it causes.

Hints are warnings so that the output stays one format, but they are only computed on
request; like every warning they fail the run only with ``strict``.

The reference file (``.npz``) holds the model inputs under keys ``input:<name>`` and the
expected outputs under ``output:<name>``; the inputs are fed as they are, in one run, and
every listed output is compared with :mod:`onnxopt.validate.metrics`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import math
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from onnxopt.errors import InputError, UsageError

if TYPE_CHECKING:
    import onnx

    from onnxopt.validate.metrics import Tolerances

logger = logging.getLogger(__name__)

ERROR = "error"
WARNING = "warning"
STDIN_NAME = "<stdin>"

# id -> (level, one-line description); the order is the order the rules run in.
RULES: dict[str, tuple[str, str]] = {
    "load-error": (ERROR, "the file cannot be read as an ONNX model"),
    "size": (ERROR, "over the 2 GiB protobuf limit (error) or close to it (warning)"),
    "external-data": (ERROR, "external data missing, unreadable or outside the model's folder"),
    "ir-version": (ERROR, "IR version newer than the installed onnxruntime loads"),
    "opset-version": (ERROR, "opset newer than the installed onnxruntime supports"),
    "checker": (ERROR, "onnx.checker.check_model fails"),
    "shape-inference": (ERROR, "strict ONNX shape/type inference fails"),
    "duplicate-names": (ERROR, "a tensor defined twice, or duplicate node names onnxruntime refuses (else a warning)"),
    "node-names": (WARNING, "nodes without a name"),
    "input-shadowed": (WARNING, "graph inputs that also have an initializer (IR >= 4)"),
    "unused-initializer": (WARNING, "initializers or Constant nodes that nothing reads"),
    "non-finite-weights": (ERROR, "NaN or Inf in weights or constants"),
    "ort-session": (ERROR, "onnxruntime cannot create a CPU session"),
    "max-size": (ERROR, "budget: file size (with external data) above --max-size"),
    "max-params": (ERROR, "budget: parameter count above --max-params"),
    "max-macs": (ERROR, "budget: MACs above --max-macs (warning when unknown)"),
    "opset-range": (ERROR, "ai.onnx opset outside --opset-min..--opset-max"),
    "reference": (ERROR, "outputs differ from the --reference file beyond the tolerances"),
    "hints": (WARNING, "with --hints: layers a decomposition or INT8 pass would speed up"),
}

DEFAULT_TOLERANCE_MAX_REL_ERROR = 1e-4
# Weights inside the .onnx file this close to the protobuf limit leave no room to grow.
SIZE_WARNING_BYTES = 2**31 - 2**26
# Hints: a decomposition is only suggested where it pays (see ARCHITECTURE.md: small
# layers get slower on CPU despite fewer MACs).
HINT_MIN_LAYER_MACS = 10_000_000
HINT_MAX_MAC_RATIO = 0.7
HINT_MIN_CHANNELS = 16

_FLOAT_TYPES: frozenset[int] = frozenset()  # filled lazily (needs onnx)


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


@dataclass(frozen=True)
class CheckConfig:
    """What to check. Budgets and the reference are off when None.

    ``tolerances`` applies to ``reference`` only; None means relative L2 error ≤ 1e-4.
    ``strict`` does not change the findings, only :func:`failed`.
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
        if rule not in RULES:  # a typo in onnxopt itself, not in user input
            raise KeyError(rule)
        return rule not in self.disabled

    def effective_tolerances(self) -> Tolerances:
        from onnxopt.validate.metrics import Tolerances

        if self.tolerances is None or self.tolerances.is_empty():
            return Tolerances(max_rel_error=DEFAULT_TOLERANCE_MAX_REL_ERROR)
        return self.tolerances


def validate_rule_ids(ids: Iterable[str]) -> list[str]:
    """The ids, checked; UsageError naming the valid ids (and the closest one) otherwise."""
    result = []
    for rule in ids:
        rule = rule.strip()
        if rule not in RULES:
            close = difflib.get_close_matches(rule, list(RULES), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UsageError(f"unknown rule '{rule}'{hint}; valid: {', '.join(RULES)}")
        result.append(rule)
    return result


def failed(findings: Iterable[Finding], strict: bool = False) -> bool:
    """Whether the run fails: any error, or with ``strict`` any warning."""
    return any(f.level == ERROR or strict for f in findings)


# --------------------------------------------------------------------------- parsing

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


def _human_bytes(value: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value} B"


def _human_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _one_line(text: str, limit: int = 300) -> str:
    """First meaningful part of a (multi-line, native) error message, on one line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    text = re.sub(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    # onnxruntime prefixes messages with the C++ source location and signature.
    text = re.sub(r"/\S+\.(?:cc|h|cpp):\d+\s+[^()]*\([^)]*\)\s+", "", text)
    text = re.sub(r"Load model from \S+ failed:\s*", "", text)
    text = " ".join(text.split())
    return (text[: limit - 1] + "…") if len(text) > limit else (text or "unknown error")


# --------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class Reference:
    """Inputs and expected outputs read from a ``.npz`` (keys ``input:<name>``, ``output:<name>``)."""

    path: Path
    inputs: dict[str, np.ndarray] = field(repr=False)
    outputs: dict[str, np.ndarray] = field(repr=False)


def load_reference(path: str | os.PathLike) -> Reference:
    """Read and validate a reference file; UsageError (exit 2) when it cannot be used."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise UsageError(f"reference file '{path}' not found") from None
    return _load_reference_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_reference_cached(path: str, _mtime: int, _size: int) -> Reference:
    inputs: dict[str, np.ndarray] = {}
    outputs: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                kind, sep, name = key.partition(":")
                if not sep or not name or kind not in ("input", "output"):
                    raise UsageError(
                        f"reference file '{path}': key '{key}' is neither 'input:<name>' nor 'output:<name>'"
                    )
                (inputs if kind == "input" else outputs)[name] = archive[key]
    except UsageError:
        raise
    except Exception as exc:  # zipfile, pickle refusal, bad header: all mean "not an npz"
        raise UsageError(f"reference file '{path}' is not a readable .npz: {_one_line(exc, 160)}") from None
    if not outputs:
        raise UsageError(f"reference file '{path}' has no 'output:<name>' arrays")
    return Reference(Path(path), inputs, outputs)


# --------------------------------------------------------------------------- model walking


def _float_types() -> frozenset[int]:
    global _FLOAT_TYPES
    if not _FLOAT_TYPES:
        from onnx import TensorProto as T

        names = ("FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16", "COMPLEX64", "COMPLEX128", "FLOAT8E4M3FN",
                 "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1")
        _FLOAT_TYPES = frozenset(getattr(T, n) for n in names if hasattr(T, n))
    return _FLOAT_TYPES


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    from onnx import AttributeProto

    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _all_graphs(sub)


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by the graph's nodes, its subgraphs (outer-scope reads) and outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(i for i in node.input if i)
        for sub in _subgraphs(node):
            names |= _names_read(sub)
    return names


def _constant_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """(description, tensor) for every stored tensor: initializers, sparse ones, tensor attributes."""
    from onnx import AttributeProto

    nodes: list[onnx.NodeProto] = []
    for graph in _all_graphs(model.graph):
        for tensor in graph.initializer:
            yield f"initializer '{tensor.name}'", tensor
        for sparse in graph.sparse_initializer:
            yield f"sparse initializer '{sparse.values.name}'", sparse.values
        nodes.extend(graph.node)
    for function in model.functions:
        nodes.extend(function.node)
    for node in nodes:
        label = f"{node.op_type} node '{node.name or (node.output[0] if node.output else '?')}'"
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield f"{label} attribute '{attr.name}'", attr.t
            elif attr.type == AttributeProto.TENSORS:
                for tensor in attr.tensors:
                    yield f"{label} attribute '{attr.name}'", tensor
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                yield f"{label} attribute '{attr.name}'", attr.sparse_tensor.values


def _constant_float_attrs(model: onnx.ModelProto) -> Iterator[tuple[str, list[float]]]:
    for graph in _all_graphs(model.graph):
        for node in graph.node:
            if node.op_type != "Constant":
                continue
            for attr in node.attribute:
                if attr.name == "value_float":
                    yield f"Constant node '{node.name or node.output[0]}'", [attr.f]
                elif attr.name == "value_floats":
                    yield f"Constant node '{node.name or node.output[0]}'", list(attr.floats)


# --------------------------------------------------------------------------- loading


@dataclass
class _Loaded:
    path: str  # as displayed
    source: Path | None  # None for stdin
    data: bytes | None  # the raw bytes (kept for stdin: onnxruntime gets them directly)
    model: onnx.ModelProto
    size_on_disk: int
    external: bool


def _fits(model: onnx.ModelProto) -> bool:
    try:
        return model.ByteSize() <= _protobuf_limit()
    except Exception:
        return False


def _protobuf_limit() -> int:
    from onnxopt import io

    return io.PROTOBUF_LIMIT


class _Stop(Exception):
    """A finding after which nothing else can be checked in this file."""


class _Run:
    """Checks one file; collects findings; rules call :meth:`add`."""

    def __init__(self, display: str, config: CheckConfig):
        self.display = display
        self.config = config
        self.findings: list[Finding] = []
        self.failed_rules: set[str] = set()
        self.timings: dict[str, float] = {}

    def add(self, rule: str, message: str, level: str | None = None) -> None:
        """Record a finding; a disabled rule's findings are dropped (a blocking one, such as
        ``load-error``, still ends the checks of the file)."""
        if not self.config.enabled(rule):
            logger.info("%s: %s (rule %s disabled)", self.display, message, rule)
            return
        level = level or RULES[rule][0]
        self.findings.append(Finding(self.display, level, rule, " ".join(message.split())))
        if level == ERROR:
            self.failed_rules.add(rule)

    def rule(self, rule: str, func, *args) -> Any:
        """Run one rule unless disabled; an unexpected exception becomes a finding, not a crash."""
        if not self.config.enabled(rule):
            return None
        start = time.perf_counter()
        try:
            return func(self, *args)
        except _Stop:
            raise
        except UsageError:
            raise
        except Exception as exc:
            logger.debug("rule %s raised", rule, exc_info=True)
            self.add(rule, f"could not be checked: {type(exc).__name__}: {_one_line(exc, 200)}")
            return None
        finally:
            self.timings[rule] = time.perf_counter() - start


def _read_source(run: _Run, source: str, stdin: BinaryIO | None) -> tuple[bytes, Path | None]:
    from onnxopt import io

    if source == io.STDIO:
        try:
            return io.read_stdin(stdin), None
        except InputError as exc:
            run.add("load-error", str(exc))
            raise _Stop from None
    path = Path(source)
    if not path.exists():
        run.add("load-error", "no such file")
        raise _Stop
    if path.is_dir():
        run.add("load-error", "is a directory, not a model file")
        raise _Stop
    try:
        size = path.stat().st_size
    except OSError as exc:
        run.add("load-error", f"cannot read: {exc.strerror or exc}")
        raise _Stop from None
    if size > _protobuf_limit():
        if run.config.enabled("size"):
            run.add("size", f"the file is {_human_bytes(size)}, over the 2 GiB protobuf limit: no ONNX "
                            "reader can parse it; store the weights as external data")
        else:
            run.add("load-error", f"the file is {_human_bytes(size)}, over the 2 GiB protobuf limit")
        raise _Stop
    try:
        return path.read_bytes(), path
    except OSError as exc:
        run.add("load-error", f"cannot read: {exc.strerror or exc}")
        raise _Stop from None


def _load(run: _Run, source: str, stdin: BinaryIO | None) -> _Loaded:
    import onnx

    from onnxopt import io

    data, path = _read_source(run, source, stdin)
    if data.startswith(b"version https://git-lfs.github.com/spec/"):
        run.add("load-error", "a Git LFS pointer file, not the model: install git-lfs and run 'git lfs pull'")
        raise _Stop
    try:
        model = io.parse_model_bytes(data, "the file" if path else "stdin")
    except InputError as exc:
        run.add("load-error", str(exc).removeprefix("the file: ").removeprefix("stdin: "))
        raise _Stop from None

    external_files = _external_files(model)
    if external_files:
        try:
            io.check_external_data(model, path.parent if path else None, str(path) if path else "stdin")
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except InputError as exc:
            _external_data_problem(run, str(exc).removeprefix(f"{path}: ").removeprefix("stdin: "))
        except (OSError, ValueError) as exc:
            _external_data_problem(run, f"cannot read external data: {_one_line(exc, 200)}")
    size_on_disk = len(data)
    if path is not None and external_files:
        size_on_disk += sum((path.parent / f).stat().st_size for f in external_files)
    return _Loaded(run.display, path, data if path is None else None, model, size_on_disk, bool(external_files))


def _external_data_problem(run: _Run, message: str) -> None:
    """Without its weights a model cannot be checked further; with the rule disabled the
    file is skipped without a finding (the containment check itself is never skipped)."""
    if run.config.enabled("external-data"):
        run.add("external-data", message)
    else:
        logger.info("%s: not checked further: %s", run.display, message)
    raise _Stop


def _external_files(model: onnx.ModelProto) -> list[str]:
    import onnx

    locations = []
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if onnx.external_data_helper.uses_external_data(tensor):
            location = onnx.external_data_helper.ExternalDataInfo(tensor).location
            if location not in locations:
                locations.append(location)
    return locations


# --------------------------------------------------------------------------- rules


def _rule_size_warning(run: _Run, loaded: _Loaded) -> None:
    inline = len(loaded.data) if loaded.data is not None else (
        loaded.source.stat().st_size if loaded.source is not None else 0
    )
    if inline > SIZE_WARNING_BYTES:
        run.add("size", f"the file is {_human_bytes(inline)}, within 64 MiB of the 2 GiB protobuf limit: "
                        "any growth breaks it; save the weights as external data", WARNING)


@functools.cache
def _max_runtime_ir_version() -> int:
    from onnxopt import io

    with _quiet_native_stderr():
        return io.max_runtime_ir_version()


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def _rule_ir_version(run: _Run, loaded: _Loaded) -> None:
    limit = _max_runtime_ir_version()
    if loaded.model.ir_version > limit:
        run.add("ir-version", f"IR version {loaded.model.ir_version} is newer than onnxruntime "
                              f"{_ort_version()} loads (max {limit}); set model.ir_version = {limit} "
                              "when exporting or saving")


_OPSET_SUPPORT = re.compile(r"Opset (\d+) is under development.*?support for domain (\S+) is till opset (\d+)", re.S)


@functools.cache
def _unsupported_opsets(opsets: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int, int], ...]:
    """(domain, version, onnxruntime's max) for each opset import onnxruntime refuses.

    onnxruntime validates every opset import when it loads a model, so a one-node model
    importing the same opsets is an exact probe (microseconds, no guessing of limits).
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    remaining = {("" if d == "ai.onnx" else d): v for d, v in opsets}
    remaining.setdefault("", 13)
    problems = []
    for _ in range(len(remaining)):
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "opset_probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in remaining.items()])
        probe.ir_version = _max_runtime_ir_version()
        options = ort.SessionOptions()
        options.log_severity_level = 4
        try:
            with _quiet_native_stderr():
                ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
            break
        except Exception as exc:
            match = _OPSET_SUPPORT.search(str(exc))
            if not match:
                break  # some other refusal: ort-session reports it on the real model
            version, domain, supported = int(match.group(1)), match.group(2), int(match.group(3))
            key = "" if domain == "ai.onnx" else domain
            problems.append((domain, version, supported))
            if remaining.pop(key, None) is None:
                break
    return tuple(problems)


def _rule_opset_version(run: _Run, loaded: _Loaded) -> None:
    opsets = tuple(sorted((o.domain, int(o.version)) for o in loaded.model.opset_import))
    for domain, version, supported in _unsupported_opsets(opsets):
        run.add("opset-version", f"opset {domain} {version} is newer than onnxruntime {_ort_version()} "
                                 f"supports (up to {supported})")


def _rule_checker(run: _Run, loaded: _Loaded) -> None:
    import onnx

    try:
        if _fits(loaded.model):
            onnx.checker.check_model(loaded.model, full_check=False)
        else:
            onnx.checker.check_model(str(loaded.source), full_check=False)
    except (onnx.checker.ValidationError, ValueError) as exc:
        run.add("checker", _one_line(exc))


def _rule_shape_inference(run: _Run, loaded: _Loaded) -> None:
    import onnx

    try:
        if _fits(loaded.model):
            onnx.shape_inference.infer_shapes(loaded.model, check_type=True, strict_mode=True)
        else:
            with tempfile.TemporaryDirectory(prefix="onnxopt-check-") as tmp:
                onnx.shape_inference.infer_shapes_path(
                    str(loaded.source), str(Path(tmp) / "inferred.onnx"), check_type=True, strict_mode=True
                )
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
        run.add("shape-inference", _one_line(exc))


@dataclass(frozen=True)
class _NodeNameDuplicates:
    """Node names used more than once in one graph, and those onnxruntime is expected to
    refuse (shared by at least two nodes that are not ``Constant``: onnxruntime turns
    ``Constant`` nodes into initializers when it loads a graph, before it checks names)."""

    where: str
    names: list[str]
    refused: list[str]


def _node_name_duplicates(graph: onnx.GraphProto, where: str) -> _NodeNameDuplicates | None:
    counts = Counter(n.name for n in graph.node if n.name)
    names = [name for name, count in counts.items() if count > 1]
    if not names:
        return None
    kept = Counter(n.name for n in graph.node if n.name in names
                   and not (n.op_type == "Constant" and n.domain in ("", "ai.onnx")))
    return _NodeNameDuplicates(where, names, [name for name, count in kept.items() if count > 1])


def _rule_duplicate_names(run: _Run, loaded: _Loaded) -> list[_NodeNameDuplicates]:
    """Tensor names defined twice are errors here; duplicate node names are returned for
    :func:`_judge_node_names`, which asks onnxruntime whether it refuses them."""
    node_duplicates = []
    for graph in _all_graphs(loaded.model.graph):
        where = "" if graph is loaded.model.graph else f" in subgraph '{graph.name}'"
        duplicates = _node_name_duplicates(graph, where)
        if duplicates is not None:
            node_duplicates.append(duplicates)
        # Every tensor has one definition: a graph input, an initializer or a node output.
        # (An initializer listed as a graph input too is legal: see input-shadowed.)
        definitions: Counter[str] = Counter()
        initializers = [t.name for t in graph.initializer]
        inputs = [i.name for i in graph.input]
        definitions.update(set(inputs) | set(initializers))
        for node in graph.node:
            definitions.update(o for o in node.output if o)
        twice_defined = [name for name, count in definitions.items() if count > 1]
        twice_defined += [n for n, c in Counter(initializers).items() if c > 1 and n not in twice_defined]
        twice_defined += [n for n, c in Counter(inputs).items() if c > 1 and n not in twice_defined]
        if twice_defined:
            run.add("duplicate-names", f"{len(twice_defined)} tensor name(s) defined more than once{where} "
                                       f"({_names(twice_defined)})")
    return node_duplicates


_SAME_NODE_NAME = re.compile(r"two nodes with same node name \((.*?)\)")


def _judge_node_names(run: _Run, duplicates: list[_NodeNameDuplicates], session_tried: bool, loaded_ok: bool) -> None:
    """Duplicate node names: an error only where onnxruntime refuses them.

    ``session_tried``: the ``ort-session`` rule just tried to create a session, and
    ``loaded_ok`` says whether it succeeded; its refusal, if it names one of the
    duplicates, is the verdict. Otherwise the level is predicted (see
    :class:`_NodeNameDuplicates`) and the message says it was not verified.
    """
    if not duplicates:
        return
    version = _ort_version()
    refusal = None
    if session_tried and not loaded_ok:
        for index, finding in enumerate(run.findings):
            match = _SAME_NODE_NAME.search(finding.message) if finding.rule == "ort-session" else None
            if match:
                refusal = match.group(1)
                del run.findings[index]  # one root cause, one finding: reported below
                if not any(f.rule == "ort-session" and f.level == ERROR for f in run.findings):
                    run.failed_rules.discard("ort-session")
                break
    for item in duplicates:
        text = f"{len(item.names)} node name(s) used more than once{item.where} ({_names(item.names)})"
        if refusal is not None and refusal in item.names:
            run.add("duplicate-names", f"{text}; onnxruntime {version} refuses the model: "
                                       f"two nodes with same node name ({refusal})")
            continue
        if session_tried and loaded_ok:
            run.add("duplicate-names", f"{text}; onnxruntime {version} loads the model (checked), but tools that "
                                       "address nodes by name (profiles, quantization exclusion lists) may mix "
                                       "them up", WARNING)
            continue
        why = "no onnxruntime session was created" if not session_tried else "onnxruntime stopped at another problem"
        if item.refused:
            run.add("duplicate-names", f"{text}; onnxruntime refuses two nodes of one graph with one name "
                                       f"({_names(item.refused)}) (not verified: {why})")
        else:
            run.add("duplicate-names", f"{text}: all Constant nodes, which onnxruntime folds into initializers "
                                       f"when it loads a model, so it accepts them (not verified: {why})", WARNING)


def _rule_node_names(run: _Run, loaded: _Loaded) -> None:
    total = unnamed = 0
    first = None
    for graph in _all_graphs(loaded.model.graph):
        for index, node in enumerate(graph.node):
            total += 1
            if not node.name:
                unnamed += 1
                first = first or f"#{index} {node.op_type}"
    if unnamed:
        run.add("node-names", f"{unnamed} of {total} nodes have no name (first: {first}); profiles, "
                              "quantization exclusion lists and per-layer reports cannot address them")


def _rule_input_shadowed(run: _Run, loaded: _Loaded) -> None:
    model = loaded.model
    if model.ir_version < 4:  # IR < 4 requires every initializer to be listed as an input
        return
    initializers = {t.name for t in model.graph.initializer}
    shadowed = [i.name for i in model.graph.input if i.name in initializers]
    if shadowed:
        run.add("input-shadowed", f"{len(shadowed)} graph input(s) also have an initializer ({_names(shadowed)}): "
                                  "callers may override them, so onnxruntime will not constant-fold them; "
                                  "drop them from the graph inputs unless that is intended")


def _rule_unused_initializer(run: _Run, loaded: _Loaded) -> None:
    unused: list[str] = []
    unused_constants: list[str] = []
    wasted = 0
    for graph in _all_graphs(loaded.model.graph):
        read = _names_read(graph)
        for tensor in graph.initializer:
            if tensor.name not in read:
                unused.append(tensor.name)
                wasted += tensor.ByteSize()
        for node in graph.node:
            if node.op_type == "Constant" and node.output and not any(o in read for o in node.output):
                unused_constants.append(node.name or node.output[0])
                wasted += node.ByteSize()
    parts = []
    if unused:
        parts.append(f"{len(unused)} initializer(s) ({_names(unused)})")
    if unused_constants:
        parts.append(f"{len(unused_constants)} Constant node(s) ({_names(unused_constants)})")
    if parts:
        run.add("unused-initializer", f"{' and '.join(parts)} are read by no node and no graph output "
                                      f"({_human_bytes(wasted)} of dead weight)")


def _rule_non_finite_weights(run: _Run, loaded: _Loaded) -> None:
    from onnx import numpy_helper

    floats = _float_types()
    bad: list[str] = []
    for label, tensor in _constant_tensors(loaded.model):
        if tensor.data_type not in floats:
            continue
        values = numpy_helper.to_array(tensor)
        finite = np.isfinite(values)
        if not finite.all():
            nan = int(np.isnan(values).sum())
            inf = int((~finite).sum()) - nan
            counts = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n)
            bad.append(f"{label} has {counts} among {values.size} values")
    for label, values in _constant_float_attrs(loaded.model):
        array = np.asarray(values, dtype=np.float64)
        if not np.isfinite(array).all():
            bad.append(f"{label} has a NaN or Inf value")
    if bad:
        more = f"; and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
        run.add("non-finite-weights", "; ".join(bad[:3]) + more)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Keep onnxruntime's native log off the terminal (a pre-commit hook prints findings,
    not log spam); what it printed goes to the debug log."""
    from onnxopt.runtime import capture_fd2

    with capture_fd2() as printed:
        yield
    text = "".join(printed).strip()
    if text:
        logger.debug("onnxruntime printed: %s", text[:2000])


def _create_session(loaded: _Loaded):
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    # No graph optimizations: loading is all we check, and constant folding can take
    # seconds on models whose weights are Constant nodes (1.5 s → 0.02 s on AlexNet).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if loaded.source is not None:
        source: Any = str(loaded.source)
    else:
        source = loaded.data if loaded.data is not None else loaded.model.SerializeToString()
    with _quiet_native_stderr():
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _rule_ort_session(run: _Run, loaded: _Loaded):
    try:
        return _create_session(loaded)
    except Exception as exc:  # onnxruntime raises several unrelated types
        run.add("ort-session", f"onnxruntime {_ort_version()} cannot create a CPU session: {_one_line(exc)}")
        return None


def _rule_max_size(run: _Run, loaded: _Loaded) -> None:
    limit = run.config.max_size
    if limit is not None and loaded.size_on_disk > limit:
        what = "file and its external data" if loaded.external else "file"
        run.add("max-size", f"the {what} take {_human_bytes(loaded.size_on_disk)} "
                            f"({loaded.size_on_disk} bytes), over the budget of {_human_bytes(limit)}")


def _rule_max_params(run: _Run, loaded: _Loaded) -> None:
    from onnxopt.analysis import parameter_count

    limit = run.config.max_params
    if limit is None:
        return
    params = parameter_count(loaded.model)
    if params > limit:
        run.add("max-params", f"{_human_count(params)} parameters ({params}), over the budget of {_human_count(limit)}")


def _rule_max_macs(run: _Run, loaded: _Loaded, costs) -> None:
    from onnxopt.analysis import COUNTED_OPS

    limit = run.config.max_macs
    if limit is None or costs is None:
        return
    counted = [c for c in costs.values() if c.op_type in COUNTED_OPS]
    unknown = [c.name for c in counted if c.macs is None]
    total = sum(c.macs or 0 for c in counted)
    if total > limit:
        run.add("max-macs", f"{_human_count(total)} MACs ({total}) with batch size 1, over the budget of "
                            f"{_human_count(limit)}")
    elif unknown:
        run.add("max-macs", f"cannot check the MAC budget: {len(unknown)} layer(s) have unknown shapes "
                            f"({_names(unknown)}; dynamic dimensions other than the batch)", WARNING)


def _rule_opset_range(run: _Run, loaded: _Loaded) -> None:
    low, high = run.config.opset_min, run.config.opset_max
    if low is None and high is None:
        return
    versions = [o.version for o in loaded.model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        run.add("opset-range", "the model imports no ai.onnx opset")
        return
    version = versions[0]
    wanted = f"{low if low is not None else '…'}..{high if high is not None else '…'}"
    if (low is not None and version < low) or (high is not None and version > high):
        run.add("opset-range", f"ai.onnx opset {version} is outside the required range {wanted}")


_ORT_NUMPY = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


def _rule_reference(run: _Run, loaded: _Loaded, session) -> None:
    from onnxopt.validate.metrics import MetricsAccumulator, check_gate

    reference = load_reference(run.config.reference)
    ref_name = reference.path.name
    if session is None:
        try:
            session = _create_session(loaded)
        except Exception as exc:
            run.add("reference", f"cannot run the model: {_one_line(exc)}")
            return
    model_inputs = {i.name: i for i in session.get_inputs()}
    model_outputs = [o.name for o in session.get_outputs()]
    problems = []
    unknown_inputs = [n for n in reference.inputs if n not in model_inputs]
    if unknown_inputs:
        problems.append(f"{ref_name} has input(s) {_names(unknown_inputs)} the model does not have "
                        f"(inputs: {_names(list(model_inputs), 8)})")
    missing = [n for n in model_inputs if n not in reference.inputs]
    if missing:
        problems.append(f"{ref_name} lacks model input(s) {_names(missing)} (keys 'input:<name>')")
    unknown_outputs = [n for n in reference.outputs if n not in model_outputs]
    if unknown_outputs:
        problems.append(f"{ref_name} has output(s) {_names(unknown_outputs)} the model does not produce "
                        f"(outputs: {_names(model_outputs, 8)})")
    feeds = {}
    for name, array in reference.inputs.items():
        if name not in model_inputs:
            continue
        wanted = _ORT_NUMPY.get(model_inputs[name].type)
        if wanted is not None and array.dtype != wanted:
            if np.dtype(wanted).kind == array.dtype.kind or {np.dtype(wanted).kind, array.dtype.kind} <= {"i", "u"}:
                array = array.astype(wanted)
            else:
                problems.append(f"input '{name}' is {array.dtype} in {ref_name}; the model expects "
                                f"{model_inputs[name].type}")
        feeds[name] = array
    if problems:
        for problem in problems:
            run.add("reference", problem)
        return
    names = [n for n in model_outputs if n in reference.outputs]
    try:
        with _quiet_native_stderr():
            values = session.run(names, feeds)
    except Exception as exc:
        run.add("reference", f"running the model on the inputs of {ref_name} failed: {_one_line(exc)}")
        return
    accumulator = MetricsAccumulator(names)
    accumulator.update({n: reference.outputs[n] for n in names}, dict(zip(names, values)))
    for failure in check_gate(accumulator.result(), run.config.effective_tolerances()):
        run.add("reference", f"{failure} (against {ref_name})")


def _initializer_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    """name -> (shape, data type) of initializers and Constant outputs of the main graph."""
    shapes = {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t is not None:
                    shapes[node.output[0]] = (tuple(attr.t.dims), attr.t.data_type)
    return shapes


def tucker2_mac_ratio(channels: int, filters: int, kernel: int, stride_area: int = 1,
                      rank_in: int | None = None, rank_out: int | None = None) -> float:
    """MACs of a Tucker-2 replacement (1×1 → k×k core → 1×1) over the dense conv's, per output pixel.

    ``kernel`` is kh·kw; the first 1×1 runs at the input resolution, ``stride_area`` (sh·sw)
    times the output pixels. Ranks default to half the channels.
    """
    r1 = rank_in or max(1, channels // 2)
    r2 = rank_out or max(1, filters // 2)
    new = channels * r1 * stride_area + r1 * r2 * kernel + r2 * filters
    return new / (channels * filters * kernel)


def _rule_hints(run: _Run, loaded: _Loaded, costs) -> None:
    from onnxopt.analysis import COUNTED_OPS
    from onnxopt.analysis import attribute as _attr

    if costs is None:
        return
    model = loaded.model
    floats = _float_types()
    weights = _initializer_shapes(model)
    total = sum(c.macs or 0 for c in costs.values() if c.op_type in COUNTED_OPS)
    int8_layers = 0
    int8_macs = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type not in COUNTED_OPS:
            continue
        cost = costs.get(node.name or f"{node.op_type}_{index}")
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        if cost is None or weight is None or weight[1] not in floats:
            continue
        int8_layers += 1
        int8_macs += cost.macs or 0
        shape = weight[0]
        if node.op_type != "Conv" or len(shape) < 3 or not cost.macs:
            continue
        filters, channels, kernel_dims = shape[0], shape[1], shape[2:]
        kernel = math.prod(kernel_dims)
        if _attr(node, "group", 1) != 1 or kernel <= 1 or min(channels, filters) < HINT_MIN_CHANNELS:
            continue
        if cost.macs < HINT_MIN_LAYER_MACS:
            continue
        strides = _attr(node, "strides", None) or [1] * len(kernel_dims)
        ratio = tucker2_mac_ratio(channels, filters, kernel, math.prod(strides))
        if ratio > HINT_MAX_MAC_RATIO:
            continue
        after = int(cost.macs * ratio)
        run.add("hints", f"node '{cost.name}' (Conv {'×'.join(map(str, kernel_dims))}, {channels}→{filters}, "
                         f"{_human_count(cost.macs)} MACs): Tucker-2 at ranks {channels // 2}/{filters // 2} "
                         f"(pass 'tucker') would cut its MACs by ~{100 * (1 - ratio):.0f}% "
                         f"({_human_count(cost.macs)} → {_human_count(after)})")
    if int8_layers:
        all_known = all(c.macs is not None for c in costs.values() if c.op_type in COUNTED_OPS)
        share = f" ({100 * int8_macs / total:.0f}% of the {_human_count(total)} MACs)" if total and all_known else ""
        run.add("hints", f"INT8 quantization applies to {int8_layers} Conv/Gemm/MatMul layer(s) with float "
                         f"weights{share}: the same MACs in int8 arithmetic, weights 4× smaller")
    from onnxopt.blocks import linear_candidates_hint  # MatMul/Gemm for svd and int8-dynamic

    linear = linear_candidates_hint(model, costs)
    if linear:
        run.add("hints", linear)


def _costs(run: _Run, loaded: _Loaded):
    from onnxopt.analysis import node_costs

    start = time.perf_counter()
    try:
        return node_costs(loaded.model)
    except Exception as exc:
        logger.debug("node costs failed", exc_info=True)
        rule = "max-macs" if run.config.max_macs is not None else "hints"
        run.add(rule, f"cannot count MACs: {type(exc).__name__}: {_one_line(exc, 200)}", WARNING)
        return None
    finally:
        run.timings["mac-count"] = time.perf_counter() - start


# --------------------------------------------------------------------------- entry point


def display_name(source: str | os.PathLike) -> str:
    return STDIN_NAME if str(source) == "-" else str(source)


def check_model_file(source: str | os.PathLike, config: CheckConfig | None = None, *,
                     stdin: BinaryIO | None = None) -> list[Finding]:
    """All findings for one model file (``"-"`` reads ``stdin``, default the process's stdin).

    Never raises for a bad model: every problem is a :class:`Finding`. Raises
    :class:`UsageError` only for bad configuration (e.g. an unreadable reference file).
    """
    config = config or CheckConfig()
    run = _Run(display_name(source), config)
    start = time.perf_counter()
    try:
        _check(run, str(source), stdin)
    except _Stop:
        pass
    order = {rule: i for i, rule in enumerate(RULES)}
    run.findings.sort(key=lambda f: order[f.rule])  # stable: a rule's own order is kept
    logger.debug("%s: checked in %.3f s (%s)", run.display, time.perf_counter() - start,
                 ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in run.timings.items() if v >= 0.001))
    return run.findings


def _check(run: _Run, source: str, stdin: BinaryIO | None) -> None:
    config = run.config
    loaded = _load(run, source, stdin)
    run.rule("size", _rule_size_warning, loaded)
    run.rule("ir-version", _rule_ir_version, loaded)
    run.rule("opset-version", _rule_opset_version, loaded)
    run.rule("checker", _rule_checker, loaded)
    structurally_ok = not (run.failed_rules & {"checker", "ir-version", "opset-version"})
    if structurally_ok:
        run.rule("shape-inference", _rule_shape_inference, loaded)
    node_duplicates = run.rule("duplicate-names", _rule_duplicate_names, loaded) or []
    run.rule("node-names", _rule_node_names, loaded)
    run.rule("input-shadowed", _rule_input_shadowed, loaded)
    run.rule("unused-initializer", _rule_unused_initializer, loaded)
    run.rule("non-finite-weights", _rule_non_finite_weights, loaded)
    session = None
    session_tried = structurally_ok and "duplicate-names" not in run.failed_rules and config.enabled("ort-session")
    if session_tried:
        session = run.rule("ort-session", _rule_ort_session, loaded)
    if config.enabled("duplicate-names"):
        _judge_node_names(run, node_duplicates, session_tried, session is not None)
    run.rule("max-size", _rule_max_size, loaded)
    run.rule("max-params", _rule_max_params, loaded)
    want_macs = config.max_macs is not None and config.enabled("max-macs")
    want_hints = config.hints and config.enabled("hints")
    costs = _costs(run, loaded) if (want_macs or want_hints) and structurally_ok else None
    run.rule("max-macs", _rule_max_macs, loaded, costs)
    run.rule("opset-range", _rule_opset_range, loaded)
    if config.reference is not None and structurally_ok and not (run.failed_rules & {"ort-session", "duplicate-names"}):
        run.rule("reference", _rule_reference, loaded, session)
    if want_hints:
        run.rule("hints", _rule_hints, loaded, costs)


def summary_line(files: int, findings: Iterable[Finding]) -> str:
    findings = list(findings)
    errors = sum(1 for f in findings if f.level == ERROR)
    warnings = sum(1 for f in findings if f.level == WARNING)

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    return f"{plural(files, 'file')} checked: {plural(errors, 'error')}, {plural(warnings, 'warning')}"
