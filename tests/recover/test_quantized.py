"""Recovery of a QDQ model (the int8 pass): its quantized weights train as fake-quantized
parameters and are stored back as the same integers; recovering before int8 carries over."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch  # noqa: F401 - the recover extra is part of the test environment: fail, never skip, without it

import onnxopt
from onnxopt.passbase import PassContext
from onnxopt.recover import changed_layers, distill
from onnxopt.recover.distillation import DistillOptions
from onnxopt.recover.interpreter import GraphModule, write_back
from onnxopt.recover.requantize import rescale_biases
from onnxopt.recover.scope import changed_nodes, quantization_scales, student_value, trainable_initializers
from onnxopt.runtime import create_session
from tests.helpers import relative_error, run_ort
from tests.recover.models import correlated_batches, decomposed, initializers, quantized, teacher_model

QUANTIZED = ["W0_quantized", "B0_quantized", "W1_quantized", "B1_quantized", "W2_quantized", "B2_quantized"]


@pytest.fixture(scope="module")
def pair():
    teacher = teacher_model()
    return teacher, quantized(teacher, correlated_batches())


def test_quantized_layers_are_the_changed_layers(pair):
    _, student = pair
    layers = changed_layers(student)
    assert [(layer.source, layer.kind) for layer in layers] == [(f"conv{i}", "quantized") for i in range(3)]
    assert layers[0].outputs == ["r0"]  # the quantizer removed the Relu and kept its output name
    assert trainable_initializers(student, "changed", changed_nodes(student)) == QUANTIZED
    assert student_value(student, "r0") == "r0_DequantizeLinear_Output"  # what the next layer reads
    assert student_value(student, "r2") == "r2"


def test_a_quantized_weight_trains_as_a_float_and_is_stored_as_its_integers(pair):
    _, student = pair
    module = GraphModule(student, QUANTIZED)
    x = next(correlated_batches(1)())["x"]
    output = module({"x": torch.from_numpy(x)})["r2"]
    np.testing.assert_allclose(output.detach().numpy(), run_ort(student, {"x": x})[0], rtol=1e-5, atol=1e-5)
    stored = module.stored_values()
    assert all(stored[k].dtype == v.dtype and np.array_equal(stored[k], v)
               for k, v in initializers(student).items() if k in stored)
    assert write_back(student, stored).SerializeToString() == student.SerializeToString()
    output.sum().backward()
    assert module.named_initializers()["W1_quantized"].grad.abs().sum() > 0  # straight through the rounding


def test_write_back_rounds_and_saturates_floats_into_an_integer_initializer(pair):
    _, student = pair
    weight = initializers(student)["W0_quantized"]
    values = np.full(weight.shape, 2.5, np.float32)
    values.flat[:2] = [300.0, -300.0]
    stored = initializers(write_back(student, {"W0_quantized": values}))["W0_quantized"]
    assert stored.dtype == np.int8 and stored.flat[0] == 127 and stored.flat[1] == -128 and stored.flat[2] == 2


def test_int8_then_recover_all_lowers_the_held_out_loss_by_small_integer_steps():
    teacher, int8 = teacher_model(), "int8:library_check=false:bias_correction=false"
    student, _ = onnxopt.optimize(teacher, int8, context=PassContext(calibration=correlated_batches()))
    model, report = onnxopt.optimize(teacher, f"{int8},recover:steps=150:lr=1e-4:patience=10:quantized=all",
                                     context=PassContext(calibration=correlated_batches()))
    recover = report.passes[1]
    assert recover.modified, recover.skipped_reason
    assert recover.figures["loss_after"] < recover.figures["loss_before"]
    assert [a["node"] for a in recover.applied] == ["conv0", "conv1", "conv2"]
    create_session(model)  # still loads
    before, after = initializers(student), initializers(model)
    assert list(before) == list(after) and [n.name for n in model.graph.node] == [n.name for n in student.graph.node]
    assert all(before[k].dtype == after[k].dtype and before[k].shape == after[k].shape for k in before)
    steps = {k: np.abs(after[k].astype(np.int64) - before[k]).max() for k in QUANTIZED if k.startswith("W")}
    assert 0 < max(steps.values()) <= 2, steps  # a few weights moved by one quantum or two


def test_recovering_before_int8_gives_a_better_int8_model():
    """tucker,recover,int8: int8 calibrates the recovered model, so the gain survives."""
    teacher = teacher_model()
    student = decomposed(teacher)
    outputs = [o for layer in changed_layers(student) for o in layer.outputs]
    recovered = distill(teacher, student, outputs, correlated_batches(), DistillOptions(steps=30, lr=1e-2))
    assert recovered.model is not None, recovered.reason
    fresh = list(correlated_batches(count=3, seed=42)())

    def error(model):
        return np.mean([relative_error(run_ort(teacher, f)[0], run_ort(model, f)[0]) for f in fresh])

    plain, better = quantized(student, correlated_batches()), quantized(recovered.model, correlated_batches())
    assert error(better) < 0.8 * error(plain), (error(better), error(plain))


ACTIVATION_SCALES = ["x_scale", "r0_scale", "r1_scale"]
WEIGHT_SCALES = ["W0_scale", "W1_scale", "W2_scale"]


def test_the_scales_to_train_are_the_activations_and_the_changed_weights(pair):
    _, student = pair
    scales = quantization_scales(student, changed_nodes(student))
    assert sorted(scales) == sorted(ACTIVATION_SCALES + WEIGHT_SCALES), scales  # no int32 bias scale
    assert sorted(quantization_scales(student, {"conv1"})) == sorted(ACTIVATION_SCALES + ["W1_scale"])


def test_a_scale_trains_in_log_scale_and_is_stored_unchanged_until_trained(pair):
    _, student = pair
    module = GraphModule(student, [], ACTIVATION_SCALES)
    x = next(correlated_batches(1)())["x"]
    output = module({"x": torch.from_numpy(x)})["r2"]
    np.testing.assert_allclose(output.detach().numpy(), run_ort(student, {"x": x})[0], rtol=1e-5, atol=1e-5)
    stored = module.stored_values()
    np.testing.assert_allclose(stored["r0_scale"], initializers(student)["r0_scale"], rtol=1e-6)
    output.sum().backward()
    assert module.named_initializers()["r0_scale"].grad.abs().sum() > 0  # LSQ: through the rounding
    with pytest.raises(ValueError, match="positive float"):
        GraphModule(student, [], ["W0_quantized"])


def _with_scale(model, name, factor):
    values = {name: initializers(model)[name] * np.float32(factor)}
    return write_back(model, values)


def _fused_convs(model) -> int:
    """QLinearConv nodes onnxruntime makes of the model (its optimized graph)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return sum(n.op_type == "QLinearConv" for n in onnx.load(options.optimized_model_filepath).graph.node)


