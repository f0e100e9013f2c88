"""GraphModule: parameters keyed by initializer name, intermediates, exact write-back."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # the recover extra is part of the test environment: fail, never skip, without it
from onnx import helper, numpy_helper

from onnxopt.recover.interpreter import GraphModule, write_back  # noqa: E402
from onnxopt.runtime import create_session  # noqa: E402
from tests.recover.models import initializers, shared_weight_model, teacher_model  # noqa: E402


def test_forward_matches_onnxruntime_at_outputs_and_intermediates():
    model = teacher_model()
    x = np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype(np.float32)
    exposed = helper.make_model(model.graph, opset_imports=model.opset_import)
    exposed.ir_version = model.ir_version
    exposed.graph.output.extend([helper.ValueInfoProto(name="c0"), helper.ValueInfoProto(name="r1")])
    expected = create_session(exposed).run(["r2", "c0", "r1"], {"x": x})
    with torch.no_grad():
        got = GraphModule(model)({"x": torch.from_numpy(x)}, ["r2", "c0", "r1"])
    for name, reference in zip(["r2", "c0", "r1"], expected):
        np.testing.assert_allclose(got[name].numpy(), reference, rtol=1e-5, atol=1e-5)


def test_parameters_are_the_named_initializers_and_the_rest_are_constants():
    module = GraphModule(teacher_model(), {"W1", "B1"})
    assert module.parameter_names == ["W1", "B1"]  # in initializer order
    assert set(module.named_initializers()) == {"W1", "B1"}
    assert all(p.requires_grad for p in module.parameters())
    assert "W0" in module.constants and not module.constants["W0"].requires_grad
    with pytest.raises(ValueError, match="not initializers"):
        GraphModule(teacher_model(), {"nope"})


def test_write_back_round_trips_exactly():
    model = teacher_model()
    module = GraphModule(model, set(initializers(model)))
    assert write_back(model, module.named_initializers()).SerializeToString() == model.SerializeToString()


def test_write_back_keeps_names_order_dtypes_and_shapes():
    model = teacher_model()
    module = GraphModule(model, {"W1"})
    with torch.no_grad():
        module.named_initializers()["W1"].mul_(2.0)
    result = write_back(model, module.named_initializers())
    assert [t.name for t in result.graph.initializer] == [t.name for t in model.graph.initializer]
    assert [(t.data_type, list(t.dims)) for t in result.graph.initializer] == \
           [(t.data_type, list(t.dims)) for t in model.graph.initializer]
    before, after = initializers(model), initializers(result)
    np.testing.assert_array_equal(after["W1"], 2.0 * before["W1"])
    assert all(np.array_equal(after[k], before[k]) for k in before if k != "W1")
    assert result.graph.node == model.graph.node
    assert initializers(model)["W1"] is not after["W1"]  # the input model is untouched
    np.testing.assert_array_equal(initializers(model)["W1"], before["W1"])


def test_write_back_refuses_wrong_shapes_and_unknown_names():
    model = teacher_model()
    with pytest.raises(ValueError, match="shape"):
        write_back(model, {"W1": np.zeros((1, 2), np.float32)})
    with pytest.raises(ValueError, match="not initializers"):
        write_back(model, {"missing": np.zeros(1, np.float32)})


def test_write_back_keeps_a_float16_initializer_float16():
    model = teacher_model()
    index = next(i for i, t in enumerate(model.graph.initializer) if t.name == "B0")
    half = numpy_helper.to_array(model.graph.initializer[index]).astype(np.float16)
    model.graph.initializer[index].CopyFrom(numpy_helper.from_array(half, "B0"))
    result = write_back(model, {"B0": np.ones(half.shape, np.float32)})
    assert initializers(result)["B0"].dtype == np.float16


def test_a_shared_weight_stays_one_parameter():
    model = shared_weight_model()
    module = GraphModule(model, {"W"})
    assert len(list(module.parameters())) == 1
    x = torch.ones((1, 4, 5, 5))
    module({"x": x})["y"].sum().backward()
    assert module.named_initializers()["W"].grad is not None
    result = write_back(model, module.named_initializers())
    assert [t.name for t in result.graph.initializer] == ["W"]
