"""simplify and fold-constants on small models: skips with reasons, idempotency, Constant weights."""

from __future__ import annotations

import onnx

import onnxopt
from tests.helpers import SAMPLES, assert_models_close, random_feeds, tiny_conv_model


def test_simplify_skips_with_onnxsim_reason_when_it_fails(monkeypatch):
    import onnxsim

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported op Foo\nmore detail")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    model, report = onnxopt.optimize(tiny_conv_model(), "simplify")
    assert report.passes[0].status == "skipped"
    assert report.passes[0].skipped_reason == "onnxsim failed: unsupported op Foo"
    assert_models_close(tiny_conv_model(), model)


def test_second_simplify_changes_nothing():
    once, _ = onnxopt.optimize(onnxopt.load(SAMPLES / "digits_cnn.onnx"), "simplify")
    twice, report = onnxopt.optimize(once, "simplify")
    assert report.passes[0].status == "unchanged"
    assert once.graph.SerializeToString() == twice.graph.SerializeToString()


def test_simplify_fuses_batchnorm_of_the_sample():
    original = onnxopt.load(SAMPLES / "digits_cnn.onnx")
    assert any(n.op_type == "BatchNormalization" for n in original.graph.node)
    model, report = onnxopt.optimize(original, "simplify")
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert report.after["nodes"] < report.before["nodes"]
    assert_models_close(original, model, random_feeds(original, dynamic=2))


def test_fold_constants_lifts_constant_node_weights():
    original = onnxopt.load(SAMPLES / "digits_cnn_constants.onnx")
    conv_weights = {n.input[1] for n in original.graph.node if n.op_type == "Conv"}
    assert not conv_weights & {t.name for t in original.graph.initializer}
    model, report = onnxopt.optimize(original, "fold-constants")
    assert conv_weights <= {t.name for t in model.graph.initializer}
    assert len(report.passes[0].applied) >= len(conv_weights)
    assert_models_close(original, model, random_feeds(original, dynamic=2))
    again, report = onnxopt.optimize(model, "fold-constants")
    assert report.passes[0].status == "unchanged"
    assert isinstance(again, onnx.ModelProto)
