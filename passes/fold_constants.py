"""``fold-constants``: move weights held in ``Constant`` nodes into initializers.

Lossless. Several real exports (e.g. PaddlePaddle's PP-OCR via paddle2onnx) keep every
convolution weight in a ``Constant`` node, and onnxsim leaves them there. Passes that
rewrite weights handle both forms, but initializers are what most tools (quantizers,
external-data savers, viewers) expect. Small constants (shapes, axes: fewer than
``min_elements`` elements) stay as nodes, as shape-manipulating subgraphs want them.
General constant folding is onnxsim's job (the ``simplify`` pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from onnxopt.passbase import OptimizerPass, option
from onnxopt.registry import register


@dataclass(frozen=True)
class FoldConstantsOptions:
    min_elements: int = option(16, "lift Constant nodes with at least this many elements")

    def __post_init__(self):
        if self.min_elements < 1:
            raise ValueError("min_elements must be at least 1")


@register
class FoldConstantsPass(OptimizerPass, ir.passes.InPlacePass):
    name = "fold-constants"
    summary = "move weights held in Constant nodes into initializers"
    Options = FoldConstantsOptions
    lossless = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = {n.outputs[0].name for n in model.graph if n.op_type == "Constant" and n.domain == ""}
        result = LiftConstantsToInitializersPass(
            lift_all_constants=False, size_limit=self.options.min_elements
        )(model)
        after = {n.outputs[0].name for n in model.graph if n.op_type == "Constant" and n.domain == ""}
        for name in sorted(before - after):
            self.report.apply(name)
        self.report.figures["constants_left"] = len(after)
        return ir.passes.PassResult(model, bool(result.modified))
