"""``int8`` on transformers calibrated on text (issue 15, item 4).

Before: every op type was quantized. The attention mask's additive bias (float32's lowest
value, or −10000) set the range of the Softmax input, so every real attention score fell on
one uint8 code and attention went uniform (paraphrase-MiniLM: mean sentence cosine 0.78);
entropy calibration failed outright on that tensor ("Too many bins"); a MatMul's output was
quantized before float ops (a bias Add) that read it; padding (89 % of the positions of
short texts) set the activation ranges; and shapes that ``quant_pre_process`` inferred let
onnxruntime fuse a slow SkipLayerNormalization into the result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxopt
from onnxopt.passbase import PassContext
from onnxopt.passes import _calibration, _int8_scope
from onnxopt.passes import _quant_common as qc
from onnxopt.passes._output_similarity import real_tokens
from tests.helpers import run_ort
from tests.quant.models import (
    attention_block,
    conv_stack,
    cosine,
    image_batches,
    real_token_cosine,
    token_batches,
    token_feeds,
)

ROOT = Path(__file__).resolve().parents[2]
SEQUENCE = ROOT.parent / "shared" / "models" / "sequence"


def text_context(**batches) -> PassContext:
    return PassContext(calibration=token_batches(**batches), calibration_description="token data")


def quantize(model: onnx.ModelProto, spec: str = "int8", context: PassContext | None = None):
    quantized, report = onnxopt.optimize(model, spec, context=context or text_context())
    (int8,) = report.passes
    assert int8.status == "modified", int8.skipped_reason
    return quantized, int8


def fidelity(model: onnx.ModelProto, quantized: onnx.ModelProto) -> tuple[float, float]:
    """(worst real-token cosine of ``tokens``, worst cosine of ``embedding``) on held-out data."""
    feeds = token_feeds(np.random.default_rng(9), 32)
    reference, candidate = run_ort(model, feeds), run_ort(quantized, feeds)
    return real_token_cosine(reference[0], candidate[0], feeds["attention_mask"]), cosine(reference[1], candidate[1])


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


@pytest.mark.parametrize("fill", [float(np.finfo(np.float32).min), -10000.0])
def test_a_masked_attention_block_keeps_its_attention(fill):
    """The default int8 on a padded, masked attention block: tokens and embedding stay close
    (before: the mask set the Softmax input's range and attention went uniform, cosine 0.80)."""
    model = attention_block(mask_fill=fill)
    quantized, report = quantize(model)
    tokens, embedding = fidelity(model, quantized)
    assert tokens > 0.995 and embedding > 0.998
    assert report.figures["softmax_windows"] == 1
    softmax = next(n for n in quantized.graph.node if n.name == "softmax")
    dq = producers(quantized)[softmax.input[0]]
    assert dq.op_type == "DequantizeLinear"
    scale = onnx.numpy_helper.to_array(next(t for t in quantized.graph.initializer if t.name == dq.input[1]))
    assert float(scale) < 1.0  # the window, not a range reaching the mask's filler


def test_ops_auto_is_linear_for_attention_and_all_for_convolutions():
    _, report = quantize(attention_block())
    assert report.figures["ops"].startswith("linear (auto: attention, Softmax 'softmax' over MatMul 'scores'")
    _, report = quantize(conv_stack(), context=PassContext(calibration=image_batches()))
    assert report.figures["ops"] == "all (auto: no attention in the graph)"


def test_linear_leaves_activation_matmuls_and_the_residual_stream_float():
    quantized, report = quantize(attention_block())
    nodes = {n.name: n for n in quantized.graph.node}
    made = producers(quantized)
    def dequantized(name):
        return [made.get(i) is not None and made[i].op_type == "DequantizeLinear" for i in nodes[name].input]

    for name in ("residual", "norm", "mask_add"):  # float, no Q → DQ pair on their inputs
        assert not any(dequantized(name)), name
    for name in ("scores", "weighted"):  # float: at most the Softmax's dequantized output reaches them
        assert not all(dequantized(name)), name
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert made[nodes[name].input[1]].op_type == "DequantizeLinear", name
    skipped = {s["node"]: s["reason"] for s in report.skipped}
    assert "two activations" in skipped["scores"] and "two activations" in skipped["weighted"]


def test_a_matmul_output_read_by_float_ops_is_not_requantized():
    """DQ → MatMul → float Add: onnxruntime fuses the pair into MatMulIntegerToFloat; a Q → DQ
    pair on the MatMul's output (before: always) only added rounding before the bias Add."""
    quantized, _ = quantize(attention_block())
    readers = {}
    for node in quantized.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node.op_type)
    for name in ("q_mm", "k_mm", "v_mm", "o_mm"):
        assert readers[name] == ["Add"], name


