"""``int8``: static QDQ quantization — numerics, structure, options, bad input, streaming."""

from __future__ import annotations

import json
import weakref

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import onnxopt
from onnxopt.errors import InputError, UsageError
from onnxopt.passbase import PassContext
from onnxopt.passes.quantize_static import QuantizeStaticOptions, QuantizeStaticPass
from onnxopt.registry import build_options, get
from onnxopt.runtime import cpu as hostcpu
from tests.helpers import SHARED_IMAGES, cli, make_model, run_ort, shared_model
from tests.quant.models import conv_stack, cosine, image_batches, op_types


def run_int8(model: onnx.ModelProto, context: PassContext | None, **options):
    opt_pass = QuantizeStaticPass(QuantizeStaticOptions(**options), context)
    result = opt_pass(ir.from_proto(model))
    return ir.to_proto(result.model), opt_pass.report


def context(batches=None, description="test data") -> PassContext:
    return PassContext(calibration=batches or image_batches(), calibration_description=description)


def evaluation_feeds(seed: int = 7, n: int = 32) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).random((n, 3, 8, 8), dtype=np.float32)}


def dq_producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_int8_close_to_fp32_and_qdq_structure(method):
    model = conv_stack()
    quantized, report = run_int8(model, context(), method=method)
    assert report.skipped_reason is None
    feeds = evaluation_feeds()
    assert cosine(run_ort(model, feeds)[0], run_ort(quantized, feeds)[0]) > 0.99
    ops = op_types(quantized)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert report.figures["quantized_nodes"] >= 4  # conv1, conv2, fc, head
    assert report.figures["calibration_samples"] == 32  # 4 batches of 8, split into samples
    assert report.figures["method"].startswith(method)
    onnx.checker.check_model(quantized)
    # the model output is the last op's float result, not a Q→DQ round trip
    producers = {o: n for n in quantized.graph.node for o in n.output}
    assert producers["y"].op_type == "MatMul" and report.figures["float_outputs"] == 1


def test_per_channel_weights_have_one_scale_per_output_channel():
    quantized, _ = run_int8(conv_stack(), context())
    producers = dq_producers(quantized)
    inits = {t.name: t for t in quantized.graph.initializer}
    conv2 = next(n for n in quantized.graph.node if n.name == "conv2")
    dq = producers[conv2.input[1]]
    assert {a.name: a.i for a in dq.attribute}.get("axis", None) == 0
    assert list(inits[dq.input[1]].dims) == [8]  # one scale per output channel
    _, per_tensor = run_int8(conv_stack(), context(), per_channel=False)
    assert per_tensor.figures["weights"] == "int8 per-tensor"


def test_defaults_are_uint8_activations_int8_weights():
    quantized, report = run_int8(conv_stack(), context())
    producers = dq_producers(quantized)
    inits = {t.name: t for t in quantized.graph.initializer}
    conv2 = next(n for n in quantized.graph.node if n.name == "conv2")
    activation_zp = inits[producers[conv2.input[0]].input[2]]
    weight_zp = inits[producers[conv2.input[1]].input[2]]
    assert activation_zp.data_type == onnx.TensorProto.UINT8
    assert weight_zp.data_type == onnx.TensorProto.INT8
    assert report.figures["activations"] == "uint8"
    assert report.figures["weights"] == "int8 per-channel"


def test_exclude_by_name_glob_and_op_type():
    quantized, report = run_int8(conv_stack(), context(), exclude=("conv2*", "Gemm"))
    producers = dq_producers(quantized)
    nodes = {n.name: n for n in quantized.graph.node}
    assert nodes["conv2"].input[1] == "conv2_w"  # weight left in float
    assert nodes["fc"].input[1] == "fc_w"
    assert nodes["conv1"].input[1] in producers  # conv1 still quantized
    skipped = {s["node"]: s["reason"] for s in report.skipped}
    assert skipped["conv2"] == "excluded by exclude=conv2*"
    assert skipped["fc"] == "excluded by exclude=Gemm"
    assert report.figures["excluded_nodes"] == 2


