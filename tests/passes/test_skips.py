"""Every skip rule of the decomposition passes, each with a tiny model that triggers it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.errors import UsageError
from onnxopt.registry import build_options, get, parse_spec
from tests.helpers import assert_models_close, make_model
from tests.passes.models import conv_model, run_pass

CONV_PASSES = ("spatial", "tucker", "cp", "separable")
EASY = {"rank": 2, "min_in_channels": 1, "round": 1}


def only_skip(opt) -> str:
    assert not opt.report.modified and not opt.report.applied
    assert len(opt.report.skipped) >= 1
    return opt.report.skipped[0]["reason"]


@pytest.mark.parametrize("pass_name", CONV_PASSES)
def test_group_is_skipped(pass_name):
    _, opt = run_pass(pass_name, conv_model(C=8, F=8, group=2), **EASY)
    assert only_skip(opt) == "group=2 is not supported"


@pytest.mark.parametrize("pass_name", CONV_PASSES)
def test_shared_weight_is_skipped(pass_name):
    _, opt = run_pass(pass_name, conv_model(shared=True), **EASY)
    assert {s["reason"] for s in opt.report.skipped} == {"weight is shared with another node"}
    assert not opt.report.modified


@pytest.mark.parametrize("pass_name", CONV_PASSES)
def test_non_constant_weight_is_skipped(pass_name):
    _, opt = run_pass(pass_name, conv_model(weight="input"), **EASY)
    assert only_skip(opt) == "weight is not constant"


@pytest.mark.parametrize("pass_name", [*CONV_PASSES, "svd"])
def test_1d_and_3d_convs_are_skipped(pass_name):
    for kernel, hw, dims in (((3,), (13,), 1), ((3, 3, 3), (5, 6, 7), 3)):
        k = (1,) * len(kernel) if pass_name == "svd" else kernel
        _, opt = run_pass(pass_name, conv_model(kernel=k, hw=hw), **EASY)
        assert only_skip(opt) == f"1-D/3-D convolutions are not supported (this one is {dims}-D)"


@pytest.mark.parametrize("pass_name", CONV_PASSES)
def test_macs_would_not_drop(pass_name):
    model = conv_model(C=6, F=8, pads=[1, 1, 1, 1])
    _, opt = run_pass(pass_name, model, rank=100000, min_in_channels=1, round=1)
    reason = only_skip(opt)
    assert reason.startswith("MACs would not drop (") and "per sample" in reason


@pytest.mark.parametrize("pass_name", CONV_PASSES)
def test_small_stem_is_skipped_by_default(pass_name):
    _, opt = run_pass(pass_name, conv_model(C=3, F=32), rank=1)
    assert only_skip(opt) == "input has 3 channels (< min_in_channels=16)"


@pytest.mark.parametrize("pass_name", CONV_PASSES)
def test_one_by_one_kernel_is_left_to_svd(pass_name):
    _, opt = run_pass(pass_name, conv_model(kernel=(1, 1)), **EASY)
    assert only_skip(opt) == "1×1 kernel: nothing to factor spatially (use the svd pass)"


def test_svd_leaves_kxk_kernels():
    _, opt = run_pass("svd", conv_model(kernel=(3, 3)), **EASY)
    assert only_skip(opt).startswith("3×3 kernel: svd factors 1×1 convolutions")


def test_include_exclude_globs():
    model = conv_model(C=8, F=8, name="backbone.conv", pads=[1, 1, 1, 1])
    _, opt = run_pass("tucker", model, **EASY, exclude="backbone.*")
    assert only_skip(opt) == "excluded by pattern (matches an exclude glob)"
    _, opt = run_pass("tucker", model, **EASY, include="head.*|neck.*")
    assert only_skip(opt) == "excluded by pattern (matches no include glob)"
    _, opt = run_pass("tucker", model, **EASY, include="neck.*|backbone.*")
    assert opt.report.modified


def test_below_min_macs():
    _, opt = run_pass("tucker", conv_model(C=8, F=8), **EASY, min_macs=1e9)
    assert only_skip(opt).startswith("below min_macs (")


@pytest.mark.parametrize("pass_name", CONV_PASSES)
def test_constant_node_weight_works(pass_name):
    model = conv_model(weight="constant", pads=[1, 1, 1, 1])
    out, opt = run_pass(pass_name, model, rank=100000, force=True, min_in_channels=1, round=1)
    assert opt.report.modified
    assert "Constant" not in [n.op_type for n in out.graph.node]  # the unused weight node is gone
    assert_models_close(model, out)


def test_non_float_weight_is_skipped():
    x = helper.make_tensor_value_info("x", TensorProto.INT32, [1, 8, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [None] * 4)
    W = numpy_helper.from_array(np.ones((8, 8, 3, 3), np.int32), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], name="c")], "g", [x], [y], [W])
    model = make_model(graph)  # not a valid ONNX Conv type, but passes must not crash on it
    import onnx_ir as ir

    cls = get("tucker")
    opt = cls(build_options(cls, EASY))
    result = opt(ir.from_proto(model))
    assert not result.modified
    assert opt.report.skipped[0]["reason"] == "weight dtype int32 is not supported (float only)"


def test_options_validation():
    cls = get("tucker")
    with pytest.raises(UsageError, match="at most one rank selector"):
        build_options(cls, parse_spec("tucker:rank=0.5:energy=0.9")[0].options)
    with pytest.raises(UsageError, match="energy must be in"):
        build_options(cls, {"energy": "1.5"})
    with pytest.raises(UsageError, match=r"rank=2.5: write a whole number for an absolute rank or a fraction in \(0, 1\]"):
        build_options(cls, {"rank": "2.5"})
    with pytest.raises(UsageError, match="at most one rank selector"):
        build_options(get("separable"), {"multiplier": "2", "rank": "3"})
    options = build_options(cls, parse_spec("bottleneck:vbmf:round=8:exclude=a*|b*")[0].options)
    assert options.vbmf and options.round == 8 and options.exclude == ("a*", "b*")
    assert options.describe_selector() == "vbmf"
    assert build_options(cls, {}).selector == ("energy", 0.95)


def test_every_decomposition_pass_is_registered():
    from onnxopt.registry import available

    names = available()
    for name in ("spatial", "tucker", "cp", "separable", "svd"):
        assert name in names and names[name].capability().startswith("lossy")
    assert get("bottleneck") is get("tucker")


def test_vbmf_selects_a_rank():
    rng = np.random.default_rng(0)
    # a rank-4 kernel plus noise: EVBMF should find a small rank in each unfolding
    U = rng.standard_normal((32, 4))
    V = rng.standard_normal((4, 32 * 9))
    W = (U @ V + 0.01 * rng.standard_normal((32, 32 * 9))).reshape(32, 32, 3, 3).astype(np.float32)
    model = conv_model(C=32, F=32, weight_array=W, pads=[1, 1, 1, 1])
    _, opt = run_pass("tucker", model, vbmf=True, round=1, force=True)
    assert opt.report.applied[0]["ranks"]["R2"] <= 8
    for name in ("spatial", "cp", "separable"):
        _, opt = run_pass(name, model, vbmf=True, round=1, force=True, **({"max_iter": 2} if name == "cp" else {}))
        assert opt.report.applied, name


def test_model_outputs_unchanged_names_when_layer_is_graph_output():
    model = conv_model(C=8, F=8, pads=[1, 1, 1, 1])
    out, _ = run_pass("tucker", model, **EASY)
    assert [o.name for o in out.graph.output] == ["y"]
    onnx.checker.check_model(out, full_check=True)


def test_refit_asks_the_caller_for_data():
    cls = get("tucker")
    assert cls.uses_data(build_options(cls, {"refit": "true"}))
    assert not cls.uses_data(build_options(cls, {}))
    assert "calibration data optional" in cls.capability()


def test_numerical_failure_becomes_a_skip_reason(monkeypatch):
    from onnxopt.passes.tucker import DecomposeTuckerPass

    def boom(self, layer):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(DecomposeTuckerPass, "_try_decompose", boom)
    _, opt = run_pass("tucker", conv_model(C=8, F=8), **EASY)
    assert only_skip(opt) == "decomposition failed: SVD did not converge"
