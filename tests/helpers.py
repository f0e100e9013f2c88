"""Test helpers shared by every test module: tiny models, onnxruntime runs, closeness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_MODELS = SHARED / "models"
SHARED_IMAGES = SHARED / "images"
SAMPLES = REPO / "samples"
# onnx.helper.make_model writes IR 14 in onnx 1.23; onnxruntime 1.31 loads up to 13.
TEST_IR_VERSION = 10


def requires_shared(*names: str):
    """Skip (with the reason) when ../shared or one of the named files is missing."""
    missing = [n for n in names if not (SHARED / n).exists()] if SHARED.exists() else ["../shared"]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (real models/images beside the repo)")


def shared_model(name: str) -> Path:
    path = SHARED_MODELS / name
    if not path.exists():
        pytest.skip(f"needs ../shared/models/{name}")
    return path


def parse_model(text: str, ir_version: int = TEST_IR_VERSION) -> onnx.ModelProto:
    """A model from ONNX text syntax, with an IR version onnxruntime loads."""
    model = onnx.parser.parse_model(text)
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def make_model(graph: onnx.GraphProto, opset: int = 17, ir_version: int = TEST_IR_VERSION) -> onnx.ModelProto:
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed: int = 0, dynamic: int = 1) -> dict[str, np.ndarray]:
    """Standard-normal float inputs; dynamic dims set to ``dynamic``."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else dynamic for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    norm = np.linalg.norm(reference)
    return float(np.linalg.norm(reference - candidate) / (norm if norm > 0 else 1.0))


def assert_models_close(reference: onnx.ModelProto, candidate: onnx.ModelProto,
                        feeds: dict[str, np.ndarray] | None = None, rtol: float = 1e-4) -> None:
    """The one "numerically equal within tolerance" check: relative L2 error per output."""
    feeds = feeds if feeds is not None else random_feeds(reference)
    ref_out = run_ort(reference, feeds)
    cand_out = run_ort(candidate, feeds)
    assert len(ref_out) == len(cand_out)
    for index, (a, b) in enumerate(zip(ref_out, cand_out)):
        assert a.shape == b.shape, f"output {index}: shape {a.shape} != {b.shape}"
        error = relative_error(a, b)
        assert error <= rtol, f"output {index}: relative error {error:.3g} > {rtol}"


def cli(*args: str, input: bytes | None = None, stdin=None, cwd=None, timeout: float = 300):
    """Run the real command line (``python -m onnxopt``) and capture bytes."""
    import subprocess
    import sys

    kwargs = {"input": input} if stdin is None else {"stdin": stdin}
    return subprocess.run(
        [sys.executable, "-m", "onnxopt", *args],
        capture_output=True, cwd=cwd, timeout=timeout, **kwargs,
    )


CONV_MODEL_TEXT = """
<ir_version: 8, opset_import: ["" : 17], producer_name: "onnxopt-tests", doc_string: "tiny conv">
conv_net (float[N,3,8,8] x) => (float[N,4,8,8] y) {
  y = Conv <pads = [1, 1, 1, 1]> (x, w)
}
"""


def tiny_conv_model(seed: int = 0) -> onnx.ModelProto:
    """Conv 3→4, 3×3, weight as initializer; metadata and doc string set for round-trip tests."""
    model = onnx.parser.parse_model(CONV_MODEL_TEXT)  # checked once the weight is added
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    onnx.helper.set_model_props(model, {"author": "tests"})
    onnx.checker.check_model(model)
    return model
