"""simplify on every real model in ../shared and every light_*.onnx the onnx package ships.

The optimized model must match the original within 1e-4 relative error on onnxruntime CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxopt
from tests.helpers import SHARED_MODELS, assert_models_close

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SHARED = sorted(SHARED_MODELS.glob("*.onnx")) if SHARED_MODELS.exists() else []
LIGHT_MODELS = sorted(LIGHT.glob("light_*.onnx"))


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Seeded inputs; dynamic dims: batch 1, others 64 (a multiple of 32 for detectors)."""
    rng = np.random.default_rng(0)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (1 if i == 0 else 64)
                for i, d in enumerate(value.type.tensor_type.shape.dim)]
        feeds[value.name] = rng.random(dims, dtype=np.float32)
    return feeds


def _check(path: Path) -> None:
    original = onnxopt.load(path)
    optimized, report = onnxopt.optimize(original, "simplify,fold-constants")
    assert report.passes[0].skipped_reason is None, report.passes[0].skipped_reason
    assert_models_close(original, optimized, _feeds(original), rtol=1e-4)


@pytest.mark.skipif(not SHARED, reason="needs ../shared/models (real models beside the repo)")
@pytest.mark.parametrize("path", SHARED, ids=lambda p: p.stem)
def test_simplify_real_model(path):
    _check(path)


@pytest.mark.skipif(not LIGHT_MODELS, reason="this onnx build ships no light_*.onnx models")
@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.stem)
def test_simplify_onnx_light_model(path):
    _check(path)