def test_exclude_pattern_matching_nothing_warns():
    _, report = run_int8(conv_stack(), context(), exclude=("nothing_like_this",))
    assert any("matches no node" in w for w in report.warnings)


def test_calib_random_quantizes_with_a_warning():
    quantized, report = run_int8(conv_stack(), None, calib="random", samples=4)
    assert report.skipped_reason is None
    assert "QuantizeLinear" in op_types(quantized)
    assert any("random data" in w for w in report.warnings)
    assert report.figures["calibration_samples"] == 4
    assert report.figures["library_check"].startswith("not run")  # nothing to judge accuracy on


def test_missing_calibration_data_skips_with_the_reason():
    model = conv_stack()
    quantized, report = run_int8(model, PassContext())
    assert report.skipped_reason == "needs calibration data: pass --data"
    assert op_types(quantized) == op_types(model)


def test_already_quantized_model_is_skipped():
    quantized, _ = run_int8(conv_stack(), context())
    again, report = run_int8(quantized, context())
    assert "already quantized" in report.skipped_reason
    assert "QuantizeLinear" in report.skipped_reason
    assert len(again.graph.node) == len(quantized.graph.node)


def test_model_without_float_tensors_is_skipped():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["a", "b"], ["c"], name="add")], "ints",
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, [2]) for n in ("a", "b")],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.INT64, [2])])
    _, report = run_int8(make_model(graph), context())
    assert report.skipped_reason == "the model has no float32 tensors to quantize"


@pytest.mark.parametrize("feeds, fragment", [
    ({"image": np.zeros((2, 3, 8, 8), np.float32)}, "missing 'x'"),
    ({"x": np.zeros((2, 3, 16), np.float32)}, "rank 4"),
    ({"x": np.zeros((2, 4, 8, 8), np.float32)}, "dimension 1 differs"),
    ({"x": np.zeros((2, 3, 8, 8), bool)}, "the model wants float32"),
])
def test_mismatching_calibration_data_is_a_one_line_input_error(feeds, fragment):
    with pytest.raises(InputError) as excinfo:
        run_int8(conv_stack(), context(lambda: iter([feeds]), "data.npz"))
    message = str(excinfo.value)
    assert fragment in message and message.startswith("data.npz")
    assert "\n" not in message


def test_empty_calibration_set_is_an_input_error():
    with pytest.raises(InputError, match="empty"):
        run_int8(conv_stack(), context(lambda: iter([]), "images/"))


def test_input_error_goes_through_the_pipeline_unchanged():
    bad = context(lambda: iter([{"x": np.zeros((1, 3, 5, 5), np.float32)}]))
    with pytest.raises(InputError):
        onnxopt.optimize(conv_stack(), "int8", context=bad)


def test_calibration_streams_one_batch_at_a_time():
    """The pass never holds more than one batch of the data, however many there are."""
    live = {"now": 0, "max": 0}

    def make_batch(rng):
        array = rng.random((8, 3, 8, 8), dtype=np.float32)
        live["now"] += 1
        live["max"] = max(live["max"], live["now"])
        weakref.finalize(array, lambda: live.__setitem__("now", live["now"] - 1))
        return array

    def batches():
        rng = np.random.default_rng(0)
        for _ in range(12):
            yield {"x": make_batch(rng)}

    _, report = run_int8(conv_stack(), context(batches), samples=96)
    assert report.figures["calibration_samples"] == 96
    assert live["max"] == 1


def test_samples_limits_the_calibration_set():
    pulled = []

    def batches():
        for i in range(100):
            pulled.append(i)
            yield {"x": np.full((8, 3, 8, 8), 0.5, np.float32)}

    _, report = run_int8(conv_stack(), context(batches), samples=10, bias_correction=False, library_check=False)
    assert report.figures["calibration_samples"] == 10
    assert pulled == [0, 1]  # the stream is not read past the samples it needs
    pulled.clear()
    run_int8(conv_stack(), context(batches), samples=10, library_check=False)
    assert pulled == [0, 1, 0, 1]  # bias correction reads the same samples once more
    pulled.clear()
    run_int8(conv_stack(), context(batches), samples=10)
    assert pulled == [0, 1, 0, 1, 0]  # the library check reads the first 8 once more


