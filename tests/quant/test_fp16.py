"""``fp16``: float16 conversion that loads in onnxruntime, converter bugs repaired, mixed=auto."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import onnxopt
from onnxopt.passbase import PassContext
from onnxopt.passes import fp16 as fp16_module
from onnxopt.passes.fp16 import ConvertFloat16Options, ConvertFloat16Pass
from onnxopt.passes.quantize_static import QuantizeStaticOptions, QuantizeStaticPass
from tests.helpers import SHARED_IMAGES, make_model, parse_model, run_ort, shared_model
from tests.quant.models import conv_stack, cosine, image_batches, op_types


def run_fp16(model: onnx.ModelProto, context: PassContext | None = None, **options):
    opt_pass = ConvertFloat16Pass(ConvertFloat16Options(**options), context)
    result = opt_pass(ir.from_proto(model))
    return ir.to_proto(result.model), opt_pass.report


def elem_types(values) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in values}


def cast_chains(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(first, second) for every Cast whose input is another Cast's output."""
    producers = {o: n for n in model.graph.node for o in n.output}
    chains = []
    for node in model.graph.node:
        if node.op_type == "Cast" and node.input[0] in producers and producers[node.input[0]].op_type == "Cast":
            chains.append((producers[node.input[0]].name, node.name))
    return chains


def test_conv_model_loads_and_matches_fp32():
    model = conv_stack()
    converted, report = run_fp16(model)
    assert report.skipped_reason is None
    feeds = {"x": np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)}
    assert cosine(run_ort(model, feeds)[0], run_ort(converted, feeds)[0]) >= 0.999
    assert elem_types(converted.graph.input) == {"x": TensorProto.FLOAT}  # keep_io_types
    assert elem_types(converted.graph.output) == {"y": TensorProto.FLOAT}
    assert {t.data_type for t in converted.graph.initializer} == {TensorProto.FLOAT16}
    assert report.figures["nodes_fp16"] == 8 and report.figures["nodes_fp32"] == 0
    assert cast_chains(converted) == []


def test_keep_io_types_off_makes_the_interface_float16():
    converted, _ = run_fp16(conv_stack(), keep_io_types=False)
    assert elem_types(converted.graph.input) == {"x": TensorProto.FLOAT16}
    assert elem_types(converted.graph.output) == {"y": TensorProto.FLOAT16}
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float16)
    assert run_ort(converted, {"x": x})[0].dtype == np.float16


def test_cpu_runs_are_warned_that_fp16_is_for_cuda():
    _, report = run_fp16(conv_stack())
    assert any("slower than FP32 on CPU" in w for w in report.warnings)
    _, on_cuda = run_fp16(conv_stack(), PassContext(providers=("cpu", "cuda")))
    assert not any("slower" in w for w in on_cuda.warnings)


CAST_TO_FLOAT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1,4] x, int64[1,4] i) => (float[1,4] y) {
  c = Cast<to=1>(i)
  s = Add(x, c)
  d = Cast<to=1>(s)
  y = Relu(d)
}"""


def test_cast_to_float_is_retargeted_issue_320():
    """The converter retypes a Cast(to=float)'s output float16 but keeps to=float: load error."""
    from onnxconverter_common import float16

    model = parse_model(CAST_TO_FLOAT)
    raw = float16.convert_float_to_float16(model, keep_io_types=True)
    with pytest.raises(Exception, match="does not match expected type"):
        run_ort(raw, {"x": np.ones((1, 4), np.float32), "i": np.ones((1, 4), np.int64)})
    converted, report = run_fp16(model)
    assert report.skipped_reason is None
    feeds = {"x": np.array([[0.5, -1.0, 2.0, 3.0]], np.float32), "i": np.array([[1, 2, 3, 4]], np.int64)}
    np.testing.assert_allclose(run_ort(converted, feeds)[0], run_ort(model, feeds)[0], rtol=1e-3)
    assert cast_chains(converted) == []


