"""Models with random operators: the gate never gives a verdict on their noise.

A TTS-like graph adds ``RandomNormalLike`` noise: two runs of the original differ, so a
lossless ``simplify`` used to be refused at a relative error near 1. The gate now runs
the original twice on the first batch, names the random ops, and judges seeded copies of
both models — or refuses with that reason.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.analysis.inputs import model_inputs, resolve_shapes
from onnxopt.validate import nondeterminism as nd
from onnxopt.validate.compare import compare_models
from onnxopt.validate.sources import random_source
from tests.helpers import TEST_IR_VERSION, cli, tiny_conv_model


def tts_like(seed: float | None = None) -> onnx.ModelProto:
    """y = 0.5·x + N(0, 0.3²) noise, with an Identity that simplify removes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8])
    noise = {"scale": 0.3} if seed is None else {"scale": 0.3, "seed": seed}
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["h"], name="scale"),
        helper.make_node("Identity", ["h"], ["h2"], name="ident"),
        helper.make_node("RandomNormalLike", ["h2"], ["r"], name="noise", **noise),
        helper.make_node("Add", ["h2", "r"], ["y"], name="add"),
    ]
    graph = helper.make_graph(nodes, "tts", [x], [y], [numpy_helper.from_array(np.full((1, 4, 8), 0.5, np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = TEST_IR_VERSION
    return model


def source_for(model, samples=4):
    inputs = model_inputs(model)
    return random_source(inputs, resolve_shapes(inputs, {}, 1), samples, 0)


def test_self_check_measures_how_far_two_runs_of_the_reference_differ():
    random_model = tts_like()
    result = compare_models(random_model, random_model, source_for(random_model), self_check=True)
    assert result.reference_self_difference["y"] > 0.1
    conv = tiny_conv_model()
    result = compare_models(conv, conv, source_for(conv), self_check=True)
    assert result.reference_self_difference == {"y": 0.0}
    assert compare_models(conv, conv, source_for(conv)).reference_self_difference is None


def test_random_ops_are_found_in_subgraphs_and_dropout_only_in_training_mode():
    model = tts_like()
    assert nd.random_ops(model) == [nd.RandomOp("RandomNormalLike", "noise", True)]
    branch = helper.make_graph([helper.make_node("RandomUniformLike", ["x"], ["t"], name="u")], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="e")], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["i"], then_branch=branch, else_branch=other, name="if"),
         helper.make_node("Dropout", ["i", "ratio", "off"], ["d0"], name="inference"),
         helper.make_node("Dropout", ["d0", "ratio", "on"], ["d1"], name="training"),
         helper.make_node("Dropout", ["d1"], ["d2"], name="plain"),
         helper.make_node("BiasDropout", ["d2", "b"], ["y"], name="contrib", domain="com.microsoft")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array(True), "c"), numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
         numpy_helper.from_array(np.array(False), "off"), numpy_helper.from_array(np.array(True), "on"),
         numpy_helper.from_array(np.zeros(2, np.float32), "b")])
    found = nd.random_ops(helper.make_model(graph))
    assert [(op.op_type, op.name, op.seedable) for op in found] == [
        ("Dropout", "training", True), ("BiasDropout", "contrib", False), ("RandomUniformLike", "u", True)]


def test_seeding_sets_one_seed_on_copies():
    model = tts_like(seed=7.0)
    seeded = nd.seed_random_ops(model, 3.0)
    attributes = {a.name: a for a in seeded.graph.node[2].attribute}
    assert attributes["seed"].f == 3.0 and attributes["scale"].f == pytest.approx(0.3)
    assert {a.name: a for a in model.graph.node[2].attribute}["seed"].f == 7.0  # the input is untouched


def _optimize(tmp_path, model, *args):
    path = tmp_path / "tts.onnx"
    path.write_bytes(model.SerializeToString())
    out = tmp_path / "out.onnx"
    result = cli("optimize", str(path), "--passes", "simplify", "-o", str(out), "--json", *args)
    return result, out


def test_lossless_simplify_of_a_random_model_is_judged_seeded(tmp_path):
    result, out = _optimize(tmp_path, tts_like())
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    validation = json.loads(result.stdout)["validation"]
    assert validation["passed"] and validation["results"][0]["rel_l2_error"] == 0.0
    note = next(n for n in validation["notes"] if "two runs" in n)
    assert "RandomNormalLike 'noise'" in note and "seeded" in note
    assert out.exists()
    assert "RandomNormalLike 'noise'" in result.stderr.decode()  # said on the terminal, in one line


def test_random_model_whose_seed_does_not_hold_is_refused(tmp_path, monkeypatch):
    from onnxopt.validate import gate

    monkeypatch.setattr(nd, "seed_random_ops", lambda model, seed=nd.SEED: model)  # as if the op ignored seed
    model = tts_like()
    inputs = model_inputs(model)
    settings = gate.GateSettings(source=random_source(inputs, resolve_shapes(inputs, {}, 1), 4, 0),
                                 providers=["cpu"], tolerances=gate.LOSSLESS_TOLERANCES)
    outcome = gate.run_gate(model.SerializeToString(), model.SerializeToString(), settings)
    assert not outcome.passed
    assert len(outcome.failures) == 1
    assert "RandomNormalLike 'noise'" in outcome.failures[0] and "ignore their seed" in outcome.failures[0]


