"""Accuracy recovery: train the layers a pipeline changed to match the original model.

Engine: a small ONNX → torch interpreter (:mod:`.interpreter`, ops in :mod:`.ops`,
:mod:`.spatial`, :mod:`.quantization`) keyed by initializer name, so writing the trained
values back is exact by construction — same initializers, names, dtypes and shapes; the
graph is never re-exported. onnx2torch was the alternative and was rejected: it unties
shared weights, renames modules and initializers (no reverse mapping; Gemm weights stored
transposed), regroups multi-output nodes, imports torchvision (the CPU torch wheel with
the available torchvision fails: ``torchvision::nms does not exist``), needed fixes for
Constant-node weights, ``auto_pad=SAME_*`` and ``''`` inputs, and has had no release
since 2024-08. The teacher's tensors come from onnxruntime, so only the student runs here.

torch is an optional extra (``pip install "onnxopt[recover]"``), imported only when a
public name (:func:`distill`, :func:`changed_layers`, …) is first used; :func:`available`
says whether it is installed.
"""

from __future__ import annotations

import importlib
from typing import Any

INSTALL = 'pip install "onnxopt[recover]"'

_LAZY = {
    "distill": "distillation", "DistillOptions": "distillation", "DistillResult": "distillation",
    "GraphModule": "interpreter", "unsupported_ops": "interpreter", "write_back": "interpreter",
    "changed_layers": "scope", "ChangedLayer": "scope", "trainable_initializers": "scope",
}

__all__ = ["INSTALL", "available", *_LAZY]


def available() -> tuple[bool, str]:
    """(True, "torch <version>") when the engine can run, else (False, why and how to install)."""
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken wheel raising OSError
        return False, f"recovery needs PyTorch ({type(exc).__name__}: {exc}); install it with: {INSTALL}"
    return True, f"torch {torch.__version__}"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxopt.recover' has no attribute {name!r}")
    return getattr(importlib.import_module(f"onnxopt.recover.{module}"), name)
