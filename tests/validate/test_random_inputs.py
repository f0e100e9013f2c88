"""Random validation/calibration inputs the model can take, derived from the graph (issue 12).

Index inputs stay inside their embedding table, masks are ones, sequence dimensions
default to 128, dims declared as -1/0 are dynamic, recurrent state (judged from the graph,
not the name: encoder_hidden_states is data) is zeros fed beside the batch, and a
sample-rate scalar is 16000.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.analysis.inputs import model_inputs, resolve_shapes
from onnxopt.validate.compare import compare_models
from onnxopt.validate.sources import random_source
from onnxopt.validate.tolerances import Tolerances
from tests.helpers import make_model, run_ort

RNG = np.random.default_rng(0)


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def _source(model, batch_size=1, samples=6, overrides=None):
    inputs = model_inputs(model)
    return random_source(inputs, resolve_shapes(inputs, overrides or {}, batch_size), samples, seed=0)


def _batches(model, batch_size=1, samples=6, overrides=None):
    return list(_source(model, batch_size, samples, overrides).batches(batch_size))


def _runs(model, batches):
    for batch in batches:
        run_ort(model, batch.feeds)  # onnxruntime refuses out-of-range indices and wrong shapes


# --------------------------------------------------------------------------- finding 1: Gather indices


def embedding_model() -> onnx.ModelProto:
    """ids → Cast → Unsqueeze → Squeeze → Gather(word table [50, 4]); token_type_ids →
    Gather(Constant [2, 4]); positions → Gather on axis 1 of a [4, 7] table; counts: no Gather."""
    word = numpy_helper.from_array(RNG.standard_normal((50, 4)).astype(np.float32), "word")
    wide = numpy_helper.from_array(RNG.standard_normal((4, 7)).astype(np.float32), "wide")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Unsqueeze", ["ids32", "axes"], ["ids_u"]),
        helper.make_node("Squeeze", ["ids_u", "axes"], ["ids_s"]),
        helper.make_node("Gather", ["word", "ids_s"], ["emb"]),
        _const("types", RNG.standard_normal((2, 4)).astype(np.float32)),
        helper.make_node("Gather", ["types", "token_type_ids"], ["temb"]),
        helper.make_node("Add", ["emb", "temb"], ["sum"]),
        helper.make_node("Gather", ["wide", "positions"], ["pemb"], axis=1),
        helper.make_node("Cast", ["counts"], ["counts_f"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "emb",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", 6]),
         helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["N", 6]),
         helper.make_tensor_value_info("positions", TensorProto.INT32, ["N", 6]),
         helper.make_tensor_value_info("counts", TensorProto.INT64, ["N", 3])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("pemb", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("counts_f", TensorProto.FLOAT, None)],
        initializer=[word, wide, axes],
    )
    return make_model(graph)


def test_gather_indices_stay_inside_the_table():
    model = embedding_model()
    batches = _batches(model, batch_size=4, samples=64)
    feeds = {name: np.concatenate([b.feeds[name] for b in batches]) for name in batches[0].feeds}
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < 50
    assert feeds["input_ids"].max() >= 10  # the whole table, not the small default range
    assert set(np.unique(feeds["token_type_ids"])) == {0, 1}
    assert feeds["positions"].dtype == np.int32 and 0 <= feeds["positions"].min() and feeds["positions"].max() < 7
    assert 0 <= feeds["counts"].min() and feeds["counts"].max() < 10  # no Gather: the small range
    _runs(model, batches)
    bounds = {i.name: i.index_high for i in model_inputs(model)}
    assert bounds == {"input_ids": 50, "token_type_ids": 2, "positions": 7, "counts": None}


# --------------------------------------------------------------------------- finding 2: masks


def test_mask_inputs_are_ones():
    graph = helper.make_graph(
        [helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT)
         for name in ("attention_mask", "pad_mask", "mask", "other")],
        "masks",
        [helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "seq"]),
         helper.make_tensor_value_info("pad_mask", TensorProto.BOOL, ["N", 5]),
         helper.make_tensor_value_info("mask", TensorProto.INT32, ["N", 5]),
         helper.make_tensor_value_info("other", TensorProto.BOOL, ["N", 64])],
        [helper.make_tensor_value_info(f"{n}_f", TensorProto.FLOAT, None)
         for n in ("attention_mask", "pad_mask", "mask", "other")],
    )
    feeds = _batches(make_model(graph), batch_size=2, samples=2)[0].feeds
    assert feeds["attention_mask"].dtype == np.int64 and (feeds["attention_mask"] == 1).all()
    assert feeds["pad_mask"].dtype == np.bool_ and feeds["pad_mask"].all()
    assert feeds["mask"].dtype == np.int32 and (feeds["mask"] == 1).all()
    assert not feeds["other"].all()  # not a mask: fair coins


# --------------------------------------------------------------------------- finding 3: sequence dims


def test_sequence_dims_default_to_128_and_images_to_224(caplog):
    graph = helper.make_graph(
        [helper.make_node("Identity", [n], [f"{n}_out"]) for n in ("ids", "feats", "tok", "image", "other")],
        "seq",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", None]),
         helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["batch", "seq_len", 8]),
         helper.make_tensor_value_info("tok", TensorProto.FLOAT, ["batch", "num_tokens"]),
         helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"]),
         helper.make_tensor_value_info("other", TensorProto.FLOAT, ["batch", "k"])],
        [helper.make_tensor_value_info(f"{n}_out", TensorProto.FLOAT, None) for n in ("feats", "tok", "image", "other")]
        + [helper.make_tensor_value_info("ids_out", TensorProto.INT64, None)],
    )
    model = make_model(graph)
    with caplog.at_level(logging.WARNING, logger="onnxopt"):
        shapes = resolve_shapes(model_inputs(model), {}, batch_size=2)
    assert shapes == {"ids": (2, 128), "feats": (2, 128, 8), "tok": (2, 128), "image": (2, 3, 224, 224),
                      "other": (2, 1)}
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "dynamic dimensions defaulted" in warning
    assert "1 (seq_len)=128" in warning and "input 'ids' [batch, ?] dims 1=128" in warning


# --------------------------------------------------------------------------- finding 4: -1 / 0 dims


def paddle_classifier(shape) -> onnx.ModelProto:
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(RNG.standard_normal((4, 2)).astype(np.float32), "fc")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "fc"], ["y"])],
        "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 2])], initializer=[w, fc],
    )
    return make_model(graph, opset=11)


@pytest.mark.parametrize(("declared", "expected", "resolved"), [
    ([-1, 3, 48, 192], (None, 3, 48, 192), (2, 3, 48, 192)),
    ([-1, 3, -1, -1], (None, 3, None, None), (2, 3, 224, 224)),
    ([0, 3, 16, 0], (None, 3, 16, None), (2, 3, 16, 224)),  # onnxruntime itself holds 0 as a fixed 0
])
def test_nonpositive_dims_are_dynamic(declared, expected, resolved):
    model = paddle_classifier(declared)
    (info,) = model_inputs(model)
    assert info.shape == expected
    assert info.shape_str() == "[" + ", ".join("?" if d is None else str(d) for d in expected) + "]"
    assert resolve_shapes([info], {}, batch_size=2) == {"x": resolved}
    batches = _batches(model, batch_size=2, samples=3)
    assert [b.feeds["x"].shape for b in batches] == [resolved, (1, *resolved[1:])]
    if 0 not in declared:
        _runs(model, batches)
    # what a calibration pass gets for calib=random: one-sample feeds
    from onnxopt.analysis.inputs import random_feeds

    feeds = list(random_feeds(model, 3, seed=1))
    assert len(feeds) == 3 and feeds[0]["x"].shape == (1, *resolved[1:])


# --------------------------------------------------------------------------- finding 5: state, scalars


def silero_v5_like(state_shape=(2, 1, 16)) -> onnx.ModelProto:
    """input [N, 64], state [2, 1, 16] (the batch fixed at 1 inside), sr a scalar int64."""
    w = numpy_helper.from_array(RNG.standard_normal((64, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["proj"]),          # [N, 16]
         helper.make_node("ReduceSum", ["state"], ["st"], axes=[0], keepdims=0),  # [1, 16]
         helper.make_node("Add", ["proj", "st"], ["mixed"]),            # needs N == 1 or broadcast
         helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["mixed", "sr_f"], ["output"]),
         helper.make_node("Add", ["state", "st"], ["stateN"])],
        "silero",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, list(state_shape)),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    return make_model(graph, opset=12)


def test_state_and_sample_rate_inputs_are_fed_beside_the_batch():
    model = silero_v5_like()
    batches = _batches(model, batch_size=4, samples=3)
    assert [len(b) for b in batches] == [1, 1, 1]  # the fixed state pins the batch
    for batch in batches:
        assert batch.feeds["input"].shape == (1, 64)
        assert batch.feeds["state"].shape == (2, 1, 16) and not batch.feeds["state"].any()
        assert batch.feeds["sr"].shape == () and batch.feeds["sr"].dtype == np.int64 and batch.feeds["sr"] == 16000
    assert not np.array_equal(batches[0].feeds["input"], batches[1].feeds["input"])
    _runs(model, batches)
    result = compare_models(model, model, _source(model, 4, 3), batch_size=4)
    assert result.samples == 3 and result.failures(Tolerances(max_rel_error=1e-6)) == []


def voicefilter_like() -> onnx.ModelProto:
    """x [N, 8]; initial_h [3, N, 16]: the batch is axis 1 of the state. The state comes
    back as hn [3, N, 16] (a state in/out pair, so initial_h is state without an RNN op)."""
    w = numpy_helper.from_array(RNG.standard_normal((8, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["proj"]),
         helper.make_node("ReduceSum", ["initial_h"], ["h"], axes=[0], keepdims=0),
         helper.make_node("Add", ["proj", "h"], ["y"]),
         helper.make_node("Add", ["initial_h", "y"], ["hn"])],
        "vf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
         helper.make_tensor_value_info("initial_h", TensorProto.FLOAT, [3, "N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16]),
         helper.make_tensor_value_info("hn", TensorProto.FLOAT, [3, "N", 16])],
        initializer=[w],
    )
    return make_model(graph, opset=12)


def test_state_with_the_batch_dim_follows_the_batch():
    model = voicefilter_like()
    batches = _batches(model, batch_size=4, samples=6)
    assert [len(b) for b in batches] == [4, 2]
    assert [b.feeds["initial_h"].shape for b in batches] == [(3, 4, 16), (3, 2, 16)]
    assert [b.feeds["x"].shape for b in batches] == [(4, 8), (2, 8)]
    assert not any(b.feeds["initial_h"].any() for b in batches)
    _runs(model, batches)


def gru_model() -> onnx.ModelProto:
    """ONNX GRU layout: X [T, N, 8] (time-major) and initial_h [1, N, 16]."""
    hidden = 16
    graph = helper.make_graph(
        [helper.make_node("GRU", ["X", "W", "R", "", "", "initial_h"], ["Y", "Y_h"], hidden_size=hidden)],
        "gru",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", 8]),
         helper.make_tensor_value_info("initial_h", TensorProto.FLOAT, [1, "N", hidden])],
        [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(RNG.standard_normal((1, 3 * hidden, 8)).astype(np.float32), "W"),
                     numpy_helper.from_array(RNG.standard_normal((1, 3 * hidden, hidden)).astype(np.float32), "R")],
    )
    return make_model(graph)


def test_batch_axis_is_the_dim_the_state_shares():
    model = gru_model()
    batches = _batches(model, batch_size=3, samples=3)
    assert [b.feeds["X"].shape for b in batches] == [(1, 3, 8)]
    assert [b.feeds["initial_h"].shape for b in batches] == [(1, 3, 16)]
    _runs(model, batches)


def test_fixed_state_is_zeros_beside_a_fixed_input():
    """akiki-like: audio [1, 64] and h [1, 1, 16], both fixed."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["audio"], ["m"], keepdims=0),
         helper.make_node("Add", ["h", "m"], ["h_out"])],
        "vad",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 64]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, 16])],
        [helper.make_tensor_value_info("h_out", TensorProto.FLOAT, None)],
    )
    model = make_model(graph, opset=13)
    batches = _batches(model, batch_size=4, samples=2)
    assert [b.feeds["audio"].shape for b in batches] == [(1, 64), (1, 64)]
    assert all(b.feeds["h"].shape == (1, 1, 16) and not b.feeds["h"].any() for b in batches)
    _runs(model, batches)


