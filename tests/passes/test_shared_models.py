"""Integration: every real model in ../shared/models goes through each decomposition pass
with default options without an error; the
output passes the ONNX checker and runs in onnxruntime with the original's output shapes,
and every skipped layer has a reason."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest

from onnxopt.passbase import PassContext
from tests.helpers import SHARED_MODELS, run_ort
from tests.passes.models import run_pass

MODELS = sorted(p.name for p in SHARED_MODELS.glob("*.onnx")) if SHARED_MODELS.exists() else []
PASSES = {"spatial": {}, "tucker": {}, "cp": {}, "separable": {}, "svd": {}}

pytestmark = [pytest.mark.shared, pytest.mark.skipif(not MODELS, reason="needs ../shared/models (real models beside the repo)")]


@functools.cache
def load(name: str) -> onnx.ModelProto:
    return onnx.load(SHARED_MODELS / name)


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs; dynamic dims: batch 1, others 64 (a multiple of 32, enough for every stride)."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (1 if i == 0 else 64)
                for i, d in enumerate(value.type.tensor_type.shape.dim)]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


@functools.cache
def reference_outputs(name: str):
    model = load(name)
    return [o.shape for o in run_ort(model, feeds_for(model))]


@pytest.mark.parametrize("pass_name", list(PASSES))
@pytest.mark.parametrize("model_name", MODELS)
def test_default_options_on_shared_model(model_name, pass_name):
    model = load(model_name)
    out, opt = run_pass(pass_name, model, **PASSES[pass_name])  # also runs onnx.checker
    for skipped in opt.report.skipped:
        assert isinstance(skipped["reason"], str) and skipped["reason"].strip(), skipped
    for applied in opt.report.applied:
        assert applied["macs_after"] < applied["macs_before"]
        assert applied["ranks"] and 0 <= applied["rel_error"] < 1
    assert opt.report.modified == bool(opt.report.applied)
    outputs = run_ort(out, feeds_for(model))
    assert [o.shape for o in outputs] == reference_outputs(model_name)
    assert all(np.all(np.isfinite(o)) for o in outputs if o.dtype.kind == "f")


def test_refit_on_a_real_model():
    name = "resnet20_cifar10.onnx"
    if name not in MODELS:
        pytest.skip(f"needs ../shared/models/{name}")
    model = load(name)
    data = [feeds_for(model, seed) | {"input": np.abs(feeds_for(model, seed)["input"])} for seed in range(2)]
    ctx = PassContext(calibration=lambda: iter(data))
    out, opt = run_pass("tucker", model, rank=0.5, round=1, refit=True, context=ctx)
    assert opt.report.figures["refit"]["layers_refit"] >= 1
    assert all(a["refit"]["residual_after"] <= a["refit"]["residual_before"] for a in opt.report.applied
               if a["refit"].get("applied"))
    run_ort(out, data[0])
