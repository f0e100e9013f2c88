"""Transformers in ``inspect``, ``profile`` and ``check --hints`` (issue 15, item 5): MatMul
MACs at the sequence length (``--input-shape`` or 128), attention vs MLP time, and the
MatMul candidates for ``svd`` / ``int8-dynamic``."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxopt import analysis
from onnxopt.analysis import inputs as input_facts
from onnxopt.analysis.blocks import ATTENTION, MLP, block_labels, name_label, structural_labels
from onnxopt.check import CheckConfig, check_model_file
from onnxopt.cli.inspect_cmd import describe
from tests.helpers import make_model

HIDDEN, FFN, VOCAB = 64, 128, 50
PREFIX = "/encoder/layer.0"
NAMES = {
    "q": f"{PREFIX}/attention/self/query/MatMul", "k": f"{PREFIX}/attention/self/key/MatMul",
    "v": f"{PREFIX}/attention/self/value/MatMul", "scores": f"{PREFIX}/attention/self/MatMul",
    "context": f"{PREFIX}/attention/self/MatMul_1", "o": f"{PREFIX}/attention/output/dense/MatMul",
    "f1": f"{PREFIX}/intermediate/dense/MatMul", "f2": f"{PREFIX}/output/dense/MatMul",
}


def tiny_bert(named: bool = True) -> onnx.ModelProto:
    """One BERT layer, one head: ids [batch, seq] → embedding → Q·Kᵀ/8 → Softmax → ·V → out
    projection + residual → 64→128 Relu 128→64 MLP + residual."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    initializers = [weight("emb", VOCAB, HIDDEN), weight("wq", HIDDEN, HIDDEN), weight("wk", HIDDEN, HIDDEN),
                    weight("wv", HIDDEN, HIDDEN), weight("wo", HIDDEN, HIDDEN), weight("w1", HIDDEN, FFN),
                    weight("w2", FFN, HIDDEN), numpy_helper.from_array(np.array(8.0, np.float32), "scale")]
    node = helper.make_node
    nodes = [
        node("Gather", ["emb", "ids"], ["x"], name="/embeddings/Gather"),
        node("MatMul", ["x", "wq"], ["q"], name=NAMES["q"]),
        node("MatMul", ["x", "wk"], ["k"], name=NAMES["k"]),
        node("MatMul", ["x", "wv"], ["v"], name=NAMES["v"]),
        node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name=f"{PREFIX}/attention/self/Transpose"),
        node("MatMul", ["q", "kt"], ["s"], name=NAMES["scores"]),
        node("Div", ["s", "scale"], ["sd"], name=f"{PREFIX}/attention/self/Div"),
        node("Softmax", ["sd"], ["p"], axis=-1, name=f"{PREFIX}/attention/self/Softmax"),
        node("MatMul", ["p", "v"], ["c"], name=NAMES["context"]),
        node("MatMul", ["c", "wo"], ["o"], name=NAMES["o"]),
        node("Add", ["o", "x"], ["h"], name=f"{PREFIX}/attention/output/Add"),
        node("MatMul", ["h", "w1"], ["f1"], name=NAMES["f1"]),
        node("Relu", ["f1"], ["a"], name=f"{PREFIX}/intermediate/Relu"),
        node("MatMul", ["a", "w2"], ["f2"], name=NAMES["f2"]),
        node("Add", ["f2", "h"], ["y"], name=f"{PREFIX}/output/Add"),
    ]
    if not named:
        for n in nodes:
            n.name = ""
    graph = helper.make_graph(
        nodes, "tiny_bert", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", HIDDEN])], initializer=initializers,
    )
    return make_model(graph)


def expected_macs(seq: int, batch: int = 1) -> dict[str, int]:
    projection = batch * seq * HIDDEN * HIDDEN
    square = batch * seq * seq * HIDDEN
    return {NAMES["q"]: projection, NAMES["k"]: projection, NAMES["v"]: projection, NAMES["scores"]: square,
            NAMES["context"]: square, NAMES["o"]: projection, NAMES["f1"]: batch * seq * HIDDEN * FFN,
            NAMES["f2"]: batch * seq * FFN * HIDDEN}


# --------------------------------------------------------------------------- MACs


def test_default_sequence_is_the_validation_inputs_default():
    assert analysis.DEFAULT_SEQUENCE == input_facts.DEFAULT_SEQUENCE == 128


def test_inspect_counts_matmul_macs_at_sequence_length_128_by_default():
    info = describe(tiny_bert(), {})
    macs = {layer["node"]: layer["macs"] for layer in info["layers"]}
    assert macs == expected_macs(128)
    assert info["macs"] == sum(expected_macs(128).values())
    assert info["sequence_length"] == 128 and info["sequence_dims"] == ["ids dim 1 (seq)"]


def test_inspect_counts_at_the_input_shape_given():
    info = describe(tiny_bert(), {"ids": (2, 32)})
    assert {layer["node"]: layer["macs"] for layer in info["layers"]} == expected_macs(32, batch=2)
    assert info["sequence_length"] is None and info["sequence_dims"] == []


def test_a_shape_given_for_one_input_reaches_the_inputs_sharing_its_dim_names():
    model = tiny_bert()
    model.graph.input.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]))
    assert analysis.assumed_dims(model) == ["ids dim 1 (seq)", "attention_mask dim 1 (seq)"]
    assert analysis.assumed_dims(model, {"ids": (1, 16)}) == []


