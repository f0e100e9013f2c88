"""SplitEvaluator: scores against a cached reference on two splits, and interleaved timing."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxopt.analysis.inputs import model_inputs
from onnxopt.validate.evaluator import SplitEvaluator
from onnxopt.validate.sources import random_source
from onnxopt.validate.tolerances import Tolerances
from tests.search.fakes import conv_net


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return conv_net()


def source(model, samples=12, seed=0):
    return random_source(model_inputs(model), {"x": (1, 32, 16, 16)}, samples, seed)


AGREEMENT = Tolerances(min_agreement=0.9)


def evaluator(model, tolerances=AGREEMENT, **kwargs):
    data = source(model)
    search, holdout = data.split(8)
    return SplitEvaluator(model.SerializeToString(), search, holdout, tolerances, **kwargs)


def perturbed(model, scale: float) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for index, tensor in enumerate(copy.graph.initializer):
        if tensor.name == "conv2.weight":
            array = numpy_helper.to_array(tensor)
            noise = np.random.default_rng(0).standard_normal(array.shape).astype(np.float32)
            copy.graph.initializer[index].CopyFrom(numpy_helper.from_array(array + scale * noise, tensor.name))
    return copy


def test_the_original_scores_perfectly_on_both_splits(model):
    ev = evaluator(model)
    for split, size in (("search", 8), ("holdout", 4)):
        score = ev.score(model, split)
        assert score.passed and score.value == 1.0 and score.metric == "top1_agreement"
        assert score.details["split"]["samples"] == size and score.details["threshold"] == 0.9
        assert score.details["rel_l2_error"] == 0.0
    assert ev.describe_splits()["search"]["samples"] == 8


def test_a_damaged_candidate_fails_with_the_gate_message(model):
    ev = evaluator(model, Tolerances(min_cosine=0.9999))
    score = ev.score(perturbed(model, 0.5))
    assert not score.passed and score.metric == "cosine_min"
    assert score.value < 0.9999 and "cosine" in score.failures[0]
    assert score.details["rel_l2_error"] > 0


def test_metric_follows_the_tolerances(model):
    assert evaluator(model, Tolerances(max_rel_error=0.1)).score(model).metric == "neg_rel_l2_error"
    assert evaluator(model, Tolerances(min_cosine=0.99, min_agreement=0.9)).score(model).metric == "top1_agreement"


def test_the_reference_runs_once_per_split(model):
    ev = evaluator(model)
    ev.score(model, "search")
    assert len(ev._cache["search"]) == 8
    session = ev._reference_session

    class Refuse:
        def run(self, *args, **kwargs):
            raise AssertionError("the reference ran again")

        def get_outputs(self):
            return session.get_outputs()

    ev._reference_session = Refuse()
    assert ev.score(perturbed(model, 0.01), "search").details["split"]["samples"] == 8
    assert ev.score(model, "search", limit=3).details["split"]["samples"] == 3


def test_without_cache_room_the_reference_is_recomputed(model):
    ev = evaluator(model, max_cache_bytes=0)
    first = ev.score(perturbed(model, 0.05))
    second = ev.score(perturbed(model, 0.05))
    assert ev._cache["search"] == [] and first.value == second.value


def test_limit_scores_the_first_samples(model):
    ev = evaluator(model)
    assert ev.score(model, "search", limit=3).details["split"]["samples"] == 3
    assert ev.score(model, "search").details["split"]["samples"] == 8  # after a limited pass
    assert ev.score(model, "search", limit=5).details["split"]["samples"] == 5  # from the full cache


def test_a_candidate_that_does_not_load_or_run_is_a_failed_score(model):
    ev = evaluator(model)
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].op_type = "NoSuchOp"
    score = ev.score(broken)
    assert not score.passed and score.value == -math.inf and "does not load" in score.failures[0]
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    renamed.graph.output[0].name = "other"
    renamed.graph.node[-1].output[0] = "other"
    score = ev.score(renamed)
    assert not score.passed and "outputs" in score.failures[0]


def test_latency_times_models_with_other_inputs(model):
    from onnx import TensorProto, helper

    ev = evaluator(model)
    weight = numpy_helper.from_array(np.ones((8, 4, 3, 3), np.float32), "w")
    layer = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["t", "w"], ["u"], name="c")], "layer",
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4, 9, 9])],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)], [weight]),
        opset_imports=[helper.make_opsetid("", 13)])
    layer.ir_version = 8
    medians = ev.latency([model, layer], runs=3)
    minima = ev.latency([model, layer], runs=3, statistic="min")
    assert len(medians) == 2 and all(0 < t < 1 for t in medians + minima)
    broken = onnx.ModelProto()
    broken.CopyFrom(layer)
    broken.graph.node[0].op_type = "NoSuchOp"
    times = ev.latency([model, broken], runs=2)
    assert math.isfinite(times[0]) and times[1] == math.inf


def test_data_fingerprint_identifies_the_data_and_budget(model):
    a = evaluator(model).data_fingerprint
    assert a == evaluator(model).data_fingerprint
    assert a != evaluator(model, Tolerances(min_agreement=0.95)).data_fingerprint
    data = source(model, seed=1)
    other = SplitEvaluator(model.SerializeToString(), *data.split(8), Tolerances(min_agreement=0.9))
    assert other.data_fingerprint != a
