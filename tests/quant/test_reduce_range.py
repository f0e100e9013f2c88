"""``reduce_range``: 7-bit weights where the host's u8×s8 kernels saturate (x86 without VNNI)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.errors import UsageError
from onnxopt.passbase import PassContext
from onnxopt.registry import build_options, get
from onnxopt.runtime import cpu as hostcpu
from tests.helpers import make_model
from tests.quant.models import conv_stack
from tests.quant.test_int8 import context, dq_producers, run_int8
from tests.quant.test_int8_dynamic import mlp, run_dynamic

VNNI = hostcpu.IntegerKernels(x86=True, vnni=True)
AVX2 = hostcpu.IntegerKernels(x86=True, vnni=False)
ARM = hostcpu.IntegerKernels(x86=False, vnni=False)


def int8_weights(model) -> dict[str, np.ndarray]:
    """The int8 weight tensors that feed DequantizeLinear (static) or integer ops (dynamic)."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if t.data_type == TensorProto.INT8 and len(t.dims) >= 2}


def widest(model) -> int:
    return max(int(np.abs(w.astype(np.int32)).max()) for w in int8_weights(model).values())


# ---------------------------------------------------------------- host detection


@pytest.mark.parametrize("flags, vnni", [("fpu sse2 avx2 fma", False), ("avx2 avx512f avx512_vnni", True),
                                         ("avx2 avx_vnni", True)])
