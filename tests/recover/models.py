"""Tiny seeded models and data for the recovery tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import make_model
from tests.passes.models import chain_model, run_pass

HW = (8, 8)


def teacher_model() -> onnx.ModelProto:
    """x [1, 16, 8, 8] → (Conv 3×3 → Relu) × 3: conv0 16→32, conv1 32→32, conv2 32→16."""
    return chain_model(channels=(16, 32, 32, 16), hw=HW)


def decomposed(teacher: onnx.ModelProto, rank: int = 6) -> onnx.ModelProto:
    """The teacher after a low-rank Tucker-2 pass (every conv marked onnxopt.decomposed)."""
    student, _ = run_pass("tucker", teacher, rank=rank, round=1, min_in_channels=8)
    return student


def batches(count: int = 8, seed: int = 3):
    """A callable returning a fresh iterator of ``count`` one-sample batches."""
    def stream():
        rng = np.random.default_rng(seed)
        for _ in range(count):
            yield {"x": rng.standard_normal((1, 16, *HW)).astype(np.float32)}

    return stream


def correlated_batches(count: int = 16, seed: int = 3):
    """Like :func:`batches`, with the 16 input channels mixed from 4 (real data is correlated:
    rounding errors along directions the data does not excite cost nothing, so they can be traded)."""
    def stream():
        rng = np.random.default_rng(seed)
        mix = np.random.default_rng(7).standard_normal((16, 4)).astype(np.float32)
        for _ in range(count):
            z = rng.standard_normal((1, 4, *HW)).astype(np.float32)
            noise = 0.05 * rng.standard_normal((1, 16, *HW))
            yield {"x": (np.einsum("ck,nkhw->nchw", mix, z) + noise).astype(np.float32)}

    return stream


def quantized(model: onnx.ModelProto, data) -> onnx.ModelProto:
    """``model`` through the int8 pass (QDQ, per-channel int8 weights), calibrated on ``data``."""
    from onnxopt.passbase import PassContext

    out, _ = run_pass("int8", model, context=PassContext(calibration=data, calibration_description="synthetic"),
                      library_check="false", bias_correction="false")
    return out


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def with_node_between(model: onnx.ModelProto, op_type: str, after: str) -> onnx.ModelProto:
    """A copy with ``op_type`` (one input, one output) inserted after value ``after``."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for node in result.graph.node:
        node.input[:] = [f"{after}_{op_type}" if name == after else name for name in node.input]
    index = next(i for i, n in enumerate(result.graph.node) if after in n.output)
    result.graph.node.insert(index + 1, helper.make_node(op_type, [after], [f"{after}_{op_type}"], name=op_type))
    return result


def shared_weight_model() -> onnx.ModelProto:
    """x → Conv(W) → Relu → Conv(W) → y: one initializer read by two nodes."""
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((4, 4, 3, 3)) / 6).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W"], ["y"], name="c2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])],
                              [numpy_helper.from_array(W, "W")])
    return make_model(graph)