def test_calibration_cuts_trailing_padding():
    """Padding whose embedding is 30x the real tokens' set the ranges (before: token cosine
    0.75); calibrated on real tokens only, the real tokens keep their precision."""
    model = attention_block(pad_scale=30.0)
    quantized, report = quantize(model)
    assert report.figures["calibration_tokens"].startswith("trailing padding cut: ")
    trimmed = fidelity(model, quantized)[0]
    padded = fidelity(model, quantize(model, "int8:trim_padding=false")[0])[0]
    assert trimmed > 0.995 and padded < 0.99


def test_cut_trailing_padding_keeps_leading_padding_and_fixed_lengths():
    specs = [qc.InputSpec("input_ids", np.dtype(np.int64), (None, None)),
             qc.InputSpec("attention_mask", np.dtype(np.int64), (None, None))]
    feeds = {"input_ids": np.array([[0, 5, 6, 0, 0]]), "attention_mask": np.array([[0, 1, 1, 0, 0]])}
    cut, kept = qc.cut_trailing_padding(feeds, specs)
    assert kept == 3 and cut["input_ids"].tolist() == [[0, 5, 6]] and cut["attention_mask"].tolist() == [[0, 1, 1]]
    assert qc.cut_trailing_padding({k: v[:, :3] for k, v in feeds.items()}, specs) is None  # nothing to cut
    fixed = [qc.InputSpec(s.name, s.dtype, (None, 5)) for s in specs]
    assert qc.cut_trailing_padding(feeds, fixed) is None  # the model wants 5 positions
    assert qc.cut_trailing_padding({"x": np.zeros((1, 5), np.float32)}, specs) is None  # no mask


def test_entropy_calibrates_a_model_masked_with_float32_lowest():
    """Before: onnxruntime's histogram of the mask's −3.4e38 failed ("Too many bins"), and the
    pass said the model could not run on sample 1."""
    model = attention_block()
    quantized, report = quantize(model, "int8:method=entropy:trim_padding=false")
    assert report.figures["sentinel_tensors"] >= 1
    tokens, embedding = fidelity(model, quantized)
    assert tokens > 0.95 and embedding > 0.98


@pytest.mark.parametrize("trim", [True, False])
def test_ops_all_keeps_the_attention_mask_float(trim):
    """ops=all quantizes Add and Mul, but not the mask's: calibrated on real tokens it never
    sees the filler (trim), or the filler reaches 3.4e38 and no 8-bit grid holds it."""
    model = attention_block()
    quantized, report = quantize(model, f"int8:ops=all:trim_padding={str(trim).lower()}")
    skipped = {s["node"]: s["reason"] for s in report.skipped}
    assert "mask_add" in skipped and "mask_bias" in skipped
    assert ("attention mask" if trim else "reaches") in skipped["mask_add"]
    tokens, embedding = fidelity(model, quantized)
    assert tokens > 0.99 and embedding > 0.995