def test_inputs_that_cannot_be_batched_run_one_sample_at_a_time_as_declared():
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["a"], ["sa"], keepdims=0), helper.make_node("ReduceSum", ["b"], ["sb"], keepdims=0),
         helper.make_node("Add", ["sa", "sb"], ["y"])],
        "conflict",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = make_model(graph, opset=12)
    batches = _batches(model, batch_size=4, samples=3)
    assert [len(b) for b in batches] == [1, 1, 1]
    assert [(b.feeds["a"].shape, b.feeds["b"].shape) for b in batches] == [((2, 3), (3, 3))] * 3
    assert not np.array_equal(batches[0].feeds["a"], batches[1].feeds["a"])
    _runs(model, batches)


# --------------------------------------------------------------------------- state from the graph, not the name


def cross_attention_like(name: str) -> onnx.ModelProto:
    """Whisper-decoder-like: input_ids [batch, 4] → embedding; ``name`` [batch, 16, 8] (the
    encoder's output) → K = MatMul(·, wk) + bk; scores = emb · Kᵀ. Zero encoder states would
    reduce K to its bias, hiding any damage to wk from a validation gate."""
    table = numpy_helper.from_array(RNG.standard_normal((20, 8)).astype(np.float32), "table")
    wk = numpy_helper.from_array(RNG.standard_normal((8, 8)).astype(np.float32), "wk")
    bk = numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "bk")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["emb"]),      # [batch, 4, 8]
         helper.make_node("MatMul", [name, "wk"], ["k0"]),                  # [batch, 16, 8]
         helper.make_node("Add", ["k0", "bk"], ["k"]),
         helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),      # [batch, 8, 16]
         helper.make_node("MatMul", ["emb", "kt"], ["scores"])],            # [batch, 4, 16]
        "xattn",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", 4]),
         helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 16, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4, 16])],
        initializer=[table, wk, bk],
    )
    return make_model(graph)