def test_vnni_is_read_from_cpuinfo_flags(monkeypatch, tmp_path, flags, vnni, real_cpu):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: {flags}\n")
    real_open = open
    monkeypatch.setattr(hostcpu.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
    hostcpu.integer_kernels.cache_clear()
    try:
        kernels = hostcpu.integer_kernels()
    finally:
        hostcpu.integer_kernels.cache_clear()
    assert kernels == hostcpu.IntegerKernels(x86=True, vnni=vnni)
    assert kernels.u8s8_saturates is not vnni
    assert hostcpu.cpu_name() == "Test CPU 9000"  # the same file gives the name (reports, auto's cache keys)


def test_non_x86_never_saturates(monkeypatch, real_cpu):
    monkeypatch.setattr(hostcpu.platform, "machine", lambda: "aarch64")
    hostcpu.integer_kernels.cache_clear()
    try:
        assert not hostcpu.integer_kernels().u8s8_saturates
    finally:
        hostcpu.integer_kernels.cache_clear()


def test_unknown_x86_is_treated_as_saturating():
    assert hostcpu.IntegerKernels(x86=True, vnni=None).u8s8_saturates
    assert "unknown" in hostcpu.IntegerKernels(x86=True, vnni=None).describe()


# ---------------------------------------------------------------- int8 (static)


def signed_batches():
    """Calibration data in [-1, 1): conv1's input is signed (a uint8 zero point near 128)."""
    def batches():
        rng = np.random.default_rng(1)
        for _ in range(4):
            yield {"x": rng.uniform(-1, 1, (8, 3, 8, 8)).astype(np.float32)}
    return batches


def width_by_node(model) -> dict[str, int]:
    """Node name -> the largest |int8 code| of its weight."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = dq_producers(model)
    widths = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and node.input[1] in producers:
            codes = inits[producers[node.input[1]].input[0]]
            if codes.dtype == np.int8:
                widths[node.name] = int(np.abs(codes.astype(np.int32)).max())
    return widths


def cheap_stem_model() -> onnx.ModelProto:
    """Conv(3→8, 3×3) stem (0.5 % of the MACs) → Relu → Conv(8→64) → Relu → Conv(64→64) →
    GlobalAveragePool → Flatten → Gemm(64→10)."""
    rng = np.random.default_rng(6)

    def w(*shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), f"w{len(shape)}_{shape[0]}_{shape[1]}")

    stem, body1, body2, fc = w(8, 3, 3, 3), w(64, 8, 3, 3), w(64, 64, 3, 3), w(10, 64)
    nodes = [
        helper.make_node("Conv", ["x", stem.name], ["s"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["rs"], name="relu0"),
        helper.make_node("Conv", ["rs", body1.name], ["b1"], name="body1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", body2.name], ["b2"], name="body2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", fc.name], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "cheap_stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], [stem, body1, body2, fc])
    return make_model(graph)


def test_auto_uses_7_bits_only_where_products_can_saturate(host):
    """Without VNNI: 7 bits for the Gemm; convs reading ReLU outputs (zero point 0, small
    codes) keep 8 bits; the cheap 3-channel stem reading signed data stays float."""
    host(AVX2)
    quantized, report = run_int8(cheap_stem_model(), context(signed_batches()))
    widths = width_by_node(quantized)
    assert "stem" not in widths
    assert widths["fc"] <= 64
    reasons = {s["node"]: s["reason"] for s in report.skipped}
    assert reasons["stem"].startswith("image stem (3 input channels, 0.5% of the MACs) left in float")
    assert report.figures["excluded_nodes"] == 1
    seven = sum(1 for width in widths.values() if width <= 64)
    assert report.figures["weights"] == f"int8 per-channel ({seven} of 3 7-bit)"
    assert report.figures["reduce_range"] == ("on (auto: x86 CPU without VNNI (AVX2 int16 u8×s8 kernels)); "
                                              f"{seven} of 3 weights 7-bit")
    assert not report.warnings


def test_a_costly_stem_is_quantized_with_7_bits_instead_of_left_float(host):
    """conv_stack's stem holds 27 % of its MACs: in float it would cost speed."""
    host(AVX2)
    quantized, report = run_int8(conv_stack(), context(signed_batches()))
    widths = width_by_node(quantized)
    assert widths["conv1"] <= 64 and widths["conv2"] == 127  # conv2 reads a ReLU output
    assert report.figures["excluded_nodes"] == 0
    assert report.figures["weights"] == "int8 per-channel (3 of 4 7-bit)"


def wide_input_conv() -> onnx.ModelProto:
    """Conv(8→8, 3×3) → Relu → Conv(8→8, 3×3): no stem (8 input channels)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32), name)
             for name in ("w1", "w2")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])],
        "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])], inits)
    return make_model(graph)


def batches_of(low: float, channels: int = 8):
    def batches():
        rng = np.random.default_rng(1)
        for _ in range(4):
            yield {"x": rng.uniform(low, 1, (8, channels, 8, 8)).astype(np.float32)}
    return batches


@pytest.mark.parametrize("low", [0.0, -1.0])
def test_auto_gives_7_bits_to_a_conv_whose_input_fills_its_range(host, low):
    """Data in [0, 1) has no zero point, but half its codes are >= 128: they saturate too."""
    host(AVX2)
    quantized, report = run_int8(wide_input_conv(), PassContext(calibration=batches_of(low)))
    assert width_by_node(quantized)["conv1"] <= 64  # 8 input channels: not a stem, so 7-bit rather than float
    assert report.figures["excluded_nodes"] == 0


def narrow_inner_conv() -> onnx.ModelProto:
    """Conv(8→3, 1×1) → Conv(3→8, 3×3): the second has 3 input channels but no graph input."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array((rng.standard_normal((3, 8, 1, 1)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w2")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["n"], name="narrow"),
         helper.make_node("Conv", ["n", "w2"], ["y"], name="inner", pads=[1, 1, 1, 1])],
        "narrow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])], inits)
    return make_model(graph)


def test_only_a_conv_reading_the_graph_input_is_a_stem(host):
    host(AVX2)
    quantized, report = run_int8(narrow_inner_conv(), PassContext(calibration=batches_of(-1.0)))
    widths = width_by_node(quantized)
    assert widths["inner"] <= 64  # 3 input channels, signed, but inside the network: 7-bit, not float
    assert report.figures["excluded_nodes"] == 0


