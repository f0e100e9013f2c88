"""The API leaves the caller's objects alone and tells passes the providers the run uses."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt import api
from onnxopt import runtime as prov
from onnxopt.passbase import PassContext
from onnxopt.runtime.scratch import contained, scratch_dir


def _conv(input_name: str):
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", [input_name, "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_a_context_can_be_reused_for_another_model():
    context = PassContext()
    onnxopt.optimize(_conv("x"), "int8:calib=random:samples=2", context=context)
    assert context.random_inputs is None and context.input_shapes is None  # not written into
    _, report = onnxopt.optimize(_conv("image"), "int8:calib=random:samples=2", context=context)
    assert report.passes[0].status == "modified", report.passes[0].skipped_reason


def test_passes_see_auto_resolved_to_the_providers_that_load(monkeypatch):
    model = _conv("x")
    source = api.data_source(model)
    monkeypatch.setattr(prov, "cuda_status", lambda: (True, "CUDA available"))
    context, _, _ = api.prepare_context(model, "simplify", source, has_data=False, providers="auto")
    assert context.providers == ("cpu", "cuda")
    monkeypatch.setattr(prov, "cuda_status", lambda: (False, "libcublasLt.so.13 not found"))
    context, _, _ = api.prepare_context(model, "simplify", source, has_data=False, providers="auto")
    assert context.providers == ("cpu",)


def test_contained_blocks_of_two_threads_do_not_trip_over_each_other(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work():
        try:
            start.wait()
            for _ in range(50):
                with scratch_dir("onnxopt-test-") as folder, contained(folder):
                    with open("scratch.txt", "w") as handle:  # lands in this thread's folder
                        handle.write("x")
                    time.sleep(0.001)  # let the other thread run inside its own block meanwhile
                    assert os.getcwd() == str(folder) and (folder / "scratch.txt").exists()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert os.getcwd() == str(tmp_path) and os.listdir(tmp_path) == []
