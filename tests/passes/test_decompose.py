"""Full-rank exactness, factor structure, rank/error monotonicity and idempotency of the
four convolution decompositions (spatial, tucker, cp, separable)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import assert_models_close, random_feeds
from tests.passes.models import attrs, chain_model, conv_model, node, ops, run_pass

CONV_PASSES = ("spatial", "tucker", "cp", "separable")
FULL = {"rank": 100000, "force": True, "min_in_channels": 1, "round": 1}

# (id, conv_model kwargs): bias, stride 1/2, explicit and SAME_UPPER pads, dilation 1/2,
# non-square kernels, odd spatial sizes (13×11 by default).
GEOMETRIES = [
    ("3x3-bias-pad1", dict(kernel=(3, 3), pads=[1, 1, 1, 1])),
    ("3x3-nobias-valid", dict(kernel=(3, 3), bias=False)),
    ("3x3-stride2-asympads", dict(kernel=(3, 3), strides=[2, 2], pads=[0, 1, 2, 1])),
    ("3x3-dilation2-pad2", dict(kernel=(3, 3), dilations=[2, 2], pads=[2, 2, 2, 2])),
    ("3x3-same_upper-stride2", dict(kernel=(3, 3), auto_pad="SAME_UPPER", strides=[2, 2])),
    ("5x5-same_lower-stride2", dict(kernel=(5, 5), auto_pad="SAME_LOWER", strides=[2, 2], bias=False)),  # onnxruntime refuses SAME + dilation
    ("1x7-pad3-stride21", dict(kernel=(1, 7), pads=[0, 3, 0, 3], strides=[2, 1])),
    ("7x1-stride12", dict(kernel=(7, 1), pads=[3, 0, 3, 0], strides=[1, 2], hw=(15, 9))),
    ("5x5-valid-odd", dict(kernel=(5, 5), hw=(13, 11), strides=[1, 2], dilations=[1, 2])),
]


@pytest.mark.parametrize("geometry", [g for _, g in GEOMETRIES], ids=[i for i, _ in GEOMETRIES])
@pytest.mark.parametrize("pass_name", CONV_PASSES)
def test_full_rank_reproduces_the_layer(pass_name, geometry):
    model = conv_model(**geometry)
    out, opt = run_pass(pass_name, model, **FULL)
    assert opt.report.modified and len(opt.report.applied) == 1
    assert opt.report.applied[0]["rel_error"] < 1e-5
    assert_models_close(model, out, rtol=1e-4)


def test_tucker_structure():
    model = conv_model(C=6, F=8, kernel=(3, 3), strides=[2, 1], pads=[1, 0, 1, 2], dilations=[1, 2])
    out, opt = run_pass("tucker", model, rank=4, force=True, min_in_channels=1, round=1)
    assert ops(out) == ["Conv", "Conv", "Conv"]
    first, core, last = (node(out, f"conv/tucker_{r}") for r in ("first", "core", "last"))
    assert attrs(first)["kernel_shape"] == [1, 1] and attrs(first)["strides"] == [1, 1] and attrs(first)["pads"] == [0, 0, 0, 0]
    assert attrs(core) | {} == {**attrs(core), "kernel_shape": [3, 3], "strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 1, 2]}
    assert attrs(last)["kernel_shape"] == [1, 1]
    assert list(last.input) == [core.output[0], "conv/tucker_last.weight", "B"]  # original bias reused
    assert last.output[0] == "y"  # the output keeps its name
    inits = {t.name: list(t.dims) for t in out.graph.initializer}
    assert "W" not in inits  # old weight removed
    assert inits["conv/tucker_first.weight"] == [4, 6, 1, 1]
    assert inits["conv/tucker_core.weight"] == [4, 4, 3, 3]
    assert inits["conv/tucker_last.weight"] == [8, 4, 1, 1]
    assert {p.key: p.value for p in first.metadata_props}["onnxopt.decomposed"] == "tucker"
    entry = opt.report.applied[0]
    assert entry["ranks"] == {"R1": 4, "R2": 4} and entry["macs_unit"] == "per sample"
    # MACs: 1×1 at the 13×11 input, core and last at the 7×9 output
    assert entry["macs_before"] == 6 * 8 * 9 * 7 * 9
    assert entry["macs_after"] == 6 * 4 * 13 * 11 + (4 * 4 * 9 + 4 * 8) * 7 * 9


def test_spatial_structure():
    model = conv_model(C=6, F=8, kernel=(3, 5), strides=[2, 1], pads=[1, 2, 0, 2], dilations=[2, 1])
    out, _ = run_pass("spatial", model, rank=5, force=True, min_in_channels=1, round=1)
    vertical, horizontal = node(out, "conv/spatial_vertical"), node(out, "conv/spatial_horizontal")
    assert attrs(vertical) == {"kernel_shape": [3, 1], "strides": [2, 1], "dilations": [2, 1], "group": 1, "pads": [1, 0, 0, 0]}
    assert attrs(horizontal) == {"kernel_shape": [1, 5], "strides": [1, 1], "dilations": [1, 1], "group": 1, "pads": [0, 2, 0, 2]}
    assert len(horizontal.input) == 3 and len(vertical.input) == 2  # bias on the last factor only


def test_spatial_same_upper_on_both_factors():
    model = conv_model(kernel=(3, 3), auto_pad="SAME_UPPER", strides=[2, 2])
    out, _ = run_pass("spatial", model, rank=3, force=True, min_in_channels=1, round=1)
    for n in out.graph.node:
        assert attrs(n)["auto_pad"] == b"SAME_UPPER" and "pads" not in attrs(n)


def test_cp_structure_and_merged_depthwise():
    model = conv_model(C=6, F=8, kernel=(3, 3), pads=[1, 1, 1, 1], strides=[2, 2])
    out, opt = run_pass("cp", model, rank=5, force=True, min_in_channels=1, round=1, max_iter=3)
    assert [n.name for n in out.graph.node] == ["conv/cp_first", "conv/cp_vertical", "conv/cp_horizontal", "conv/cp_last"]
    assert attrs(node(out, "conv/cp_vertical"))["group"] == 5
    assert attrs(node(out, "conv/cp_vertical"))["strides"] == [2, 1]
    assert attrs(node(out, "conv/cp_horizontal"))["strides"] == [1, 2]
    assert opt.report.applied[0]["als_sweeps"] <= 3
    # a 1×7 kernel needs one depthwise factor, not a 1×1 and a 1×7
    out, _ = run_pass("cp", conv_model(kernel=(1, 7), pads=[0, 3, 0, 3]), rank=5, force=True, min_in_channels=1)
    assert [n.name for n in out.graph.node] == ["conv/cp_first", "conv/cp_depthwise", "conv/cp_last"]
    assert attrs(node(out, "conv/cp_depthwise"))["kernel_shape"] == [1, 7]


def test_separable_structure():
    model = conv_model(C=6, F=8, kernel=(3, 3), pads=[1, 1, 1, 1])
    out, opt = run_pass("separable", model, multiplier=2, force=True, min_in_channels=1)
    dw, pw = node(out, "conv/separable_depthwise"), node(out, "conv/separable_pointwise")
    assert attrs(dw)["group"] == 6 and attrs(dw)["pads"] == [1, 1, 1, 1]
    assert {t.name: list(t.dims) for t in out.graph.initializer}["conv/separable_depthwise.weight"] == [12, 1, 3, 3]
    assert attrs(pw)["kernel_shape"] == [1, 1] and opt.report.applied[0]["ranks"] == {"m": 2}


@pytest.mark.parametrize("pass_name,ranks", [
    ("spatial", [1, 4, 10, 18]), ("tucker", [1, 3, 6, 8]), ("cp", [2, 8, 24, 60]), ("separable", [1, 3, 6, 9]),
])
def test_error_decreases_as_rank_grows(pass_name, ranks):
    model = conv_model(C=8, F=10, kernel=(3, 3), pads=[1, 1, 1, 1])
    errors = []
    for rank in ranks:
        _, opt = run_pass(pass_name, model, rank=rank, force=True, min_in_channels=1, round=1)
        errors.append(opt.report.applied[0]["rel_error"])
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("pass_name", CONV_PASSES)
def test_second_run_changes_nothing(pass_name):
    model = chain_model()
    extra = {"max_iter": 2} if pass_name == "cp" else {}
    first, opt1 = run_pass(pass_name, model, rank=0.5, force=True, round=1, **extra)
    assert opt1.report.modified
    second, opt2 = run_pass(pass_name, first, rank=0.5, force=True, round=1, **extra)
    assert not opt2.report.modified and not opt2.report.applied
    assert second.graph.SerializeToString() == first.graph.SerializeToString()
    created = {n.name for n in first.graph.node if n.op_type == "Conv"}
    reasons = {s["node"]: s["reason"] for s in opt2.report.skipped}
    assert all(reasons[name] == "already decomposed" for name in created)


def test_other_passes_skip_decomposed_nodes():
    tucked, _ = run_pass("tucker", chain_model(), rank=0.5, force=True, round=1)
    out, opt = run_pass("svd", tucked, rank=0.5, force=True, round=1)  # the 1×1 factors are svd candidates
    assert not opt.report.modified
    assert {s["reason"] for s in opt.report.skipped} == {"already decomposed"}


def test_default_options_energy_and_rounding():
    model = chain_model(channels=(32, 64, 64))
    out, opt = run_pass("tucker", model, force=True)
    assert opt.report.figures["rank_selection"] == "energy=0.95 (default)"
    for entry in opt.report.applied:
        assert all(r % 16 == 0 for r in entry["ranks"].values())
    assert_models_close(model, out, rtol=1.0)  # runs; lossy


def test_speedup_reaches_the_mac_target():
    model = chain_model(channels=(64, 64, 64), hw=(16, 16))
    for pass_name in CONV_PASSES:
        extra = {"max_iter": 1} if pass_name == "cp" else {}
        _, opt = run_pass(pass_name, model, speedup=2, round=1, **extra)
        for entry in opt.report.applied:
            assert 2 <= entry["macs_before"] / entry["macs_after"] <= 2 * 1.05 or entry["ranks"].get("m"), (pass_name, entry)


def test_float16_weight_dtype_is_kept():
    import onnx

    model = conv_model(kernel=(3, 3), pads=[1, 1, 1, 1])
    model = onnx.version_converter.convert_version(model, 17)
    from onnxconverter_common import float16

    half = float16.convert_float_to_float16(model, keep_io_types=False)
    out, opt = run_pass("tucker", half, **FULL)
    weights = [t for t in out.graph.initializer if t.name.endswith(".weight")]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    feeds = {"x": random_feeds(model)["x"].astype(np.float16)}
    assert_models_close(half, out, feeds=feeds, rtol=5e-3)


def test_parallel_layers_give_the_same_model():
    from onnxopt.passbase import PassContext

    model = chain_model(channels=(16, 32, 32, 32, 16))
    one, opt1 = run_pass("tucker", model, rank=0.5, round=1)
    two, opt2 = run_pass("tucker", model, rank=0.5, round=1, context=PassContext(jobs=2))
    assert one.graph.SerializeToString() == two.graph.SerializeToString()
    assert [a["node"] for a in opt1.report.applied] == [a["node"] for a in opt2.report.applied]


def test_progress_is_reported_per_layer():
    from onnxopt.passbase import PassContext

    calls = []
    context = PassContext(progress=lambda message, done, total: calls.append((message, done, total)))
    run_pass("tucker", chain_model(), rank=0.5, round=1, context=context)
    assert [c[1:] for c in calls] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert calls[0][0] == "tucker: conv0"