@pytest.mark.parametrize("name", ["encoder_hidden_states", "hidden_states", "last_hidden_state", "hidden"])
def test_hidden_states_without_a_recurrent_consumer_are_random_data(name):
    model = cross_attention_like(name)
    batches = _batches(model, batch_size=2, samples=4)
    assert [b.feeds[name].shape for b in batches] == [(2, 16, 8), (2, 16, 8)]
    states = np.concatenate([b.feeds[name] for b in batches])
    assert all(s.any() for s in states)  # every sample, not zeros
    assert not np.array_equal(states[0], states[1])  # drawn per sample, not one constant
    assert abs(float(states.std()) - 1.0) < 0.2  # standard normal
    _runs(model, batches)


def test_h_that_feeds_nothing_recurrent_and_returns_no_state_is_random():
    """An input merely named h [1, 1, 8]: no RNN reads it, and no output has its shape."""
    w = numpy_helper.from_array(RNG.standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["h", "w"], ["hw"]),                        # [1, 1, 4]
         helper.make_node("ReduceMean", ["x"], ["xm"], axes=[1], keepdims=1),   # [N, 1]
         helper.make_node("Add", ["hw", "xm"], ["y"])],
        "plain_h",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    model = make_model(graph, opset=13)
    batches = _batches(model, batch_size=1, samples=3)
    assert all(b.feeds["h"].shape == (1, 1, 8) and b.feeds["h"].any() for b in batches)
    _runs(model, batches)