def test_inspect_cli_says_which_sequence_length(tmp_path):
    from onnxopt.cli.inspect_cmd import command

    path = tmp_path / "bert.onnx"
    onnx.save(tiny_bert(), path)
    result = CliRunner().invoke(command, [str(path)])
    assert result.exit_code == 0, result.output
    assert "MACs at sequence length 128 (ids dim 1 (seq)); set it with --input-shape" in " ".join(result.output.split())
    result = CliRunner().invoke(command, [str(path), "--input-shape", "ids:1x16", "--json"])
    assert json.loads(result.stdout)["macs"] == sum(expected_macs(16).values())


# --------------------------------------------------------------------------- blocks


def test_block_labels_by_structure_and_by_names():
    want = {NAMES[k]: ATTENTION for k in ("q", "k", "v", "scores", "context", "o")}
    want.update({NAMES["f1"]: MLP, NAMES["f2"]: MLP})
    assert structural_labels(tiny_bert()) == want
    assert block_labels(tiny_bert()) == want
    # unnamed: the same from the structure alone, keyed like node_costs
    unnamed = tiny_bert(named=False)
    keys = {f"MatMul_{i}" for i, n in enumerate(unnamed.graph.node) if n.op_type == "MatMul"}
    labels = block_labels(unnamed)
    assert set(labels) == keys and sorted(labels.values()).count(ATTENTION) == 6
    assert set(labels) <= set(analysis.node_costs(unnamed))
    assert name_label("/encoder/layer.3/attention/output/dense/MatMul") == ATTENTION
    assert name_label("/encoder/layer.3/output/dense/MatMul") == MLP
    assert name_label("h.0/mlp/c_fc/MatMul") == MLP and name_label("conv1") is None


def test_names_label_where_the_structure_says_nothing():
    model = tiny_bert()
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    softmax.op_type = "Sigmoid"  # no Softmax: no structural attention
    labels = block_labels(model)
    assert labels[NAMES["q"]] == ATTENTION and labels[NAMES["f2"]] == MLP


def test_a_cnn_has_no_blocks():
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["l"], name="fc"), helper.make_node("Softmax", ["l"], ["y"])],
        "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(np.zeros((64, 10), np.float32), "w")],
    )
    assert block_labels(make_model(graph)) == {}


def test_profile_ranks_attention_vs_mlp_time():
    from onnxopt.bench.profile import profile_model

    feeds = {"ids": np.random.default_rng(0).integers(0, VOCAB, (1, 128)).astype(np.int64)}
    result = profile_model(tiny_bert(), feeds, runs=3, warmup=1, threads=1)
    matmuls = {row.name: row.macs for row in result.nodes if row.matched and row.op_type == "MatMul"}
    assert matmuls == {k: v for k, v in expected_macs(128).items() if k in matmuls} and len(matmuls) >= 6
    blocks = result.blocks
    assert blocks is not None and blocks[MLP]["nodes"] == 2 and blocks[ATTENTION]["nodes"] >= 4
    assert blocks[ATTENTION]["ms"] > 0 and blocks[MLP]["ms"] > 0 and blocks["other"]["nodes"] == 0
    assert result.to_dict()["blocks"] == blocks


def test_profile_cli_prints_the_attention_vs_mlp_line(tmp_path):
    from onnxopt.cli.profile import command

    path = tmp_path / "bert.onnx"
    onnx.save(tiny_bert(), path)
    result = CliRunner().invoke(command, [str(path), "--runs", "2", "--warmup", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "attention vs MLP (MatMul/Gemm kernel time): attention " in result.output
    assert "MLP/attention" in result.output


# --------------------------------------------------------------------------- check --hints


def test_check_hints_mark_matmul_candidates_for_svd_and_int8_dynamic(tmp_path):
    path = tmp_path / "bert.onnx"
    onnx.save(tiny_bert(), path)
    hints = [f.message for f in check_model_file(path, CheckConfig(hints=True)) if f.rule == "hints"]
    linear = [h for h in hints if "'svd'" in h]
    assert len(linear) == 1, hints
    total = sum(expected_macs(128).values())
    weighted = total - 2 * 128 * 128 * HIDDEN
    text = linear[0]
    assert text.startswith("6 MatMul/Gemm layer(s) with a constant float weight (smaller side ≥ 64) are "
                           "candidates for 'svd' (low-rank factors) and 'int8-dynamic'"), text
    assert f"({100 * weighted / total:.0f}%) at sequence length 128, batch 1" in text
    assert "4 in attention blocks, 2 in MLP blocks" in text
    assert f"largest: '{NAMES['f1']}' 64×128" in text
    # the INT8 line can give its MAC share now that the MatMuls are counted
    assert any("INT8 quantization applies to 6 Conv/Gemm/MatMul layer(s) with float weights (" in h for h in hints)


def test_integer_matmuls_keep_their_macs():
    """int8-dynamic's MatMulInteger costs the MACs of the MatMul it replaced (the optimize
    report's before/after of a transformer must not read as a 20× cut)."""
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
         helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["y"], name="mm")],
        "int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["batch", "seq", HIDDEN])],
        initializer=[numpy_helper.from_array(np.ones((HIDDEN, HIDDEN), np.int8), "w"),
                     numpy_helper.from_array(np.array(0, np.int8), "wz")],
    )
    costs = analysis.node_costs(make_model(graph), {"x": (1, 128, HIDDEN)})
    assert costs["mm"].macs == 128 * HIDDEN * HIDDEN