def test_rescaled_biases_keep_the_layers_fused_into_integer_kernels(pair):
    """onnxruntime fuses a quantized Conv only where its bias scale is input scale × weight
    scale: trained scales must re-quantize the bias, or the layer falls back to a float Conv."""
    _, student = pair
    changed = _with_scale(_with_scale(student, "r0_scale", 1.3), "W1_scale", 0.8)
    x = next(correlated_batches(1, seed=11)())["x"]

    def graph_output(model):  # the graph's meaning, as the recovery engine computes it
        return GraphModule(model)({"x": torch.from_numpy(x)})["r2"].detach().numpy()

    assert _fused_convs(student) == 2  # conv0 and conv1 (conv2 writes a float output)
    assert _fused_convs(changed) == 1  # the fault: conv1 ran as a float Conv
    fixed = write_back(changed, {})
    assert rescale_biases(student, fixed) == ["B1_quantized"]
    assert _fused_convs(fixed) == 2
    # the bias value is kept (to its new rounding, which may flip a rounding of r1's integers)
    assert relative_error(graph_output(changed), graph_output(fixed)) < 5e-3
    assert relative_error(graph_output(fixed), run_ort(fixed, {"x": x})[0]) < 1e-4
    assert rescale_biases(student, write_back(student, {})) == []  # nothing trained, nothing to do