def lstm_model(state_names=("h", "memory")) -> onnx.ModelProto:
    """X [T, 1, 4] → LSTM (hidden 8); ``h`` [1, 1, 8] is initial_h directly, ``memory`` [8]
    reaches initial_c through Identity, Cast and Reshape. Only Y [T, 1, 1, 8] is an output,
    so no output has a state's shape: the LSTM alone makes them state."""
    hidden = 8
    h_name, c_name = state_names
    shape = numpy_helper.from_array(np.array([1, 1, hidden], np.int64), "state_shape")
    graph = helper.make_graph(
        [helper.make_node("Identity", [c_name], ["c_id"]),
         helper.make_node("Cast", ["c_id"], ["c_f"], to=TensorProto.FLOAT),
         helper.make_node("Reshape", ["c_f", "state_shape"], ["c0"]),
         helper.make_node("LSTM", ["X", "W", "R", "", "", h_name, "c0"], ["Y"], hidden_size=hidden)],
        "lstm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", 1, 4]),
         helper.make_tensor_value_info(h_name, TensorProto.FLOAT, [1, 1, hidden]),
         helper.make_tensor_value_info(c_name, TensorProto.FLOAT, [hidden])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, 1, hidden])],
        initializer=[numpy_helper.from_array(RNG.standard_normal((1, 4 * hidden, 4)).astype(np.float32), "W"),
                     numpy_helper.from_array(RNG.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R"),
                     shape],
    )
    return make_model(graph)


