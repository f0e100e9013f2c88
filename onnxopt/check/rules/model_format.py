"""Rules about the file and its format: loading, size, external data, IR and opset
versions, the onnx checker and strict shape inference."""

from __future__ import annotations

import functools
import re
import tempfile
from pathlib import Path

from onnxopt.check.context import STRUCTURE, CheckRun, ort_version
from onnxopt.check.findings import ERROR, WARNING
from onnxopt.check.loading import fits_in_protobuf
from onnxopt.check.registry import reported_while_loading, rule
from onnxopt.check.text import error_text, human_bytes
from onnxopt.errors import InputError

# Weights inside the .onnx file this close to the protobuf limit leave no room to grow.
SIZE_WARNING_BYTES = 2**31 - 2**26

reported_while_loading("load-error", ERROR, "the file cannot be read as an ONNX model")


@rule("size", ERROR, "over the 2 GiB protobuf limit (error) or close to it (warning)")
def size(run: CheckRun) -> None:
    """The error (the file is over the 2 GiB protobuf limit: its weights must be stored as
    external data) is reported while loading; the warning here: the weights stored inside
    the file come within 64 MiB of that limit."""
    loaded = run.loaded
    inline = len(loaded.data) if loaded.data is not None else (
        loaded.source.stat().st_size if loaded.source is not None else 0
    )
    if inline > SIZE_WARNING_BYTES:
        run.add("size", f"the file is {human_bytes(inline)}, within 64 MiB of the 2 GiB protobuf limit: "
                        "any growth breaks it; save the weights as external data", WARNING)


reported_while_loading("external-data", ERROR, "external data missing, unreadable or outside the model's folder")


@rule("ir-version", ERROR, "IR version newer than the installed onnxruntime loads")
def ir_version(run: CheckRun) -> None:
    from onnxopt.runtime.ir_version import max_runtime_ir_version

    limit = max_runtime_ir_version()
    if run.model.ir_version > limit:
        run.add("ir-version", f"IR version {run.model.ir_version} is newer than onnxruntime "
                              f"{ort_version()} loads (max {limit}); set model.ir_version = {limit} "
                              "when exporting or saving")


@rule("opset-version", ERROR, "opset newer than the installed onnxruntime supports")
def opset_version(run: CheckRun) -> None:
    """An opset of any domain newer than the installed onnxruntime supports."""
    opsets = tuple(sorted((o.domain, int(o.version)) for o in run.model.opset_import))
    for domain, version, supported in _unsupported_opsets(opsets):
        run.add("opset-version", f"opset {domain} {version} is newer than onnxruntime {ort_version()} "
                                 f"supports (up to {supported})")


_OPSET_SUPPORT = re.compile(r"Opset (\d+) is under development.*?support for domain (\S+) is till opset (\d+)", re.S)


@functools.cache
def _unsupported_opsets(opsets: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int, int], ...]:
    """(domain, version, onnxruntime's max) for each opset import onnxruntime refuses.

    onnxruntime validates every opset import when it loads a model, so a one-node model
    importing the same opsets is an exact probe (no guessing of limits).
    """
    from onnx import TensorProto, helper

    from onnxopt.runtime import create_session
    from onnxopt.runtime.ir_version import max_runtime_ir_version

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
        probe.ir_version = max_runtime_ir_version()
        try:
            create_session(probe.SerializeToString(), optimization="disable", log_level=4, quiet=True)
            break
        except InputError as exc:
            match = _OPSET_SUPPORT.search(str(exc.__cause__ or exc))
            if not match:
                break  # some other refusal: ort-session reports it on the real model
            version, domain, supported = int(match.group(1)), match.group(2), int(match.group(3))
            key = "" if domain == "ai.onnx" else domain
            problems.append((domain, version, supported))
            if remaining.pop(key, None) is None:
                break
    return tuple(problems)


@rule("checker", ERROR, "onnx.checker.check_model fails")
def checker(run: CheckRun) -> None:
    """``onnx.checker.check_model``: structure, SSA, topological order, unknown ops, attributes."""
    import onnx

    try:
        if fits_in_protobuf(run.model):
            onnx.checker.check_model(run.model, full_check=False)
        else:
            onnx.checker.check_model(str(run.loaded.source), full_check=False)
    except (onnx.checker.ValidationError, ValueError) as exc:
        run.add("checker", error_text(exc))


@rule("shape-inference", ERROR, "strict ONNX shape/type inference fails", requires=STRUCTURE)
def shape_inference(run: CheckRun) -> None:
    """Strict shape and type inference; with ``checker`` this is onnx.checker's *full* check."""
    import onnx

    try:
        if fits_in_protobuf(run.model):
            onnx.shape_inference.infer_shapes(run.model, check_type=True, strict_mode=True)
        else:
            with tempfile.TemporaryDirectory(prefix="onnxopt-check-") as tmp:
                onnx.shape_inference.infer_shapes_path(
                    str(run.loaded.source), str(Path(tmp) / "inferred.onnx"), check_type=True, strict_mode=True
                )
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
        run.add("shape-inference", error_text(exc))
