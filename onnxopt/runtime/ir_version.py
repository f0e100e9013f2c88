"""Which ONNX IR version the installed onnxruntime loads, and models clamped to it.

onnx writes the newest IR version it knows (onnx 1.23's ``make_model`` writes 14), while
onnxruntime refuses versions above the one it was built for (1.31 stops at 13). The limit
is probed once with a one-node model; a model is clamped to
``max(its own version, the minimum its opsets need)`` capped at that limit, so that the
input's IR version is kept wherever onnxruntime can load it.
"""

from __future__ import annotations

import functools

import onnx

_OLDEST_PROBED = 7  # IR version of ONNX 1.3; every onnxruntime we support loads it


def probe_model(ir_version: int, opset: int = 13) -> bytes:
    """A one-node Identity model, serialized: what the probes of onnxruntime load."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "onnxopt_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version).SerializeToString()


@functools.cache
def max_runtime_ir_version() -> int:
    """The highest IR version the installed onnxruntime loads (probed once, quietly)."""
    import onnxruntime as ort

    # A bare session, like runtime.cuda_status's probe: create_session clamps models with
    # this module, which therefore does not import it (no import cycle).
    options = ort.SessionOptions()
    options.log_severity_level = 4
    for version in range(onnx.IR_VERSION, _OLDEST_PROBED - 1, -1):
        try:
            ort.InferenceSession(probe_model(version), options, providers=["CPUExecutionProvider"])
            return version
        except Exception:  # onnxruntime raises several unrelated types; any means "not this version"
            continue
    return _OLDEST_PROBED


def _min_ir_version_for(model: onnx.ModelProto) -> int:
    opsets = [(o.domain or "ai.onnx", o.version) for o in model.opset_import]
    try:
        return onnx.helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    except Exception:
        return 3


def clamp_ir_version(model: onnx.ModelProto, original_ir_version: int | None = None) -> None:
    """Keep the input's IR version where possible; never exceed what onnxruntime loads."""
    wanted = original_ir_version or model.ir_version
    # A pass may raise the opset (e.g. quantization); the IR version must follow it.
    wanted = max(wanted, _min_ir_version_for(model))
    model.ir_version = min(wanted, max_runtime_ir_version())


def runnable_bytes(model: onnx.ModelProto | bytes) -> bytes:
    """The model serialized as onnxruntime can load it: an IR version newer than it supports
    is clamped on a copy (the caller's model is untouched)."""
    if isinstance(model, bytes | bytearray):
        return bytes(model)
    if model.ir_version <= max_runtime_ir_version():
        return model.SerializeToString()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    clamp_ir_version(copy)
    return copy.SerializeToString()