def test_int8_then_recover_trains_the_scales_and_leaves_the_integers(pair):
    teacher, student = pair
    outputs = [o for layer in changed_layers(student) for o in layer.outputs]
    result = distill(teacher, student, outputs, correlated_batches(32),
                     DistillOptions(steps=60, lr=1e-4, scale_lr=3e-3, patience=10))
    assert result.model is not None, result.reason
    assert result.loss_after < result.loss_before
    before, after = initializers(student), initializers(result.model)
    assert all(np.array_equal(before[k], after[k]) for k in ("W0_quantized", "W1_quantized", "W2_quantized"))
    assert any(not np.allclose(before[k], after[k]) for k in ACTIVATION_SCALES + WEIGHT_SCALES)
    assert set(result.written) >= set(ACTIVATION_SCALES + WEIGHT_SCALES)
    x = next(correlated_batches(1, seed=11)())["x"]
    graph = GraphModule(result.model)({"x": torch.from_numpy(x)})["r2"].detach().numpy()
    assert relative_error(graph, run_ort(result.model, {"x": x})[0]) < 1e-4
    assert _fused_convs(result.model) == _fused_convs(student)  # biases followed the scales


def test_the_pass_writes_every_initializer_recovery_changed():
    """The pass copies the trained values into its model: the re-quantized int32 biases too,
    not only the scales (a bias scale without its integers would add a wrong bias)."""
    teacher, int8 = teacher_model(), "int8:library_check=false:bias_correction=false"
    student, _ = onnxopt.optimize(teacher, int8, context=PassContext(calibration=correlated_batches(32)))
    options = DistillOptions(steps=60, lr=1e-4, scale_lr=3e-3, patience=10)
    outputs = [o for layer in changed_layers(student) for o in layer.outputs]
    direct = distill(teacher, student, outputs, correlated_batches(32), options)
    assert direct.model is not None, direct.reason
    rescaled = [n for n in ("B0_quantized", "B1_quantized", "B2_quantized")
                if not np.array_equal(initializers(student)[n], initializers(direct.model)[n])]
    assert rescaled and set(rescaled) <= set(direct.written)
    model, report = onnxopt.optimize(teacher, f"{int8},recover:steps=60:lr=1e-4:scale_lr=3e-3:patience=10",
                                     context=PassContext(calibration=correlated_batches(32)))
    assert report.passes[1].modified, report.passes[1].skipped_reason
    expected, got = initializers(direct.model), initializers(model)
    assert all(np.array_equal(expected[k], got[k]) for k in expected), [
        k for k in expected if not np.array_equal(expected[k], got[k])]


def test_scale_lr_auto_probes_each_candidate_and_trains_at_the_best(pair):
    """Only scales train (quantized=scales): their rate is chosen on the held-out batches, as
    lr=auto chooses the weights' (a constant rate over-shot on MobileNetV2, 0.0172 -> 0.0271)."""
    teacher, student = pair
    outputs = [o for layer in changed_layers(student) for o in layer.outputs]
    candidates = (1e-4, 3e-3)
    result = distill(teacher, student, outputs, correlated_batches(32),
                     DistillOptions(steps=30, scale_lr="auto", scale_lr_candidates=candidates, patience=10))
    assert set(result.lr_trials) == set(candidates)
    assert result.lr is None  # no weight trains
    assert result.scale_lr == min(result.lr_trials, key=result.lr_trials.get)
    fixed = distill(teacher, student, outputs, correlated_batches(32),
                    DistillOptions(steps=30, scale_lr=3e-3, patience=10))
    assert fixed.lr_trials == {} and fixed.scale_lr == 3e-3
