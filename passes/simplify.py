"""``simplify``: onnx-simplifier (onnxsim) — constant folding, shape-op elimination, fusions.

Lossless. Round-trips through protobuf because onnxsim works on ``onnx.ModelProto``.
When onnxsim cannot handle a model (unsupported op, >2 GB, internal error) the pass is
skipped with onnxsim's reason in the report; the run continues with the model unchanged.
onnxsim's bookkeeping ``metadata_props`` (``onnxsim.*``) are dropped — the input's own
metadata is kept — and its counts go into the report's figures instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

import onnx
import onnx_ir as ir

from onnxopt.irutil import PROTOBUF_LIMIT
from onnxopt.passbase import OptimizerPass, option
from onnxopt.registry import register
from onnxopt.runtime import first_line

logger = logging.getLogger(__name__)


def _graph_signature(graph: onnx.GraphProto) -> bytes:
    """The graph without its value_info: onnxsim rewrites inferred shapes on every run, which
    is not a change of the model."""
    copy = onnx.GraphProto()
    copy.CopyFrom(graph)
    del copy.value_info[:]
    return copy.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class SimplifyOptions:
    optimize: bool = option(True, "also run onnx-optimizer fusions (e.g. Conv+BatchNorm)")


@register
class SimplifyPass(OptimizerPass, ir.passes.FunctionalPass):
    name = "simplify"
    summary = "onnx-simplifier: fold constants, remove redundant shape ops, fuse Conv+BN"
    Options = SimplifyOptions
    lossless = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        proto = ir.to_proto(model)
        if proto.ByteSize() > PROTOBUF_LIMIT:
            self.report.skip_pass("onnxsim cannot handle models over 2 GB")
            return self._unchanged(model)
        before = _graph_signature(proto.graph)
        try:
            simplified = self._simplify(proto)
        except Exception as exc:  # onnxsim raises many kinds; any of them means "skip"
            self.report.skip_pass(f"onnxsim failed: {first_line(exc)}")  # its first line names the cause
            return self._unchanged(model)
        if simplified is None:
            return self._unchanged(model)
        self._restore_model_fields(proto, simplified)
        modified = _graph_signature(simplified.graph) != before
        self.report.figures.update(nodes_before=len(proto.graph.node), nodes_after=len(simplified.graph.node))
        if not modified:
            return self._unchanged(model)
        return ir.passes.PassResult(ir.from_proto(simplified), True)

    @staticmethod
    def _unchanged(model: ir.Model) -> ir.passes.PassResult:
        # A functional pass must return a new model object, even when nothing changed.
        return ir.passes.PassResult(model.clone(), False)

    def _simplify(self, proto: onnx.ModelProto) -> onnx.ModelProto | None:
        import onnxsim

        # onnxsim may print; route Python-level prints to the log (the CLI additionally
        # reserves file descriptor 1 for the model bytes when writing to stdout).
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            simplified, ok = onnxsim.simplify(
                proto, check_n=0, perform_optimization=self.options.optimize
            )
        if captured.getvalue().strip():
            logger.info("onnxsim: %s", captured.getvalue().strip())
        if not ok:
            self.report.skip_pass("onnxsim could not verify the simplified model")
            return None
        return simplified

    def _restore_model_fields(self, original: onnx.ModelProto, simplified: onnx.ModelProto) -> None:
        stats = {p.key: p.value for p in simplified.metadata_props if p.key.startswith("onnxsim.")}
        for key in ("removed_nodes.count", "changed_nodes.count"):
            if f"onnxsim.{key}" in stats:
                self.report.figures[key.replace(".count", "")] = int(stats[f"onnxsim.{key}"])
        del simplified.metadata_props[:]
        simplified.metadata_props.extend(original.metadata_props)
        simplified.ir_version = max(original.ir_version, simplified.ir_version)
        simplified.doc_string = original.doc_string
        simplified.producer_name = original.producer_name
        simplified.producer_version = original.producer_version
