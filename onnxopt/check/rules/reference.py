"""The ``reference`` rule: outputs on known inputs must match the expected ones.

The reference file (``.npz``) holds the model inputs under keys ``input:<name>`` and the
expected outputs under ``output:<name>``; the inputs are fed as they are, in one run, and
every listed output is compared with :mod:`onnxopt.validate.metrics` (default gate:
relative L2 error ≤ 1e-4).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxopt.check.context import STRUCTURE, CheckRun
from onnxopt.check.findings import ERROR
from onnxopt.check.registry import rule
from onnxopt.check.rules.session import open_session
from onnxopt.check.text import error_text, quoted_names
from onnxopt.errors import InputError, UsageError


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
        raise UsageError(f"reference file '{path}' is not a readable .npz: {error_text(exc, 160)}") from None
    if not outputs:
        raise UsageError(f"reference file '{path}' has no 'output:<name>' arrays")
    return Reference(Path(path), inputs, outputs)


_ORT_NUMPY = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


@rule("reference", ERROR, "outputs differ from the --reference file beyond the tolerances",
      requires=(*STRUCTURE, "ort-session", "duplicate-names"), after=("duplicate-node-names",))
def reference(run: CheckRun) -> None:
    """Outputs on the ``reference`` inputs differ from the expected ones beyond the
    tolerances. Needs a session: skipped where onnxruntime refused the model."""
    if run.config.reference is None:
        return
    from onnxopt.validate.metrics import MetricsAccumulator
    from onnxopt.validate.tolerances import check_gate

    ref = load_reference(run.config.reference)
    session = run.session
    if session is None:
        try:
            session = open_session(run.loaded)
        except InputError as exc:
            run.add("reference", f"cannot run the model: {error_text(exc.__cause__ or exc)}")
            return
    feeds, problems = _feeds(ref, session)
    if problems:
        for problem in problems:
            run.add("reference", problem)
        return
    names = [o.name for o in session.get_outputs() if o.name in ref.outputs]
    try:
        values = _run_quietly(session, names, feeds)
    except Exception as exc:
        run.add("reference", f"running the model on the inputs of {ref.path.name} failed: {error_text(exc)}")
        return
    accumulator = MetricsAccumulator(names)
    accumulator.update({n: ref.outputs[n] for n in names}, dict(zip(names, values)))
    for failure in check_gate(accumulator.result(), run.config.effective_tolerances()):
        run.add("reference", f"{failure} (against {ref.path.name})")


def _feeds(ref: Reference, session) -> tuple[dict[str, np.ndarray], list[str]]:
    """The reference inputs as the session takes them, and what does not fit the model."""
    ref_name = ref.path.name
    model_inputs = {i.name: i for i in session.get_inputs()}
    model_outputs = [o.name for o in session.get_outputs()]
    problems = []
    unknown_inputs = [n for n in ref.inputs if n not in model_inputs]
    if unknown_inputs:
        problems.append(f"{ref_name} has input(s) {quoted_names(unknown_inputs)} the model does not have "
                        f"(inputs: {quoted_names(list(model_inputs), 8)})")
    missing = [n for n in model_inputs if n not in ref.inputs]
    if missing:
        problems.append(f"{ref_name} lacks model input(s) {quoted_names(missing)} (keys 'input:<name>')")
    unknown_outputs = [n for n in ref.outputs if n not in model_outputs]
    if unknown_outputs:
        problems.append(f"{ref_name} has output(s) {quoted_names(unknown_outputs)} the model does not produce "
                        f"(outputs: {quoted_names(model_outputs, 8)})")
    feeds = {}
    for name, array in ref.inputs.items():
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
    return feeds, problems


def _run_quietly(session, names: list[str], feeds: dict[str, np.ndarray]) -> list:
    """Run the session with onnxruntime's native log output kept off the terminal (a
    pre-commit hook prints findings, not log spam)."""
    from onnxopt.runtime import capture_fd2

    with capture_fd2():
        return session.run(names, feeds)
