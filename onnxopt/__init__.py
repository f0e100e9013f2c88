"""onnxopt: a graph-rewriting optimizer for ONNX models whose every change is validated.

Public API (see README "Python API")::

    import onnxopt
    model, report = onnxopt.optimize("model.onnx", passes="simplify")
    onnxopt.save(model, "out.onnx")

Pass classes are importable by name, e.g. ``from onnxopt.passes import SimplifyPass``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from onnxopt.api import load, optimize, save  # noqa: E402
from onnxopt.passbase import PassContext  # noqa: E402
from onnxopt.report import PassReport, RunReport  # noqa: E402

__all__ = ["PassContext", "PassReport", "RunReport", "__version__", "load", "optimize", "save"]