def test_nothing_is_printed_to_stdout(capsys):
    run_int8(conv_stack(), context(), method="entropy")
    assert capsys.readouterr().out == ""


def test_unnamed_nodes_and_old_opset_are_handled():
    model = conv_stack(opset=11, names=False)
    quantized, report = run_int8(model, context())
    assert report.skipped_reason is None
    assert report.figures["opset"] == "11 -> 13"
    feeds = evaluation_feeds()
    assert cosine(run_ort(model, feeds)[0], run_ort(quantized, feeds)[0]) > 0.99


def _model_with_colliding_names() -> onnx.ModelProto:
    """conv_stack with a BatchNormalization 'bn' whose scale weight is named 'bn_scale', as
    Keras exports name them: the quantizer names the scale of the activation 'bn' the same way."""
    model = conv_stack()
    rng = np.random.default_rng(3)
    bn = {"bn_scale": rng.random(8) + 0.5, "bn_bias": rng.random(8), "bn_mean": rng.random(8), "bn_var": rng.random(8) + 0.5}
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in bn.items())
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    conv2.input[0] = "bn"
    index = [n.name for n in model.graph.node].index("conv2")
    model.graph.node.insert(index, onnx.helper.make_node(
        "BatchNormalization", ["r1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"], name="bn"))
    onnx.checker.check_model(model)
    return model


def test_colliding_initializer_names_are_renamed():
    model = _model_with_colliding_names()
    quantized, report = run_int8(model, context(), preprocess=False)
    assert report.skipped_reason is None
    assert report.figures["renamed_initializers"] == 1
    feeds = evaluation_feeds()
    assert cosine(run_ort(model, feeds)[0], run_ort(quantized, feeds)[0]) > 0.99


def test_colliding_names_break_the_quantizer_without_the_rename(monkeypatch):
    """The trap is real: without renaming, the quantized model fails to run (the pass skips)."""
    from onnxopt.passes import _quant_common

    monkeypatch.setattr(_quant_common, "rename_colliding", lambda model: [])
    _, report = run_int8(_model_with_colliding_names(), context(), preprocess=False)
    assert report.skipped_reason is not None
    assert "running it fails" in report.skipped_reason and "QuantizeLinear" in report.skipped_reason


@pytest.mark.parametrize("vnni", [True, False])
def test_per_channel_failure_falls_back_per_layer(monkeypatch, host, vnni):
    """Where per-channel quantization fails on Gemm/MatMul weights, those go per-tensor —
    also with reduce_range's per-weight overrides in play (a CPU without VNNI)."""
    host(hostcpu.IntegerKernels(x86=True, vnni=vnni))
    original = QuantizeStaticPass._quantize

    def failing(self, path, ranges, per_channel, excluded, overrides, reduce_range, **keywords):
        if per_channel and "fc_w" not in overrides:
            raise ValueError("per-channel quantization failed on fc_w")
        return original(self, path, ranges, per_channel, excluded, overrides, reduce_range, **keywords)

    monkeypatch.setattr(QuantizeStaticPass, "_quantize", failing)
    quantized, report = run_int8(conv_stack(), context())
    assert report.skipped_reason is None
    fallbacks = {s["node"]: s for s in report.skipped if s.get("fallback") == "per-tensor"}
    assert set(fallbacks) == {"fc", "head"}
    assert "per-channel quantization failed on fc_w" in fallbacks["fc"]["reason"]
    assert report.figures["per_channel_fallbacks"] == 2
    producers = dq_producers(quantized)
    inits = {t.name: t for t in quantized.graph.initializer}
    conv2 = next(n for n in quantized.graph.node if n.name == "conv2")
    assert list(inits[producers[conv2.input[1]].input[1]].dims) == [8]  # convs stay per-channel
    fc = next(n for n in quantized.graph.node if n.name == "fc")
    assert list(inits[producers[fc.input[1]].input[1]].dims) in ([], [1])  # the Gemm went per-tensor