def test_unnamed_nodes_around_blocked_ops_load():
    """The converter names its Casts after nodes: two unnamed ones gave duplicate names."""
    model = parse_model("""<ir_version: 10, opset_import: ["" : 17]>
    g (float[1,4] x) => (float[1,4] y) {
      a = Relu(x)
      b = Max(a, a)
      c = Min(b, b)
      y = Relu(c)
    }""")
    converted, report = run_fp16(model)
    assert report.skipped_reason is None
    x = np.array([[0.5, -1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_allclose(run_ort(converted, {"x": x})[0], run_ort(model, {"x": x})[0], rtol=1e-3)
    assert cast_chains(converted) == []  # Max → Min stay float32 without a Cast pair between them


def test_initializer_shared_by_blocked_and_converted_nodes():
    """'Type parameter (T) bound to different types' in the raw converter output."""
    model = parse_model("""<ir_version: 10, opset_import: ["" : 17]>
    g (float[1,4] x) => (float[1,4] y) <float[1,4] w = {1.0, 2.0, 3.0, 4.0}> {
      a = Add(x, w)
      b = Max(a, w)
      y = Mul(b, w)
    }""")
    converted, report = run_fp16(model)
    assert report.skipped_reason is None
    x = np.array([[0.5, -1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_allclose(run_ort(converted, {"x": x})[0], run_ort(model, {"x": x})[0], rtol=1e-3)


RESIZE_CONSTANT_SCALES = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1,3,8,8] x) => (float[1,3,16,16] y) {
  r = Relu(x)
  roi = Constant<value = float[0] {}>()
  sc = Constant<value = float[4] {1.0, 1.0, 2.0, 2.0}>()
  z = Resize<mode="nearest">(r, roi, sc)
  y = Relu(z)
}"""


def test_resize_stays_float32_with_exact_constant_scales():
    model = parse_model(RESIZE_CONSTANT_SCALES)
    converted, report = run_fp16(model)
    assert report.skipped_reason is None
    assert any(s["node"].startswith("Resize") and "block list" in s["reason"] for s in report.skipped)
    constants = [n for n in converted.graph.node if n.op_type == "Constant"]
    assert all(n.attribute[0].t.data_type == TensorProto.FLOAT for n in constants)  # scales not rounded
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(run_ort(converted, {"x": x})[0], run_ort(model, {"x": x})[0], rtol=1e-3)


def test_resize_scales_are_kept_float32_when_resize_is_converted(monkeypatch):
    """With Resize converted, float16 scales are invalid (onnxruntime issue 8327): kept float32."""
    monkeypatch.setattr(fp16_module, "default_block_ops", lambda: ())
    model = parse_model(RESIZE_CONSTANT_SCALES)
    converted, report = run_fp16(model)
    assert report.skipped_reason is None
    resize = next(n for n in converted.graph.node if n.op_type == "Resize")
    types = {t.name: t.data_type for t in converted.graph.initializer}
    assert types[resize.input[2]] == TensorProto.FLOAT
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(run_ort(converted, {"x": x})[0], run_ort(model, {"x": x})[0], rtol=1e-3)


def test_block_ops_and_exclude_keep_nodes_float32():
    converted, report = run_fp16(conv_stack(), block_ops=("Gemm",), exclude=("conv2",))
    reasons = {s["node"]: s["reason"] for s in report.skipped}
    assert reasons["conv2"] == "excluded by exclude=conv2"
    assert "block list" in reasons["fc"]
    types = {t.name: t.data_type for t in converted.graph.initializer}
    assert types["conv2_w"] == TensorProto.FLOAT and types["fc_w"] == TensorProto.FLOAT
    assert types["conv1_w"] == TensorProto.FLOAT16
    feeds = {"x": np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)}
    assert cosine(run_ort(conv_stack(), feeds)[0], run_ort(converted, feeds)[0]) >= 0.999


def test_constant_beyond_float16_range_keeps_its_node_float32():
    model = parse_model("""<ir_version: 10, opset_import: ["" : 17]>
    g (float[1,4] x) => (float[1,4] y) <float k = {100000.0}, float j = {0.00001}> {
      a = Mul(x, k)
      y = Mul(a, j)
    }""")
    _, report = run_fp16(model)
    reasons = {s["node"]: s["reason"] for s in report.skipped}
    assert "exceeds the float16 range" in reasons["Mul_0"]


# An fp16-unfriendly node: 1000.3 is 1000.5 in float16, so "offset" shifts every value by 0.2.
_W = ", ".join(str(v) for v in np.round(np.random.default_rng(5).standard_normal(256) * 0.3, 4))
UNFRIENDLY = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N,16] x) => (float[N,16] y) <float c = {1000.3}, float d = {1000.0}, float[16,16] w = {W}> {
  r = Relu(x)
  a = Add(r, c)
  b = Sub(a, d)
  y = MatMul(b, w)
}""".replace("{W}", "{" + _W + "}")


def _unfriendly():
    model = parse_model(UNFRIENDLY)
    for node, name in zip(model.graph.node, ["relu", "offset", "unoffset", "project"]):
        node.name = name
    return model


def test_mixed_auto_keeps_the_unfriendly_node_in_float32():
    model = _unfriendly()
    rng = np.random.default_rng(1)
    data = [{"x": (rng.standard_normal((4, 16)) * 0.2).astype(np.float32)} for _ in range(4)]
    context = PassContext(calibration=lambda: iter(data), calibration_description="4 batches")
    test = {"x": (np.random.default_rng(2).standard_normal((8, 16)) * 0.2).astype(np.float32)}
    reference = run_ort(model, test)[0]

    plain, _ = run_fp16(model, context)
    assert cosine(reference, run_ort(plain, test)[0]) < 0.999

    mixed, report = run_fp16(model, context, mixed="auto")
    kept = {s["node"]: s for s in report.skipped}
    assert "offset" in kept and "relu" not in kept and "project" not in kept
    assert "mixed=auto" in kept["offset"]["reason"] and kept["offset"]["cosine"] < 0.999
    assert report.figures["worst_cosine"] >= 0.999
    assert report.figures["mixed_provider"] == "cpu"
    assert cosine(reference, run_ort(mixed, test)[0]) >= 0.999
    types = {t.name: t.data_type for t in mixed.graph.initializer}
    assert types["c"] == TensorProto.FLOAT and types["w"] == TensorProto.FLOAT16


def test_mixed_auto_without_data_uses_random_inputs_with_a_warning():
    _, report = run_fp16(_unfriendly(), PassContext(), mixed="auto", samples=4)
    assert any("random inputs" in w for w in report.warnings)
    assert report.figures["mixed_samples"] == 4


def test_mixed_auto_measures_on_the_context_provider(monkeypatch):
    used = []
    from onnxopt.passes import _mixed_precision

    real_run = _mixed_precision._run

    def spy(proto, feeds, provider, fp16_inputs):
        used.append(provider)
        return real_run(proto, feeds, "cpu", fp16_inputs)

    monkeypatch.setattr(_mixed_precision, "_run", spy)
    run_fp16(conv_stack(), PassContext(calibration=image_batches(1, 2), providers=("cpu", "cuda")), mixed="auto")
    assert used and set(used) == {"cuda"}


def test_already_float16_quantized_and_integer_models_are_skipped():
    converted, _ = run_fp16(conv_stack())
    _, again = run_fp16(converted)
    assert "already has float16" in again.skipped_reason

    quantizer = QuantizeStaticPass(QuantizeStaticOptions(method="minmax"), PassContext(calibration=image_batches()))
    quantized = ir.to_proto(quantizer(ir.from_proto(conv_stack())).model)
    _, on_int8 = run_fp16(quantized)
    assert "quantized" in on_int8.skipped_reason

    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "ints",
                              [helper.make_tensor_value_info(n, TensorProto.INT32, [2]) for n in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.INT32, [2])])
    _, ints = run_fp16(make_model(graph))
    assert ints.skipped_reason == "the model has no float32 tensors to convert"


def test_a_node_onnxruntime_rejects_is_kept_float32(monkeypatch):
    """If the converted model still does not load, the named node goes back to float32."""
    real_check = fp16_module.qc.check_loads

    def picky(proto, feeds=None):
        conv2 = next(n for n in proto.graph.node if n.name == "conv2")
        weights = {t.name: t.data_type for t in proto.graph.initializer}
        if weights.get(conv2.input[1]) == TensorProto.FLOAT16:
            return "Type Error: Type (tensor(float16)) of input parameter (w) of operator (Conv) in node (conv2) is invalid."
        return real_check(proto, feeds)

    monkeypatch.setattr(fp16_module.qc, "check_loads", picky)
    converted, report = run_fp16(conv_stack())
    assert report.skipped_reason is None
    reasons = {s["node"]: s["reason"] for s in report.skipped}
    assert reasons["conv2"].startswith("onnxruntime rejected it in float16")


def test_fp16_through_the_pipeline_and_idempotent():
    converted, report = onnxopt.optimize(conv_stack(), "fp16")
    assert report.passes[0].status == "modified"
    again, second = onnxopt.optimize(converted, "fp16")
    assert second.passes[0].status == "skipped"
    assert op_types(again) == op_types(converted)


# ---------------------------------------------------------------- real models

REAL = {
    "mobilenet_v2_imagenet.onnx": ("input", "nchw"),
    "efficientnet_lite0_imagenet.onnx": ("input", "nchw"),
    "resnet56_cifar10.onnx": ("input", "cifar"),
    "resnet50_half_open_nsfw_opset9.onnx": ("input:0", "nhwc"),
}


def _real_feeds(layout: str, count: int = 4) -> np.ndarray:
    from PIL import Image

    files = sorted((SHARED_IMAGES / "imagenet").glob("*.JPEG"))[:count]
    size = 32 if layout == "cifar" else 224
    images = [np.asarray(Image.open(f).convert("RGB").resize((size, size)), dtype=np.float32) for f in files]
    x = np.stack(images)
    if layout == "nhwc":
        return np.ascontiguousarray(x[..., ::-1] - np.array([104.0, 117.0, 123.0], np.float32))
    return ((x / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).transpose(0, 3, 1, 2).astype(np.float32)


@pytest.mark.parametrize("name", sorted(REAL))
def test_fp16_real_models_load_and_stay_within_0999(name):
    path = shared_model(name)
    if not (SHARED_IMAGES / "imagenet").exists():
        pytest.skip("needs ../shared/images/imagenet")
    model = onnx.load(str(path))
    converted, report = run_fp16(model)
    assert report.skipped_reason is None
    input_name, layout = REAL[name]
    feeds = {input_name: _real_feeds(layout)}
    assert cosine(run_ort(model, feeds)[0], run_ort(converted, feeds)[0]) >= 0.999
    assert cast_chains(converted) == []



# ---------------------------------------------------------------- what onnxruntime cannot run in float16

#: The probes of tests/quant/fp16_probes.py that onnxruntime's CPU provider cannot run when
#: every float tensor is float16, measured (1.31) in a child process: "load" (an error
#: creating the session) or the signal that killed it. Everything else — LSTM, GRU, RNN,
#: Resize cubic, Einsum, TopK, RoiAlign, InstanceNormalization, ConvTranspose, CumSum,
#: GridSample, ... — runs. The README's fp16 section lists these.
FAILS_IN_FLOAT16 = {
    "NonMaxSuppression": "load",  # no float16 kernel: type error
    "Range": "load",  # no float16 kernel: type error
    # MatmulTransposeFusion folding a batch-moving Transpose into FusedMatMul
    "Transpose [1,0,2] -> MatMul": "SIGSEGV",
    "Transpose [1,2,0] -> MatMul B": "SIGSEGV",
    "Transpose [1,2,0,3] -> MatMul": "SIGSEGV",
    "Transpose [1,2,3,0] -> MatMul B": "SIGSEGV",
}


def test_float16_probes_fail_exactly_where_measured():
    """Each probe's float32 build runs (the control); its float16 build fails only where listed."""
    from onnxopt.runtime.isolation import Job, run_isolated_many
    from tests.quant.fp16_probes import PROBES

    jobs = []
    for probe in PROBES.values():
        model, feeds = probe.build(np.float32)
        run_ort(model, feeds)  # float32 never crashed: in-process
        model16, feeds16 = probe.build(np.float16)
        jobs.append(Job(model16.SerializeToString(), feeds16))
    results = run_isolated_many(jobs)
    failing = {name: (r.signal if r.crashed else r.stage) for name, r in zip(PROBES, results) if not r.ok}
    assert failing == FAILS_IN_FLOAT16, {name: r.describe() for name, r in zip(PROBES, results) if not r.ok}
    # Failing ops are in the pass's block list; failing patterns are what its Transpose rule keeps.
    blocked = set(fp16_module.default_block_ops())
    for name in failing:
        op = PROBES[name].op_type
        assert op in blocked or (op == "Transpose" and "MatMul" in name), name


def test_fp16_output_of_every_probe_runs_in_onnxruntime(monkeypatch):
    """The pass's result for each float32 probe loads and runs (in a child: a crash must not kill pytest).

    The pass's own last check (its model in a child process) is off: its rules alone must do it.
    """
    from onnxopt.runtime.isolation import Job, run_isolated_many
    from tests.quant.fp16_probes import PROBES

    monkeypatch.setattr(ConvertFloat16Pass, "_run_isolated", lambda self, base, converted: None)
    jobs, reports = [], {}
    for name, probe in PROBES.items():
        model, feeds = probe.build(np.float32)
        converted, reports[name] = run_fp16(model)
        jobs.append(Job(converted.SerializeToString(), feeds))
    results = run_isolated_many(jobs)
    broken = {name: r.describe() for name, r in zip(PROBES, results) if not r.ok}
    assert broken == {}
    reasons = {s["node"]: s["reason"] for s in reports["Transpose [1,0,2] -> MatMul"].skipped}
    assert "MatMul" in reasons["transpose"] and "crash" in reasons["transpose"]
    assert reports["Transpose [0,2,1] -> MatMul"].figures["nodes_fp32"] == 0  # only the crashing perms


def test_resize_cubic_stays_float32_and_runs():
    from onnxopt.runtime.isolation import run_isolated
    from tests.quant.fp16_probes import PROBES

    model, feeds = PROBES["Resize cubic NCHW"].build(np.float32)
    converted, report = run_fp16(model)
    assert any(s["op"] == "Resize" and "block list" in s["reason"] for s in report.skipped)
    resize = next(n for n in converted.graph.node if n.op_type == "Resize")
    types = {v.name: v.type.tensor_type.elem_type for v in [*converted.graph.value_info, *converted.graph.input]}
    assert types.get(resize.input[0], TensorProto.FLOAT) == TensorProto.FLOAT
    assert run_isolated(converted.SerializeToString(), feeds).ok


def _fake_isolated(outcome):
    """A stand-in for isolation.run_isolated that answers ``outcome(model_proto)`` (an IsolatedRun)."""

    def fake(model, feeds=None, providers=("cpu",), **kwargs):
        return outcome(onnx.load_from_string(model))

    return fake


def test_a_node_onnxruntime_fails_to_run_in_float16_is_kept_float32(monkeypatch):
    """Run-time errors name the node ("running Conv node. Name:'conv2'"): it goes back to float32."""
    from onnxopt.runtime import isolation

    def outcome(proto):
        conv2 = next(n for n in proto.graph.node if n.name == "conv2")
        weights = {t.name: t.data_type for t in proto.graph.initializer}
        if weights.get(conv2.input[1]) == TensorProto.FLOAT16:
            return isolation.IsolatedRun(False, "cpu", "run", error="Non-zero status code returned while running "
                                         "Conv node. Name:'conv2' Status Message: something")
        return isolation.IsolatedRun(True)

    monkeypatch.setattr(fp16_module.isolation, "run_isolated", _fake_isolated(outcome))
    converted, report = run_fp16(conv_stack())
    assert report.skipped_reason is None
    reasons = {s["node"]: s["reason"] for s in report.skipped}
    assert reasons["conv2"].startswith("onnxruntime cannot run it in float16")


def test_a_crash_the_pass_cannot_place_skips_the_pass(monkeypatch):
    from onnxopt.runtime import isolation

    crash = isolation.IsolatedRun(False, "cpu", "load", signal="SIGSEGV", exitcode=-11)
    monkeypatch.setattr(fp16_module.isolation, "run_isolated", _fake_isolated(lambda proto: crash))
    converted, report = run_fp16(conv_stack())
    assert report.skipped_reason == ("the float16 model crashed onnxruntime (signal SIGSEGV) on cpu while creating "
                                     "the session: kept float32")
    assert op_types(converted) == op_types(conv_stack())


@pytest.mark.shared
def test_easyocr_fp16_optimize_does_not_die_by_a_signal(tmp_path):
    """The float16 EasyOCR recognizer crashed onnxruntime's CPU provider in the gate (exit -11, no message)."""
    import subprocess
    import sys

    path = shared_model("easyocr_en_g2_rec.onnx")
    out = tmp_path / "out.onnx"
    run = subprocess.run([sys.executable, "-m", "onnxopt", "optimize", str(path), "--passes", "fp16", "-o", str(out),
                          "--input-shape", "input:1x1x64x128", "--samples", "2", "-q"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode >= 0, f"died by signal {-run.returncode}"
    assert run.returncode == 0, run.stderr
    assert out.exists()
    model = onnx.load(str(out))
    assert any(n.op_type == "LSTM" for n in model.graph.node)
    x = np.random.default_rng(0).random((1, 1, 64, 128), dtype=np.float32)
    original = onnx.load(str(path))
    assert cosine(run_ort(original, {"input": x})[0], run_ort(model, {"input": x})[0]) >= 0.999