@pytest.mark.parametrize("kernels", [VNNI, ARM])
def test_auto_keeps_8_bit_weights_where_nothing_saturates(host, kernels):
    host(kernels)
    quantized, report = run_int8(conv_stack(), context(signed_batches()))
    assert widest(quantized) == 127  # symmetric per-channel: every channel's largest weight maps to ±127
    assert set(width_by_node(quantized).values()) == {127}
    assert report.figures["weights"] == "int8 per-channel"
    assert report.figures["reduce_range"].startswith("off (auto:")


def test_auto_keeps_8_bits_for_int8_activations(host):
    """s8×s8 kernels take another path with no int16 pair sums: nothing to avoid."""
    host(AVX2)
    quantized, report = run_int8(conv_stack(), context(signed_batches()), activations="int8")
    assert set(width_by_node(quantized).values()) == {127}
    assert report.figures["reduce_range"].startswith("off")


def test_forcing_8_bits_on_a_saturating_cpu_warns_and_asks_for_exact_validation(host):
    host(AVX2)
    quantized, report = run_int8(conv_stack(), context(signed_batches()), reduce_range=False)
    assert set(width_by_node(quantized).values()) == {127}
    assert report.figures["reduce_range"] == "off (reduce_range=false)"
    assert any("saturate" in w and "reduce_range=true" in w for w in report.warnings)
    # 8 bits here mean a VNNI target: the gate is to run the model as exact kernels compute
    assert report.validate_with == hostcpu.EXACT_INTEGER_KERNELS
    assert report.to_dict()["validate_with"] == hostcpu.EXACT_INTEGER_KERNELS


@pytest.mark.parametrize("kernels, choice", [(AVX2, "auto"), (AVX2, True), (VNNI, False), (VNNI, "auto"), (ARM, False)])
def test_no_exact_validation_where_the_host_kernels_are_the_targets(host, kernels, choice):
    host(kernels)
    _, report = run_int8(conv_stack(), context(signed_batches()), reduce_range=choice)
    assert report.validate_with == {}


def test_reduce_range_true_applies_the_same_policy_on_any_host(host):
    """For quantizing on a VNNI machine for an AVX2 target: what auto does on the target."""
    host(AVX2)
    on_target, target_report = run_int8(cheap_stem_model(), context(signed_batches()))
    host(VNNI)
    forced, report = run_int8(cheap_stem_model(), context(signed_batches()), reduce_range=True)
    assert width_by_node(forced) == width_by_node(on_target)
    assert report.figures["weights"] == target_report.figures["weights"]
    assert report.figures["reduce_range"].startswith("on (reduce_range=true); ")
    assert {s["node"] for s in report.skipped} == {"stem"}
    assert not report.warnings


def depthwise_model() -> onnx.ModelProto:
    """Conv(8→8, 1×1) → depthwise Conv(8, 3×3, group 8) on signed data."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32), "pw"),
             numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32), "dw"),
             numpy_helper.from_array(np.zeros(8, np.float32), "dw_b")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "pw"], ["p"], name="pointwise"),
         helper.make_node("Conv", ["p", "dw", "dw_b"], ["y"], name="depthwise", group=8, pads=[1, 1, 1, 1])],
        "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])], inits)
    return make_model(graph)


@pytest.mark.parametrize("choice", ["auto", True])
def test_depthwise_weights_keep_8_bits(host, choice):
    """onnxruntime's depthwise kernel widens to int16 before multiplying: it cannot saturate."""
    host(AVX2)
    quantized, _ = run_int8(depthwise_model(), PassContext(calibration=batches_of(-1.0)), reduce_range=choice)
    widths = width_by_node(quantized)
    assert widths["pointwise"] <= 64  # reads the signed input
    assert widths["depthwise"] == 127
    inits = {t.name: t for t in quantized.graph.initializer}
    dq = dq_producers(quantized)[next(n for n in quantized.graph.node if n.name == "depthwise").input[1]]
    assert list(inits[dq.input[1]].dims) == [8]  # still one scale per channel (the override names the axis)