def test_quantizer_failure_skips_the_pass(monkeypatch):
    def failing(self, *args, **keywords):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(QuantizeStaticPass, "_quantize", failing)
    model = conv_stack()
    quantized, report = run_int8(model, context())
    assert report.skipped_reason == "onnxruntime quantization failed: boom"
    assert op_types(quantized) == op_types(model)


def test_option_validation():
    cls = get("int8")
    with pytest.raises(UsageError, match="weights=int8"):
        build_options(cls, {"activations": "int8", "weights": "uint8"})
    with pytest.raises(UsageError, match="samples"):
        build_options(cls, {"samples": "0"})
    with pytest.raises(UsageError, match="did you mean"):
        build_options(cls, {"method": "entropie"})
    options = build_options(cls, {"exclude": "conv1*|Gemm", "method": "minmax"})
    assert options.exclude == ("conv1*", "Gemm")


def test_int8_through_the_pipeline():
    quantized, report = onnxopt.optimize(conv_stack(), "int8:method=minmax", context=context())
    assert report.passes[0].modified and report.passes[0].status == "modified"
    feeds = evaluation_feeds()
    assert cosine(run_ort(conv_stack(), feeds)[0], run_ort(quantized, feeds)[0]) > 0.99


# ---------------------------------------------------------------- real models


