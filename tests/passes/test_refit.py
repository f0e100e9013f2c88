"""``refit=true``: the last factor and bias re-solved on calibration data raise fidelity on
the calibration distribution; without data the pass warns and still decomposes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.passbase import PassContext
from tests.helpers import make_model, relative_error, run_ort
from tests.passes.models import run_pass, token_model


def structured_model(kernel=(3, 3), conv_attrs=None, seed=0):
    """x [N, 4, 12, 12] → 1×1 Conv 4→32 ("lift", tiny: left alone) → Relu → Conv k×k
    32→32 ("target"): the target's input spans a low-dimensional, non-negative set, so
    weight-only truncation discards directions the data uses."""
    rng = np.random.default_rng(seed)
    lift = rng.standard_normal((32, 4, 1, 1)).astype(np.float32)
    W = rng.standard_normal((32, 32, *kernel)).astype(np.float32)
    B = rng.standard_normal(32).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "L"], ["l"], name="lift"),
        helper.make_node("Relu", ["l"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "W", "B"], ["y"], name="target", **(conv_attrs or {"pads": [1, 1, 1, 1]})),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        [numpy_helper.from_array(lift, "L"), numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    return make_model(graph)


def batches(seed, count=4, n=4, shape=(4, 12, 12)):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((n, *shape)).astype(np.float32)} for _ in range(count)]


def context(seed=1, count=4):
    data = batches(seed, count)
    return PassContext(calibration=lambda: iter(data), calibration_description="synthetic")


def output_error(reference, candidate, feeds_list):
    return float(np.mean([relative_error(run_ort(reference, f)[0], run_ort(candidate, f)[0]) for f in feeds_list]))


@pytest.mark.parametrize("pass_name,options", [
    ("tucker", {"rank": 12}),
    ("spatial", {"rank": 6}),
    ("cp", {"rank": 24, "max_iter": 5}),
    ("separable", {"multiplier": 1}),
])
def test_refit_raises_fidelity(pass_name, options):
    model = structured_model()
    common = {"round": 1, "min_in_channels": 8, **options}
    plain, _ = run_pass(pass_name, model, **common)
    refit, opt = run_pass(pass_name, model, context=context(), refit=True, **common)
    entry = next(a for a in opt.report.applied if a["node"] == "target")
    assert entry["refit"]["applied"] and entry["refit"]["residual_after"] < entry["refit"]["residual_before"]
    assert opt.report.figures["refit"]["batches"] == 4 and opt.report.figures["refit"]["samples"] == 16
    evaluation = batches(seed=99, count=2)  # same distribution, not the calibration samples
    before, after = output_error(model, plain, evaluation), output_error(model, refit, evaluation)
    assert after < 0.85 * before, (before, after)


def test_refit_of_a_chain_of_decomposed_layers():
    from tests.passes.models import chain_model

    model = chain_model(channels=(16, 32, 32, 32, 16), hw=(12, 12))
    rng = np.random.default_rng(5)
    mixing = rng.standard_normal((16, 3))  # inputs on a 3-D channel subspace

    def sample(n):
        return {"x": np.einsum("cd,ndhw->nchw", mixing, rng.standard_normal((n, 3, 12, 12))).astype(np.float32)}

    data = [sample(1) for _ in range(12)]  # the chain's input has batch 1
    ctx = PassContext(calibration=lambda: iter(data))
    plain, _ = run_pass("tucker", model, rank=8, round=1)
    refit, opt = run_pass("tucker", model, rank=8, round=1, refit=True, context=ctx)
    assert opt.report.figures["refit"]["layers_refit"] == 4
    evaluation = [sample(1) for _ in range(4)]
    assert output_error(model, refit, evaluation) < 0.85 * output_error(model, plain, evaluation)


def test_refit_of_spatial_with_stride_and_same_padding():
    model = structured_model(kernel=(3, 5), conv_attrs={"auto_pad": "SAME_UPPER", "strides": [2, 2]})
    plain, _ = run_pass("spatial", model, rank=6, round=1, min_in_channels=8)
    refit, _ = run_pass("spatial", model, rank=6, round=1, min_in_channels=8, refit=True, context=context())
    evaluation = batches(seed=7, count=2)
    assert output_error(model, refit, evaluation) < 0.8 * output_error(model, plain, evaluation)


def fc_model(op="Gemm", seed=0):
    rng = np.random.default_rng(seed)
    lift = rng.standard_normal((4, 48)).astype(np.float32)
    W = rng.standard_normal((48, 40)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "L"], ["l"], name="lift"), helper.make_node("Relu", ["l"], ["r"])]
    inits = [numpy_helper.from_array(lift, "L"), numpy_helper.from_array(W, "W")]
    if op == "Gemm":
        nodes.append(helper.make_node("Gemm", ["r", "W", "C"], ["y"], name="fc", alpha=0.5, beta=2.0))
        inits.append(numpy_helper.from_array(rng.standard_normal(40).astype(np.float32), "C"))
    else:
        nodes.append(helper.make_node("MatMul", ["r", "W"], ["y"], name="fc"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 40])], inits)
    return make_model(graph)


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_svd_refit(op):
    model = fc_model(op)
    data = batches(3, count=3, n=32, shape=(4,))
    ctx = PassContext(calibration=lambda: iter(data))
    plain, _ = run_pass("svd", model, rank=4, round=1, include="fc")
    refit, opt = run_pass("svd", model, rank=4, round=1, include="fc", refit=True, context=ctx)
    assert opt.report.applied[0]["refit"]["applied"]
    evaluation = batches(8, count=2, n=32, shape=(4,))
    assert output_error(model, refit, evaluation) < 0.8 * output_error(model, plain, evaluation)


def test_refit_without_data_warns_and_still_decomposes():
    model = structured_model()
    out, opt = run_pass("tucker", model, rank=6, round=1, min_in_channels=8, refit=True)
    assert opt.report.modified and "refit" not in opt.report.applied[0]
    assert any("no calibration data" in w for w in opt.report.warnings)


def test_refit_with_unusable_data_warns():
    model = structured_model()
    bad = [{"x": np.zeros((1, 5, 12, 12), np.float32)}]  # wrong channel count
    out, opt = run_pass("tucker", model, rank=6, round=1, min_in_channels=8, refit=True,
                        context=PassContext(calibration=lambda: iter(bad)))
    assert opt.report.modified and any(w.startswith("refit skipped:") for w in opt.report.warnings)
    empty, opt = run_pass("tucker", model, rank=6, round=1, min_in_channels=8, refit=True,
                          context=PassContext(calibration=lambda: iter(())))
    assert any("no batch" in w for w in opt.report.warnings)


def test_refit_of_token_activations_leaves_padding_out():
    """Short sentences padded to a long sequence: the padded rows are most of the data and
    must not be fitted (paraphrase-MiniLM: 89 % of 12,800 calibration rows were padding)."""
    rng = np.random.default_rng(4)
    lengths, seq = [3, 5], 8
    mask = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids = np.where(mask != 0, rng.integers(1, 50, (2, seq)), 0).astype(np.int64)
    data = [{"input_ids": ids, "attention_mask": mask}]
    ctx = PassContext(calibration=lambda: iter(data))
    _, opt = run_pass("svd", token_model(mask_output=True), rank=4, round=1, include="fc", refit=True, context=ctx)
    assert opt.report.figures["refit"]["samples"] == sum(lengths)  # 8 real tokens, not 16 rows
