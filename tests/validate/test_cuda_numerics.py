"""CUDA sessions: the pip-installed CUDA libraries are found, and float32 stays float32.

The first two tests run anywhere (onnxruntime is stubbed); the last runs on a real GPU
only (``-m cuda``), where it is the check that TF32 is off in validation sessions.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import runtime as prov
from onnxopt.analysis.inputs import model_inputs, resolve_shapes
from onnxopt.validate.compare import compare_providers
from onnxopt.validate.sources import random_source
from onnxopt.validate.tolerances import Tolerances

CUDA_OK, CUDA_REASON = prov.cuda_status()


def test_cuda_probe_preloads_libraries_and_keeps_stdout_clean(monkeypatch, capsys):
    calls = []

    def preload_dlls(*args, **kwargs):
        calls.append(True)
        print("Failed to load libcublasLt.so.13: not found")  # what onnxruntime prints

    monkeypatch.setattr(ort, "preload_dlls", preload_dlls, raising=False)
    prov.cuda_status.cache_clear()
    try:
        prov.cuda_status()
    finally:
        prov.cuda_status.cache_clear()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert calls, "the probe must preload pip's CUDA libraries before creating its session"
    assert capsys.readouterr().out == ""  # stdout may carry a model (-o -)


@pytest.mark.parametrize(("tf32", "expected"), [(False, "0"), (True, "1")])
def test_cuda_sessions_run_float32_unless_tf32_is_asked_for(monkeypatch, tf32, expected):
    seen = {}

    class FakeSession:
        def __init__(self, source, sess_options=None, providers=None):
            seen["providers"] = providers

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(prov, "cuda_status", lambda: (True, "CUDA available"))
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    prov.create_session(b"model", "cuda", tf32=tf32)
    cuda_entry = seen["providers"][0]
    assert cuda_entry == ("CUDAExecutionProvider", {"use_tf32": expected})


def _conv_stack(channels: int = 64, size: int = 56, layers: int = 4) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, name = [], [], "x"
    for i in range(layers):
        weight = (rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("Conv", [name, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        name = f"r{i}"
    graph = helper.make_graph(
        nodes, "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, size, size])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_OK, reason=f"CUDA does not load: {CUDA_REASON}")
def test_cpu_and_cuda_agree_within_the_lossless_gate():
    model = _conv_stack()
    inputs = model_inputs(model)
    source = random_source(inputs, resolve_shapes(inputs, {}), 4, seed=0)
    result = compare_providers(model, source, ["cpu", "cuda"])
    assert result.failures(Tolerances(max_rel_error=1e-4)) == []
