"""onnxopt.validate.compare: two models, or one model on two providers, on the same data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import runtime as providers_module
from onnxopt.analysis.inputs import model_inputs, resolve_shapes
from onnxopt.errors import InputError, UsageError
from onnxopt.runtime import cuda_status
from onnxopt.validate import compare as compare_module
from onnxopt.validate.compare import compare_models, compare_providers
from onnxopt.validate.data import open_data
from onnxopt.validate.sources import random_source
from onnxopt.validate.tolerances import Tolerances
from tests.helpers import make_model

WEIGHT = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


def linear(weight=WEIGHT, x="x", y="y", batch="N", input_type=TensorProto.FLOAT) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["xf", "w"], [y])]
    if input_type == TensorProto.FLOAT:
        nodes[0].input[0] = x
    else:
        nodes.insert(0, helper.make_node("Cast", [x], ["xf"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info(x, input_type, [batch, 4])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [batch, 3])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    return make_model(graph)


def source_for(model, samples=6, seed=0):
    inputs = model_inputs(model)
    return random_source(inputs, resolve_shapes(inputs, {}), samples, seed)


def test_identical_models_have_zero_error():
    model = linear()
    result = compare_models(model, linear(), source_for(model), providers=["cpu"], batch_size=4)
    (row,) = result.rows
    m = row.metrics
    assert (row.provider, row.reference_provider, m.name) == ("cpu", "cpu", "y")
    assert m.samples == 6 and m.max_abs_error == 0.0 and m.rel_l2_error == 0.0 and m.top1_agreement == 1.0
    assert result.samples == 6 and result.batch_size == 4
    assert result.failures(Tolerances(max_rel_error=0.0)) == []


def test_scaled_weight_gives_its_relative_error():
    # y' = x·(1.01 W) = 1.01 y: relative L2 error 0.01, cosine 1, agreement 1 (hand-computed).
    model = linear()
    result = compare_models(model, linear(WEIGHT * 1.01), source_for(model, 9), providers=["cpu"], batch_size=2)
    m = result.metrics[0]
    assert m.rel_l2_error == pytest.approx(0.01, rel=1e-4)
    assert m.cosine_min == pytest.approx(1.0, abs=1e-6)
    assert m.snr_db == pytest.approx(40.0, abs=0.01)
    assert m.top1_agreement == 1.0
    assert result.failures(Tolerances(max_rel_error=1e-4)) == [
        f"output 'y': relative L2 error {m.rel_l2_error:.4g} > max 0.0001"
    ]
    assert result.failures(Tolerances(max_rel_error=0.02)) == []


def test_accepts_bytes_paths_and_protos(tmp_path):
    model = linear()
    onnx.save(model, tmp_path / "a.onnx")
    source = source_for(model)
    for reference in (model, model.SerializeToString(), tmp_path / "a.onnx", str(tmp_path / "a.onnx")):
        result = compare_models(reference, model, source, providers=["cpu"])
        assert result.metrics[0].max_abs_error == 0.0
    assert compare_models(str(tmp_path / "a.onnx"), model, source).reference == str(tmp_path / "a.onnx")


def test_different_input_names_are_refused():
    with pytest.raises(InputError) as error:
        compare_models(linear(), linear(x="input"), source_for(linear()))
    assert str(error.value) == "the models have different inputs: only in the reference ['x'], only in the candidate ['input']"


def test_different_output_names_are_refused():
    with pytest.raises(InputError) as error:
        compare_models(linear(), linear(y="logits"), source_for(linear()))
    assert str(error.value) == "the models have different outputs: only in the reference ['y'], only in the candidate ['logits']"


def test_data_for_another_model_is_refused():
    with pytest.raises(InputError, match=r"the data has inputs \['input'\] but the models take \['x'\]"):
        compare_models(linear(), linear(), source_for(linear(x="input")))


def test_sessions_are_created_once(monkeypatch):
    calls = []
    real = providers_module.create_session

    def counting(model, provider="cpu", **kwargs):
        calls.append(provider)
        return real(model, provider, **kwargs)

    monkeypatch.setattr(providers_module, "create_session", counting)
    model = linear()
    compare_models(model, linear(WEIGHT * 2), source_for(model, 10), providers=["cpu"], batch_size=3)
    assert calls == ["cpu", "cpu"]
    calls.clear()
    compare_models(model, model, source_for(model, 10), providers=["cpu"], batch_size=3)
    assert calls == ["cpu"]  # one model object: one session


def test_candidate_config_reaches_only_the_candidates_sessions(monkeypatch):
    configs = []
    real = providers_module.create_session

    def recording(model, provider="cpu", **kwargs):
        configs.append(kwargs.get("config"))
        return real(model, provider, **kwargs)

    monkeypatch.setattr(providers_module, "create_session", recording)
    model = linear()
    entry = {"session.x64quantprecision": "1"}
    compare_models(model, linear(WEIGHT * 2), source_for(model, 4), candidate_config=entry)
    assert configs == [None, entry]
    configs.clear()
    result = compare_models(model, model, source_for(model, 4), candidate_config=entry)
    assert configs == [None, entry]  # one model, two settings: two sessions
    assert result.metrics[0].max_abs_error == 0.0  # float kernels ignore it


def test_session_config_entries_are_applied():
    session = providers_module.create_session(linear().SerializeToString(), config={"session.x64quantprecision": "1"})
    assert session.get_session_options().get_session_config_entry("session.x64quantprecision") == "1"


def test_compare_providers_uses_the_first_as_reference(monkeypatch):
    """Without a GPU, a fake "cuda" session runs a perturbed model on the CPU."""
    real = providers_module.create_session
    perturbed = linear(WEIGHT * 1.5).SerializeToString()

    def fake(model, provider="cpu", **kwargs):
        return real(perturbed if provider == "cuda" else model, "cpu", **kwargs)

    monkeypatch.setattr(providers_module, "create_session", fake)
    model = linear()
    progress = []
    result = compare_providers(model, source_for(model, 5), ["cpu", "cuda"], batch_size=2,
                               progress=lambda done, total: progress.append((done, total)))
    assert result.mode == "providers"
    assert (result.providers, result.reference_provider) == (["cuda"], "cpu")
    (row,) = result.rows
    assert (row.provider, row.reference_provider) == ("cuda", "cpu")
    assert row.metrics.rel_l2_error == pytest.approx(0.5, rel=1e-5)
    assert progress == [(2, 5), (4, 5), (5, 5)]
    failures = result.failures(Tolerances(max_rel_error=0.1))
    assert failures == ["cuda vs cpu: output 'y': relative L2 error 0.5 > max 0.1"]


def test_compare_providers_needs_two_providers():
    with pytest.raises(UsageError, match="comparing providers needs at least two, got cpu"):
        compare_providers(linear(), source_for(linear()), ["cpu", "cpu"])


CUDA_OK, CUDA_REASON = cuda_status()


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_OK, reason=f"CUDA does not load: {CUDA_REASON}")
def test_compare_providers_on_real_cuda():
    model = linear()
    result = compare_providers(model, source_for(model), ["cpu", "cuda"])
    assert result.failures(Tolerances(max_rel_error=1e-4)) == []


def test_fixed_batch_model_and_labels(tmp_path):
    model = linear(batch=1)
    np.savez(tmp_path / "d.npz", x=np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]])
    source = open_data(tmp_path / "d.npz", model_inputs(model))
    scores = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]] @ WEIGHT
    labels = {"0": int(scores[0].argmax()), "1": int(scores[1].argmax()), "2": (int(scores[2].argmax()) + 1) % 3}
    result = compare_models(model, linear(batch=1), source, batch_size=4, labels=labels)
    assert result.batch_size == 1 and result.samples == 5
    m = result.metrics[0]
    assert m.labeled == 3 and m.reference_top1 == pytest.approx(2 / 3) and m.candidate_top1 == pytest.approx(2 / 3)
    assert "accuracy over the 3 of 5 samples that have a label" in result.notes


def test_labels_that_match_nothing_give_a_note():
    result = compare_models(linear(), linear(), source_for(linear()), labels={"cat.jpg": 1})
    assert result.notes == ["labels given, but no sample id matched them (ids are image file names)"]


def test_feeds_are_cast_to_the_candidate_input_type():
    reference = linear()
    candidate = linear(input_type=TensorProto.FLOAT16)
    result = compare_models(reference, candidate, source_for(reference))
    assert result.notes == ["candidate model input 'x' is float16: feeds cast from float32"]
    assert 0 < result.metrics[0].rel_l2_error < 1e-2


def test_runtime_failure_is_one_input_error():
    # Reshape to 5 elements fails at run time for [N, 4] inputs.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(np.array([-1, 5], np.int64), "shape"),
                     numpy_helper.from_array(np.zeros((5, 3), np.float32), "w")],
    )
    with pytest.raises(InputError) as error:
        compare_models(linear(), make_model(graph), source_for(linear()))
    assert str(error.value).startswith("the candidate model failed on cpu (batch starting at sample 0): ")
    assert "\n" not in str(error.value)


def test_unloadable_model_is_one_input_error():
    with pytest.raises(InputError, match="onnxruntime cannot load the model"):
        compare_models(linear(), b"not a model", source_for(linear()))


def test_to_dict_is_stable_json():
    model = linear()
    data = compare_models(model, linear(WEIGHT * 0.0), source_for(model), names=("a.onnx", "b.onnx")).to_dict()
    json.dumps(data, allow_nan=False)
    assert list(data) == ["mode", "reference", "candidate", "reference_provider", "providers", "source", "samples",
                          "batch_size", "seconds", "notes", "results"]
    assert (data["reference"], data["candidate"], data["source"]) == ("a.onnx", "b.onnx", "6 random samples (seed 0)")
    row = data["results"][0]
    assert list(row)[:4] == ["provider", "reference_provider", "output", "samples"]
    assert row["output"] == "y" and row["cosine_min"] == 0.0 and row["snr_db"] == 0.0


def test_subset_description_says_which_samples():
    model = linear()
    result = compare_models(model, model, source_for(model, 10).split(4)[1])
    assert result.source == "6 random samples (seed 0) (samples 4–9 of 10)"
    assert result.samples == 6


def test_module_has_no_onnxruntime_at_import():
    assert "onnxruntime" not in vars(compare_module)


def test_labels_outside_the_classes_give_a_note():
    result = compare_models(linear(), linear(), source_for(linear(), 2), labels={"0": 7, "1": 0})
    m = result.metrics[0]
    assert (m.labeled, m.labels_out_of_range) == (2, 1)
    assert "output 'y': 1 label(s) are not among its classes: do the labels belong to this model?" in result.notes
