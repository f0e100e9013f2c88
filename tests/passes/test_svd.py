"""``svd``: Gemm (transA/transB, alpha, beta, bias), MatMul with a constant right operand,
and 1×1 Conv."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import assert_models_close
from tests.passes.models import attrs, conv_model, gemm_model, matmul_model, node, ops, run_pass

FULL = {"rank": 100000, "force": True, "min_in_channels": 1, "round": 1}


@pytest.mark.parametrize("kwargs", [
    dict(transB=1, bias=True),
    dict(transB=0, bias=True, alpha=0.5, beta=2.0),
    dict(transB=1, bias=False),
    dict(transA=1, transB=1, bias=True),
    dict(transA=1, transB=0, bias=True, opset=9),
], ids=["transB-bias", "alpha-beta", "no-bias", "transA", "transA-opset9"])
def test_gemm_full_rank_is_exact(kwargs):
    model = gemm_model(**kwargs)
    out, opt = run_pass("svd", model, **FULL)
    assert opt.report.modified
    assert_models_close(model, out)


def test_gemm_structure():
    model = gemm_model(K=24, N=20, transB=1, bias=True, alpha=0.5, beta=2.0)
    out, opt = run_pass("svd", model, rank=4, round=1, min_in_channels=1)
    assert ops(out) == ["MatMul", "Gemm"]
    last = node(out, "fc/svd_last")
    assert list(last.input)[2] == "C" and attrs(last)["alpha"] == 0.5 and attrs(last)["beta"] == 2.0
    inits = {t.name: list(t.dims) for t in out.graph.initializer}
    assert inits["fc/svd_first.weight"] == [24, 4] and inits["fc/svd_last.weight"] == [4, 20]
    entry = opt.report.applied[0]
    assert entry["macs_before"] == 5 * 24 * 20 and entry["macs_after"] == 5 * 4 * 44 and entry["macs_unit"] == "per sample"


def test_matmul_full_rank_and_structure():
    model = matmul_model(K=24, N=20, lead=(2, 5))
    out, opt = run_pass("svd", model, **FULL)
    assert ops(out) == ["MatMul", "MatMul"]
    assert_models_close(model, out)
    out, opt = run_pass("svd", model, rank=3, round=1, min_in_channels=1)
    assert opt.report.applied[0]["macs_after"] == 10 * 3 * 44


@pytest.mark.parametrize("kwargs", [
    dict(strides=[2, 2], pads=[1, 0, 1, 1]),
    dict(bias=False),
    dict(auto_pad="SAME_UPPER", strides=[2, 1]),
], ids=["stride-pads", "no-bias", "same-upper"])
def test_pointwise_conv_full_rank_is_exact(kwargs):
    model = conv_model(C=12, F=10, kernel=(1, 1), **kwargs)
    out, opt = run_pass("svd", model, **FULL)
    assert [n.name for n in out.graph.node] == ["conv/svd_first", "conv/svd_last"]
    assert_models_close(model, out)


def test_error_decreases_and_second_run_is_a_no_op():
    model = gemm_model(K=32, N=24)
    errors = []
    for rank in (1, 4, 12, 24):
        _, opt = run_pass("svd", model, rank=rank, round=1, min_in_channels=1, force=True)
        errors.append(opt.report.applied[0]["rel_error"])
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5
    once, _ = run_pass("svd", model, rank=4, round=1, min_in_channels=1)
    twice, opt = run_pass("svd", once, rank=4, round=1, min_in_channels=1)
    assert not opt.report.modified and {s["reason"] for s in opt.report.skipped} == {"already decomposed"}
    assert once.graph.SerializeToString() == twice.graph.SerializeToString()


def test_matrix_skip_reasons():
    from onnx import TensorProto, helper

    from tests.helpers import make_model

    _, opt = run_pass("svd", gemm_model(K=8, N=20), rank=2)
    assert opt.report.skipped[0]["reason"] == "input has 8 features (< min_in_channels=16)"
    _, opt = run_pass("svd", gemm_model(K=24, N=20), rank=100000, round=1)
    assert opt.report.skipped[0]["reason"].startswith("MACs would not drop")
    # MatMul of two activations
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 24]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [24, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 20])])
    _, opt = run_pass("svd", make_model(graph), rank=2, min_in_channels=1)
    assert opt.report.skipped[0]["reason"] == "right operand is not constant"


def test_energy_rank_on_a_low_rank_weight():
    rng = np.random.default_rng(0)
    model = gemm_model(K=64, N=48, transB=0)
    B = (rng.standard_normal((64, 5)) @ rng.standard_normal((5, 48))).astype(np.float32)
    from onnx import numpy_helper

    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(B, "B"))
    out, opt = run_pass("svd", model, energy=0.999, round=1)
    assert opt.report.applied[0]["ranks"] == {"R": 5}
    assert_models_close(model, out)


def test_unreachable_speedup_is_skipped_not_forced_to_rank_1():
    _, opt = run_pass("svd", gemm_model(K=64, N=2), speedup=2, round=1)
    assert opt.report.skipped[0]["reason"] == "speedup=2 is out of reach (rank 1 gives 1.94×)"
    _, opt = run_pass("tucker", conv_model(C=16, F=2, kernel=(3, 3)), speedup=50, round=1)
    assert opt.report.skipped[0]["reason"].startswith("speedup=50 is out of reach (rank 1 gives ")
