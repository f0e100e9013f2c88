"""Moved to :mod:`onnxopt.analysis.blocks` (labels, hint) and :mod:`onnxopt.bench.profile`
(block times)."""

from __future__ import annotations

# TEMP-SHIM (lead removes): importers outside validate/bench still name this module.
from onnxopt.analysis.blocks import (  # noqa: F401  # TEMP-SHIM (lead removes)
    ATTENTION,
    LINEAR_OPS,
    MLP,
    block_labels,
    linear_candidates_hint,
    name_label,
    structural_labels,
)
from onnxopt.bench.profile import block_times, describe_block_times  # noqa: F401  # TEMP-SHIM (lead removes)