def test_7_bit_scales_cover_the_same_range(host):
    """7 bits halve the integer range, so each weight scale (about) doubles: dequantized weights agree."""
    host(VNNI)
    data = PassContext(calibration=batches_of(-1.0))
    eight, _ = run_int8(wide_input_conv(), data, reduce_range=False)
    seven, _ = run_int8(wide_input_conv(), data, reduce_range=True)  # conv1 reads signed data: 7-bit

    def conv1_weight(model):
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        conv1 = next(n for n in model.graph.node if n.name == "conv1")
        dq = dq_producers(model)[conv1.input[1]]
        scale = inits[dq.input[1]].astype(np.float64)
        return inits[dq.input[0]].astype(np.float64) * scale.reshape(-1, 1, 1, 1), scale

    (w8, s8), (w7, s7) = conv1_weight(eight), conv1_weight(seven)
    np.testing.assert_allclose(s7 / s8, 2.0, rtol=0.02)
    error = np.abs(w8 - w7).reshape(8, -1).max(1)
    assert np.all(error <= (s7 + s8) / 2 + 1e-7)  # each is within half a step of the float weight


@pytest.mark.parametrize("raw, expected", [("auto", "auto"), ("true", True), ("false", False), (True, True)])
def test_reduce_range_spec_values(raw, expected):
    assert build_options(get("int8"), {"reduce_range": raw}).reduce_range == expected
    assert build_options(get("int8-dynamic"), {"reduce_range": raw}).reduce_range == expected


def test_reduce_range_rejects_other_values():
    with pytest.raises(UsageError, match="reduce_range"):
        build_options(get("int8"), {"reduce_range": "sometimes"})


# ---------------------------------------------------------------- int8-dynamic


def test_dynamic_auto_uses_7_bit_weights_without_vnni(host):
    host(AVX2)
    quantized, report = run_dynamic(mlp())
    assert int8_weights(quantized) and widest(quantized) <= 64
    assert report.figures["reduce_range"].startswith("on (auto:")


def test_dynamic_forced_8_bits_without_vnni_asks_for_exact_validation(host):
    host(AVX2)
    _, report = run_dynamic(mlp(), reduce_range=False)
    assert report.validate_with == hostcpu.EXACT_INTEGER_KERNELS


def test_dynamic_auto_keeps_8_bits_with_vnni(host):
    host(VNNI)
    quantized, report = run_dynamic(mlp())
    assert widest(quantized) > 64
    assert report.figures["reduce_range"].startswith("off (auto:")


def test_exact_integer_kernels_undo_the_saturation_of_8_bit_weights(real_cpu):
    """The premise of reduce_range and of the gate's exact validation, on this CPU: large
    uint8 codes times large int8 weights clip in its u8×s8 kernels; EXACT_INTEGER_KERNELS
    and 7-bit weights do not."""
    import onnxruntime as ort

    if not real_cpu.u8s8_saturates:
        pytest.skip(f"{real_cpu.describe()}: its u8×s8 kernels accumulate exactly")
    rng = np.random.default_rng(0)
    weight = rng.uniform(0.9, 1.0, (256, 64)).astype(np.float32)  # every pair of products near 2·255·127
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        [numpy_helper.from_array(weight, "w")])
    x = rng.uniform(0.9, 1.0, (8, 256)).astype(np.float32)

    def error(model, config) -> float:
        options = ort.SessionOptions()
        for key, value in config.items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        y = session.run(None, {"x": x})[0]
        return float(np.linalg.norm(y - x @ weight) / np.linalg.norm(x @ weight))

    eight_bit, report = run_dynamic(make_model(graph), reduce_range=False)
    assert report.validate_with == hostcpu.EXACT_INTEGER_KERNELS
    assert error(eight_bit, {}) > 0.1  # measured 0.44: clipped sums
    assert error(eight_bit, hostcpu.EXACT_INTEGER_KERNELS) < 1e-3  # measured 0.00017
    seven_bit, _ = run_dynamic(make_model(graph), reduce_range=True)
    assert error(seven_bit, {}) < 1e-3  # measured 0.00036
