"""Tests for onnxopt.runtime: spec parsing, the quiet CUDA probe, sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxopt import runtime as prov
from onnxopt.errors import InputError, UsageError
from onnxopt.runtime import (
    ORT_PROVIDER,
    ProviderChoice,
    create_session,
    cuda_status,
    resolve_providers,
)

CUDA_OK, CUDA_REASON = cuda_status()
needs_no_cuda = pytest.mark.skipif(CUDA_OK, reason="CUDA loads on this machine")
needs_cuda = pytest.mark.skipif(not CUDA_OK, reason=f"CUDA does not load: {CUDA_REASON}")
cuda = pytest.mark.cuda


def _add_model(ir_version: int = 8) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir_version)


# --- resolve_providers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("cpu", ["cpu"]), (" CPU ", ["cpu"]), ("cpu,cpu", ["cpu"])],
)
def test_resolve_cpu_specs(spec, expected):
    choice = resolve_providers(spec)
    assert isinstance(choice, ProviderChoice)
    assert choice.providers == expected
    assert choice.notes == []


@pytest.mark.parametrize("spec", ["gpu", "tensorrt", "cpu,rocm", "", " , ", "auto,cpu"])
def test_resolve_bad_spec_names_valid_ones(spec):
    with pytest.raises(UsageError) as info:
        resolve_providers(spec)
    message = str(info.value)
    assert "\n" not in message
    for valid in ("cpu", "cuda", "auto"):
        assert valid in message


@needs_no_cuda
def test_auto_without_cuda_is_cpu_with_note():
    choice = resolve_providers("auto")
    assert choice.providers == ["cpu"]
    assert len(choice.notes) == 1
    assert "CUDA" in choice.notes[0]
    assert CUDA_REASON in choice.notes[0]
    assert "\n" not in choice.notes[0]


@cuda
@needs_cuda
def test_auto_with_cuda():
    assert resolve_providers("auto").providers == ["cpu", "cuda"]


@needs_no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cpu,cuda"])
def test_explicit_cuda_unavailable_is_input_error(spec):
    with pytest.raises(InputError) as info:
        resolve_providers(spec)
    message = str(info.value)
    assert message.startswith("CUDA requested but unavailable: ")
    assert "\n" not in message
    assert len(message) < 200


# --- cuda_status -----------------------------------------------------------------------


def test_cuda_status_shape():
    ok, reason = cuda_status()
    assert isinstance(ok, bool)
    assert isinstance(reason, str) and reason
    assert "\n" not in reason
    assert "\x1b" not in reason  # no terminal colour codes


def test_cuda_probe_prints_nothing(capfd):
    cuda_status.cache_clear()
    try:
        capfd.readouterr()
        cuda_status()
        out, err = capfd.readouterr()
        assert out == ""
        assert err == ""
    finally:
        cuda_status.cache_clear()
        cuda_status()


def test_cuda_status_is_cached():
    assert cuda_status() is cuda_status()


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        (
            (
                "\x1b[1;31m2026 [E:onnxruntime:Default, x.cc:1 f] Failed to load library "
                "/a/libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: "
                "cannot open shared object file: No such file or directory\n\x1b[m"
            ),
            "libcublasLt.so.13 not found",
        ),
        (
            (
                "[W:onnxruntime] Failed to create CUDAExecutionProvider. "
                "Require cuDNN 9.* and CUDA 13.*. Please install"
            ),
            "CUDAExecutionProvider failed to load (Require cuDNN 9.* and CUDA 13.*)",
        ),
        ("", "CUDAExecutionProvider did not load (session fell back to CPU)"),
    ],
)
def test_reason_line(printed, expected):
    assert prov._reason_line(printed, in_build=True) == expected


def test_reason_line_not_in_build():
    assert "no CUDAExecutionProvider" in prov._reason_line("", in_build=False)


def test_probe_model_loads_on_cpu():
    """The probe model must be readable by this onnxruntime (IR version clamped)."""
    model = onnx.load_from_string(prov._probe_model_bytes())
    assert model.ir_version <= 13
    session = create_session(prov._probe_model_bytes())
    (y,) = session.run(None, {"x": np.array([1.5], dtype=np.float32)})
    assert y.tolist() == [1.5]


# --- create_session --------------------------------------------------------------------


def test_create_session_from_bytes_and_path(tmp_path):
    model = _add_model()
    path = tmp_path / "add.onnx"
    onnx.save(model, path)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for source in (model.SerializeToString(), str(path), path):
        session = create_session(source, threads=1)
        assert session.get_providers() == [ORT_PROVIDER["cpu"]]
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], 2 * x)


def test_create_session_threads_option_is_applied():
    session = create_session(_add_model().SerializeToString(), threads=1)
    assert session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize(
    "model",
    [
        b"this is not an onnx model",
        _add_model(ir_version=99).SerializeToString(),
    ],
    ids=["garbage", "ir-too-new"],
)
def test_create_session_bad_model_is_input_error(model):
    with pytest.raises(InputError) as info:
        create_session(model)
    message = str(info.value)
    assert message.startswith("onnxruntime cannot load the model")
    assert "\n" not in message


def test_create_session_missing_file_is_input_error(tmp_path):
    with pytest.raises(InputError):
        create_session(tmp_path / "missing.onnx")


def test_create_session_bad_provider_and_threads():
    data = _add_model().SerializeToString()
    with pytest.raises(UsageError):
        create_session(data, provider="gpu")
    with pytest.raises(UsageError):
        create_session(data, threads=0)


@needs_no_cuda
def test_create_session_cuda_unavailable():
    with pytest.raises(InputError, match="CUDA requested but unavailable"):
        create_session(_add_model().SerializeToString(), provider="cuda")


def test_create_session_profiling(tmp_path):
    session = create_session(
        _add_model().SerializeToString(),
        enable_profiling=True,
        profile_prefix=str(tmp_path / "trace"),
    )
    session.run(None, {"x": np.ones((2, 3), dtype=np.float32)})
    trace = session.end_profiling()
    assert Path(trace).name.startswith("trace")
    assert Path(trace).exists()
    Path(trace).unlink()


# --- first_line and the session options every caller shares -------------------------


def test_first_line_strips_onnxruntime_decoration():
    text = ("\x1b[31m[ONNXRuntimeError] : 10 : INVALID_GRAPH : /src/onnxruntime/core/graph.cc:123 "
            "void Graph::Resolve() Node (x) has   input size 3\nsecond line")
    assert prov.first_line(RuntimeError(text)) == "Node (x) has input size 3"
    assert prov.first_line(ValueError("")) == "ValueError"
    assert prov.first_line("x" * 400).endswith("…") and len(prov.first_line("x" * 400)) == 300


def test_create_session_takes_a_model_proto_with_a_newer_ir_version():
    model = _add_model()
    model.ir_version = 99  # newer than any onnxruntime: clamped on a copy
    session = create_session(model, optimization="disable")
    assert [i.name for i in session.get_inputs()]
    assert model.ir_version == 99


def test_create_session_unknown_optimization_level_is_usage_error():
    with pytest.raises(UsageError, match="optimization level"):
        create_session(_add_model(), optimization="fast")


def test_one_line_keeps_what_follows_a_line_break():
    text = "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x\n index: 1 Got: 3 Expected: 4"
    assert prov.one_line(RuntimeError(text)) == "Got invalid dimensions for input: x index: 1 Got: 3 Expected: 4"
    assert prov.first_line(RuntimeError(text)) == "Got invalid dimensions for input: x"


def test_a_model_onnxopt_built_that_does_not_load_is_not_the_inputs_fault():
    """built=True: a RuntimeError (the pass's failure, exit 3), not an InputError (exit 2)."""
    model = _add_model()
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(InputError):
        create_session(model)
    with pytest.raises(RuntimeError) as caught:
        create_session(model, built=True)
    assert not isinstance(caught.value, InputError) and "NoSuchOp" in str(caught.value)
