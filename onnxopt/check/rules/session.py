"""The ``ort-session`` rule: onnxruntime must be able to create a CPU session."""

from __future__ import annotations

from onnxopt.check.context import STRUCTURE, CheckRun, Loaded, ort_version
from onnxopt.check.findings import ERROR
from onnxopt.check.registry import rule
from onnxopt.check.text import error_text
from onnxopt.errors import InputError


def open_session(loaded: Loaded):
    """A CPU session of the file as it is (no IR clamp), native log output kept off the
    terminal; InputError wraps onnxruntime's refusal (its ``__cause__``)."""
    from onnxopt.runtime import create_session

    if loaded.source is not None:
        source: str | bytes = str(loaded.source)
    else:
        source = loaded.data if loaded.data is not None else loaded.model.SerializeToString()
    # No graph optimizations: loading is all that is checked, and constant folding can take
    # seconds on models whose weights are Constant nodes.
    return create_session(source, optimization="disable", log_level=4, quiet=True)


@rule("ort-session", ERROR, "onnxruntime cannot create a CPU session", requires=(*STRUCTURE, "duplicate-names"))
def ort_session(run: CheckRun) -> None:
    """onnxruntime cannot create a CPU session (graph optimizations off, native log output
    suppressed). Skipped after a structure error or a tensor defined twice: onnxruntime is
    never handed a structurally broken graph, and one root cause gives one finding."""
    run.session_tried = True
    try:
        run.session = open_session(run.loaded)
    except InputError as exc:
        run.add("ort-session", f"onnxruntime {ort_version()} cannot create a CPU session: "
                               f"{error_text(exc.__cause__ or exc)}")
