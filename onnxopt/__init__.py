"""onnxopt: a graph-rewriting optimizer for ONNX models whose every change is validated.

Public API (see README "Python API")::

    import onnxopt
    model, report = onnxopt.optimize("model.onnx", passes="simplify")
    onnxopt.save(model, "out.onnx")
    result = onnxopt.run("model.onnx", "simplify,int8", output="out.onnx", data="images/")  # as the CLI

Pass classes are importable by name, e.g. ``from onnxopt.passes import SimplifyPass``.
The names below are imported on first use, so that ``import onnxopt`` (and the CLI's
start-up, which every pre-commit hook run pays) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "optimize": "onnxopt.api",
    "run": "onnxopt.api",
    "load": "onnxopt.api",
    "save": "onnxopt.api",
    "PassContext": "onnxopt.passbase",
    "PassReport": "onnxopt.report",
    "RunReport": "onnxopt.report",
}

__all__ = ["PassContext", "PassReport", "RunReport", "__version__", "load", "optimize", "run", "save"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'onnxopt' has no attribute {name!r}")