def test_softmax_window_reaches_below_the_lowest_row_maximum(tmp_path):
    """The window ignores masked values and fully masked rows."""
    low = float(np.finfo(np.float32).min)
    x = np.array([[[2.0, -1.0, low], [0.5, 3.0, low], [low, low, low]]], np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "softmax",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 3])])
    path = tmp_path / "softmax.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    windows = _calibration.softmax_windows(path, {"x": (-1, False)}, lambda: iter([{"x": x}]), "test")
    assert windows == {"x": pytest.approx((2.0 - _calibration.SOFTMAX_WINDOW, 3.0))}


def test_the_result_carries_only_the_input_value_info():
    """quant_pre_process's inferred shapes let onnxruntime fuse Add + LayerNormalization into
    SkipLayerNormalization, 3.5x slower on the CPU than what it replaced (MiniLM: 2.15x → 2.49x
    over FP32 without them); the input declared none."""
    model = attention_block()
    quantized, _ = quantize(model)
    initializers = {t.name for t in quantized.graph.initializer}
    assert [v.name for v in quantized.graph.value_info if v.name not in initializers] == []


def test_library_check_compares_real_tokens_only():
    feeds = {"attention_mask": np.array([[1, 1, 0]])}
    out = np.arange(6, dtype=np.float32).reshape(1, 3, 2)
    (tokens,) = real_tokens([out], feeds)
    assert tokens.shape == (2, 1, 2) and tokens[:, 0].tolist() == [[0, 1], [2, 3]]
    embedding = np.ones((1, 4), np.float32)
    assert real_tokens([embedding], feeds)[0] is embedding


def test_attention_is_found_through_scaling_and_masking_only():
    assert _int8_scope.attention_softmax(attention_block()) is not None
    assert _int8_scope.attention_softmax(conv_stack()) is None
    assert [n.name for n in _int8_scope.activation_matmuls(attention_block())] == ["scores", "weighted"]


@pytest.mark.skipif(not (SEQUENCE / "paraphrase_minilm_l3.onnx").exists(), reason="needs ../shared/models/sequence")
def test_minilm_sentence_embeddings_survive_static_int8(real_cpu):
    """paraphrase-MiniLM-L3 calibrated on 30 sentences, judged on 60 others (before: mean
    cosine 0.78, Spearman of pairwise similarities 0.74 with 100 calibration sentences)."""
    from onnxopt import api, io
    from onnxopt.validate.output_kinds import pairwise_spearman

    proto = io.load_proto(SEQUENCE / "paraphrase_minilm_l3.onnx")
    data = api.data_source(proto, data=ROOT / "samples" / "sentences.txt",
                           preprocess=f"tokenizer={SEQUENCE / 'paraphrase_minilm_l3.tokenizer.json'} max_length=128")
    calibration, evaluation = data.subset(0, 30), data.subset(30, 90)
    context = PassContext(calibration=lambda: (b.feeds for b in calibration.batches(1)),
                          calibration_description=calibration.description)
    quantized, report = quantize(proto, "int8:library_check=false", context)
    reference = qc.ort_session(proto)
    candidate = qc.ort_session(quantized)
    ours, theirs = [], []
    for batch in evaluation.batches(20):
        ours.append(candidate.run(["461"], batch.feeds)[0])
        theirs.append(reference.run(["461"], batch.feeds)[0])
    a, b = np.concatenate(theirs).astype(np.float64), np.concatenate(ours).astype(np.float64)
    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosines.mean() >= 0.99
    assert pairwise_spearman(a, b) >= 0.99


def test_exclude_still_applies_under_ops_linear():
    quantized, report = quantize(attention_block(), "int8:exclude=q_proj|Softmax")
    made = producers(quantized)
    nodes = {n.name: n for n in quantized.graph.node}
    assert nodes["q_proj"].input[1] not in made  # the float weight itself
    assert made[nodes["k_proj"].input[1]].op_type == "DequantizeLinear"
    assert made[nodes["softmax"].input[0]].op_type != "DequantizeLinear"
    skipped = {s["node"]: s["reason"] for s in report.skipped}
    assert skipped["q_proj"] == "excluded by exclude=q_proj" and skipped["softmax"] == "excluded by exclude=Softmax"