def test_a_seed_that_does_not_hold_across_sessions_is_refused(monkeypatch):
    """Two new sessions of the seeded original must agree: checked with two sessions, not one run twice."""
    from onnxopt import runtime as providers

    real = providers.create_session
    made = []

    class Shifted:  # each session draws from its own stream, whatever the seed says
        def __init__(self, session, shift):
            self._session, self._shift = session, shift

        def __getattr__(self, name):
            return getattr(self._session, name)

        def run(self, names, feeds, options=None):
            return [o + np.float32(self._shift) for o in self._session.run(names, feeds, options)]

    def create_session(model, provider="cpu", **kwargs):
        made.append(model)
        return Shifted(real(model, provider, **kwargs), len(made))

    monkeypatch.setattr(providers, "create_session", create_session)
    outcome = _gate_on(["cpu"], tts_like())
    assert len(outcome.failures) == 1 and "with seed=1 it still does: no verdict on noise" in outcome.failures[0]


def test_disagreement_without_a_random_op_is_judged_as_usual_with_a_note(tmp_path, monkeypatch):
    """The cause is unknown (nondeterministic kernels, perhaps): a refusal could refuse a good model."""
    from onnxopt.validate import gate

    monkeypatch.setattr(nd, "random_ops", lambda model: [])
    model = tts_like()
    inputs = model_inputs(model)
    settings = gate.GateSettings(source=random_source(inputs, resolve_shapes(inputs, {}, 1), 4, 0),
                                 providers=["cpu"], tolerances=gate.LOSSLESS_TOLERANCES)
    outcome = gate.run_gate(model.SerializeToString(), model.SerializeToString(), settings)
    # this model's noise is large: the usual verdict fails it on its metrics, not on a refusal
    assert len(outcome.failures) == 1 and outcome.failures[0].startswith("output 'y': relative L2 error ")
    note = next(n for n in outcome.report["notes"] if "two runs" in n)
    assert "on cpu" in note and "no known random operator: judged as usual" in note


class _NoisyCuda:
    """A CPU session standing in for a CUDA one whose kernels (atomics) vary run to run by ~1e-5."""

    def __init__(self, session, rng):
        self._session = session
        self._rng = rng  # one for all sessions: no two runs alike

    def __getattr__(self, name):
        return getattr(self._session, name)

    def run(self, names, feeds, options=None):
        outputs = self._session.run(names, feeds, options)
        return [o + (o * 1e-5 * self._rng.standard_normal(o.shape)).astype(o.dtype) for o in outputs]


@pytest.fixture
def noisy_cuda(monkeypatch):
    """create_session("cuda") gives a noisy stand-in (no GPU here); the providers sessions were made on."""
    from onnxopt import runtime as providers

    real = providers.create_session
    made = []
    rng = np.random.default_rng(0)

    def create_session(model, provider="cpu", **kwargs):
        made.append(provider)
        session = real(model, "cpu", **kwargs)
        return _NoisyCuda(session, rng) if provider == "cuda" else session

    monkeypatch.setattr(providers, "create_session", create_session)
    return made


def _gate_on(providers_, model):
    from onnxopt.validate import gate

    inputs = model_inputs(model)
    settings = gate.GateSettings(source=random_source(inputs, resolve_shapes(inputs, {}, 1), 4, 0),
                                 providers=providers_, tolerances=gate.LOSSLESS_TOLERANCES)
    return gate.run_gate(model.SerializeToString(), model.SerializeToString(), settings)


def test_the_self_check_runs_on_the_cpu_not_on_cuda(noisy_cuda):
    """CUDA first (--providers cuda,cpu): two CUDA runs differ by 1e-5, over the self-check's 1e-6."""
    model = tiny_conv_model()
    result = compare_models(model, model, source_for(model), providers=["cuda", "cpu"], self_check=True)
    assert result.reference_self_difference == {"y": 0.0}
    outcome = _gate_on(["cuda", "cpu"], model)
    assert outcome.passed, outcome.failures  # it was refused: "has no known random operator: no verdict on noise"
    assert not any("two runs" in note for note in outcome.report["notes"])


def test_with_cuda_alone_a_noisy_deterministic_model_is_judged_with_a_note(noisy_cuda):
    """No CPU session the user did not ask for: the self-check runs on CUDA, and its noise is only a note."""
    outcome = _gate_on(["cuda"], tiny_conv_model())
    assert set(noisy_cuda) == {"cuda"}
    assert outcome.passed, outcome.failures
    note = next(n for n in outcome.report["notes"] if "two runs" in n)
    assert "on cuda" in note and "no known random operator: judged as usual" in note


def test_the_seed_of_a_random_model_is_verified_on_the_cpu(noisy_cuda):
    """A random model gated on cuda,cpu: the seeded copies are checked where runs repeat (the CPU)."""
    outcome = _gate_on(["cuda", "cpu"], tts_like())
    assert outcome.passed, outcome.failures
    note = next(n for n in outcome.report["notes"] if "two runs" in n)
    assert "on cpu" in note and "RandomNormalLike 'noise'" in note and "seeded" in note


def test_self_check_provider():
    assert nd.self_check_provider(["cpu"]) == "cpu"
    assert nd.self_check_provider(["cuda", "cpu"]) == "cpu"
    assert nd.self_check_provider(["cuda"]) == "cuda"


def test_deterministic_models_get_no_note(tmp_path):
    from onnxopt.validate import gate

    model = tiny_conv_model()
    inputs = model_inputs(model)
    settings = gate.GateSettings(source=random_source(inputs, resolve_shapes(inputs, {}, 1), 4, 0),
                                 providers=["cpu"], tolerances=gate.LOSSLESS_TOLERANCES)
    outcome = gate.run_gate(model.SerializeToString(), model.SerializeToString(), settings)
    assert outcome.passed and not any("two runs" in note for note in outcome.report["notes"])