def _cifar_images(count: int, raw: bool) -> list[np.ndarray]:
    from PIL import Image

    files = sorted((SHARED_IMAGES / "imagenet").glob("*.JPEG"))[:count]
    out = []
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB").resize((32, 32)), dtype=np.float32)
        if not raw:
            image = (image / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        out.append(image.transpose(2, 0, 1).astype(np.float32))
    return out


def _int8_on_photos(model_file: str, count: int, raw: bool):
    """A shared CIFAR model quantized on the first 32 of ``count`` photos: (model, int8, report, the others)."""
    path = shared_model(model_file)
    if not (SHARED_IMAGES / "imagenet").exists():
        pytest.skip("needs ../shared/images/imagenet")
    model = onnx.load(str(path))
    images = np.stack(_cifar_images(count, raw=raw))
    calibration = PassContext(calibration=lambda: iter([{"input": images[:32]}]), calibration_description="32 photos")
    quantized, report = run_int8(model, calibration)
    assert report.skipped_reason is None
    return model, quantized, report, images[32:]


def test_vgg_style_cifar10_keras_traps(real_cpu):
    """Colliding '<tensor>_scale' names (an invalid model before) and Gemm layers per-channel."""
    model, quantized, report, evaluation = _int8_on_photos("vgg_style_cifar10.onnx", 48, raw=True)
    assert report.figures["renamed_initializers"] == 6
    assert report.figures["per_channel_fallbacks"] == 0  # onnxruntime 1.31 handles its Gemms per-channel
    onnx.checker.check_model(quantized)
    feeds = {"input": evaluation}
    reference = run_ort(model, feeds)[0].astype(np.float64) + 1e-6  # ReLU logits: many exact zeros
    candidate = run_ort(quantized, feeds)[0].astype(np.float64) + 1e-6
    cosines = (reference * candidate).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(candidate, axis=1)
    # percentile calibration: mean cosine 0.9996 on 16 photos; MinMax gave 0.899 (outliers stretch ranges)
    assert cosines.mean() > 0.99


def test_calibration_data_the_model_cannot_run_is_a_one_line_input_error():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", "K"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])],
        [onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    data = PassContext(calibration=lambda: iter([{"x": np.ones((2, 5), np.float32)}]), calibration_description="x.npz")
    with pytest.raises(InputError) as excinfo:
        run_int8(make_model(graph), data, preprocess=False)
    assert str(excinfo.value).startswith("x.npz: the model cannot run on sample 1:")
    assert "\n" not in str(excinfo.value)


def test_resnet20_int8_defaults_keep_agreement_on_this_cpu(real_cpu):
    """The defaults suit the host: without VNNI, 8-bit weights saturated u8×s8 kernels here
    (an AVX2 EPYC: agreement 0.85, softmax KL 0.19 on 400 photos; 7-bit 0.94 / 0.021)."""
    model, quantized, report, evaluation = _int8_on_photos("resnet20_cifar10.onnx", 128, raw=False)
    feeds = {"input": evaluation}
    reference, candidate = run_ort(model, feeds)[0], run_ort(quantized, feeds)[0]

    def log_softmax(x):
        x = x.astype(np.float64) - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    p, q = log_softmax(reference), log_softmax(candidate)
    kl = float(np.mean(np.sum(np.exp(p) * (p - q), axis=1)))
    assert kl < 0.06, (kl, report.figures["reduce_range"])
    assert np.mean(reference.argmax(1) == candidate.argmax(1)) >= 0.88


def _run_exact_integer(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """onnxruntime's x64quantprecision mode: integer kernels that accumulate exactly (u8×u8),
    i.e. the results a VNNI CPU computes, on any x86 CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in hostcpu.EXACT_INTEGER_KERNELS.items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def test_reduce_range_auto_model_computes_what_exact_kernels_compute(real_cpu):
    """What reduce_range=auto is for: this host's integer kernels give (almost) the results of
    exactly accumulating ones. Where u8×s8 pairs saturate, 8-bit weights visibly do not."""
    model, quantized, report, evaluation = _int8_on_photos("resnet20_cifar10.onnx", 128, raw=False)
    feeds = {"input": evaluation}
    here = run_ort(quantized, feeds)[0]
    assert _mean_cosine(here, _run_exact_integer(quantized, feeds)) > 0.9995, report.figures["reduce_range"]
    if not real_cpu.u8s8_saturates:
        return
    calibration = np.stack(_cifar_images(32, raw=False))  # the same 32 photos the defaults saw
    eight_bit, _ = run_int8(model, PassContext(calibration=lambda: iter([{"input": calibration}])), reduce_range=False)
    assert _mean_cosine(run_ort(eight_bit, feeds)[0], _run_exact_integer(eight_bit, feeds)) < 0.999


def test_gate_validates_forced_8_bit_weights_as_exact_kernels_compute(real_cpu, tmp_path):
    """reduce_range=false on a CPU whose u8×s8 kernels saturate means a VNNI target: the
    gate measures what that target computes, ``compare`` (this CPU's kernels) does not."""
    if not real_cpu.u8s8_saturates:
        pytest.skip("this CPU's integer kernels accumulate exactly: its own runs are the target's")
    path = shared_model("resnet20_cifar10.onnx")
    if not (SHARED_IMAGES / "imagenet").exists():
        pytest.skip("needs ../shared/images/imagenet")
    data, out = tmp_path / "photos.npz", tmp_path / "int8.onnx"
    np.savez(data, input=np.stack(_cifar_images(96, raw=False)))
    tolerance = ("--min-cosine", "0.95")  # worst sample here: 0.979 with exact kernels, 0.66 without
    result = cli("optimize", str(path), "--passes", "int8:reduce_range=false", "--data", str(data), "-o", str(out),
                 "--json", *tolerance)
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["passes"][0]["validate_with"] == hostcpu.EXACT_INTEGER_KERNELS
    assert any("x64quantprecision=1" in note for note in report["validation"]["notes"])
    here = cli("compare", str(path), str(out), "--data", str(data), *tolerance)
    assert here.returncode == 1, here.stdout.decode()
    as_target = cli("compare", str(path), str(out), "--data", str(data), "--exact-int8", *tolerance)
    assert as_target.returncode == 0, as_target.stdout.decode()