def test_inputs_that_reach_an_lstm_initial_state_are_zeros():
    model = lstm_model()
    batches = _batches(model, batch_size=2, samples=2)
    assert [len(b) for b in batches] == [1, 1]  # the fixed state pins the batch
    for batch in batches:
        assert batch.feeds["h"].shape == (1, 1, 8) and not batch.feeds["h"].any()
        assert batch.feeds["memory"].shape == (8,) and not batch.feeds["memory"].any()  # via Identity/Cast/Reshape
        assert batch.feeds["X"].any()
    _runs(model, batches)


def test_state_consumed_by_a_gru_inside_a_subgraph_is_zeros():
    """The GRU reading ``mem`` [1, 1, 8] sits in an If branch (outer-scope name)."""
    hidden = 8
    w = numpy_helper.from_array(RNG.standard_normal((1, 3 * hidden, 4)).astype(np.float32), "W")
    r = numpy_helper.from_array(RNG.standard_normal((1, 3 * hidden, hidden)).astype(np.float32), "R")
    branch = helper.make_graph(
        [helper.make_node("GRU", ["X", "W", "R", "", "", "mem"], ["Yb"], hidden_size=hidden)], "then", [],
        [helper.make_tensor_value_info("Yb", TensorProto.FLOAT, ["T", 1, 1, hidden])])
    other = helper.make_graph(
        [helper.make_node("GRU", ["X", "W", "R"], ["Yo"], hidden_size=hidden)], "else", [],
        [helper.make_tensor_value_info("Yo", TensorProto.FLOAT, ["T", 1, 1, hidden])])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["X"], ["s"], keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["cond"]),
         helper.make_node("If", ["cond"], ["Y"], then_branch=branch, else_branch=other)],
        "if_gru",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", 1, 4]),
         helper.make_tensor_value_info("mem", TensorProto.FLOAT, [1, 1, hidden])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, 1, hidden])],
        initializer=[w, r, numpy_helper.from_array(np.array(0, np.float32), "zero")],
    )
    model = make_model(graph, opset=13)
    batches = _batches(model, batch_size=1, samples=2)
    assert all(not b.feeds["mem"].any() and b.feeds["X"].any() for b in batches)
    _runs(model, batches)


@pytest.mark.parametrize("declared", [[1, 1, 8], [1, "N", 8], None])
def test_named_state_with_a_state_output_is_zeros(declared):
    """h [1, 1, 8] → Tanh → hn: a state in/out pair even with no RNN op. The output's shape
    may be declared with a dynamic dim (as Silero's hn [1, LSTMhn_dim_1, 128]) or not at all."""
    w = numpy_helper.from_array(RNG.standard_normal((32, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]),  # [1, 8]
         helper.make_node("Add", ["h", "xw"], ["pre"]),   # [1, 1, 8]
         helper.make_node("Tanh", ["pre"], ["hn"])],
        "pair",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, 8])],
        [helper.make_tensor_value_info("hn", TensorProto.FLOAT, declared)],
        initializer=[w],
    )
    model = make_model(graph, opset=13)
    batches = _batches(model, batch_size=1, samples=2)
    assert all(not b.feeds["h"].any() and b.feeds["x"].any() for b in batches)
    _runs(model, batches)
