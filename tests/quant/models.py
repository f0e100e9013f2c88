"""Tiny seeded models and data for the quantization tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import make_model


def conv_stack(seed: int = 0, opset: int = 17, names: bool = True) -> onnx.ModelProto:
    """Conv(3→8) → Relu → Conv(8→8) → Relu → GlobalAveragePool → Flatten → Gemm(8→10) → MatMul(10→6)."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = [
        numpy_helper.from_array(w(8, 3, 3, 3), "conv1_w"), numpy_helper.from_array(w(8, scale=0.1), "conv1_b"),
        numpy_helper.from_array(w(8, 8, 3, 3, scale=0.2), "conv2_w"), numpy_helper.from_array(w(8, scale=0.1), "conv2_b"),
        numpy_helper.from_array(w(10, 8), "fc_w"), numpy_helper.from_array(w(10, scale=0.1), "fc_b"),
        numpy_helper.from_array(w(10, 6), "head_w"),
    ]
    n = (lambda name: name) if names else (lambda name: "")
    nodes = [
        helper.make_node("Conv", ["x", "conv1_w", "conv1_b"], ["c1"], name=n("conv1"), pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name=n("relu1")),
        helper.make_node("Conv", ["r1", "conv2_w", "conv2_b"], ["c2"], name=n("conv2"), pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name=n("relu2")),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name=n("pool")),
        helper.make_node("Flatten", ["p"], ["f"], name=n("flatten")),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["g"], name=n("fc"), transB=1),
        helper.make_node("MatMul", ["g", "head_w"], ["y"], name=n("head")),
    ]
    graph = helper.make_graph(nodes, "conv_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], inits)
    model = make_model(graph, opset=opset)
    onnx.checker.check_model(model)
    return model


def image_batches(count: int = 4, batch: int = 8, seed: int = 1, size: int = 8):
    """A calibration callable: ``count`` batches of ``batch`` samples, uniform in [0, 1)."""

    def batches():
        rng = np.random.default_rng(seed)
        for _ in range(count):
            yield {"x": rng.random((batch, 3, size, size), dtype=np.float32)}

    return batches


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Worst cosine similarity over the samples (rows) of two outputs."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return float(np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def feature_and_head(seed: int = 0, size: int = 16, activation: str = "Relu") -> onnx.ModelProto:
    """CRAFT's output layout in small: ``feature`` = Relu(Conv(x)) is a graph output *and* the
    input of a head — Conv → Relu → Conv(1×1, 2 maps) → Transpose to NHWC = ``maps``.
    ``activation="Clip"``: the trunk ends in Clip(0, 0.5) instead."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = [
        numpy_helper.from_array(w(16, 3, 3, 3), "trunk_w"), numpy_helper.from_array(w(16, scale=0.1), "trunk_b"),
        numpy_helper.from_array(w(16, 16, 3, 3, scale=0.1), "head1_w"), numpy_helper.from_array(w(16, scale=0.1), "head1_b"),
        numpy_helper.from_array(w(2, 16, 1, 1), "head2_w"), numpy_helper.from_array(w(2, scale=0.1), "head2_b"),
    ]
    if activation == "Clip":
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "clip_min"),
                  numpy_helper.from_array(np.array(0.5, np.float32), "clip_max")]
    nodes = [
        helper.make_node("Conv", ["x", "trunk_w", "trunk_b"], ["t"], name="trunk", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["t"], ["feature"], name="trunk_relu") if activation == "Relu" else
        helper.make_node("Clip", ["t", "clip_min", "clip_max"], ["feature"], name="trunk_clip"),
        helper.make_node("Conv", ["feature", "head1_w", "head1_b"], ["h1"], name="head1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["h1r"], name="head1_relu"),
        helper.make_node("Conv", ["h1r", "head2_w", "head2_b"], ["h2"], name="head2"),
        helper.make_node("Transpose", ["h2"], ["maps"], name="to_nhwc", perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes, "feature_and_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["N", size, size, 2]),
         helper.make_tensor_value_info("feature", TensorProto.FLOAT, ["N", 16, size, size])], inits)
    model = make_model(graph)
    onnx.checker.check_model(model)
    return model


def position_table_model(width: int = 16, table: int = 512) -> onnx.ModelProto:
    """A model onnxruntime's symbolic shape inference cannot finish: a position table sliced to
    the sequence length (Min(512, L)) added to an input of length L ("unsupported broadcast",
    as in paraphrase-MiniLM). ``infer_shapes`` then saves ``sym_shape_infer_temp.onnx`` and a
    ``<uuid>.data`` into the working directory before it raises."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((table, width)).astype(np.float32), "positions"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array((rng.standard_normal((width, width)) * 0.3).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "one"], ["length"], name="length", axis=0),
        helper.make_node("Slice", ["positions", "zero", "length", "zero"], ["used"], name="slice"),
        helper.make_node("Add", ["x", "used"], ["a"], name="add"),
        helper.make_node("MatMul", ["a", "w"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes, "position_table", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L", width])], inits)
    model = make_model(graph)
    onnx.checker.check_model(model)
    return model


def attention_block(seed: int = 0, vocab: int = 200, width: int = 32, pad_scale: float = 1.0,
                    mask_fill: float = float(np.finfo(np.float32).min)) -> onnx.ModelProto:
    """A one-layer, one-head sentence encoder, as transformers export it (opset 17):
    ``input_ids``, ``attention_mask`` [batch, seq] → embedding Gather → Q, K, V MatMuls with
    biases → Q·Kᵀ / √width + (1 − mask)·``mask_fill`` → Softmax → ·V → output MatMul → residual
    Add → LayerNormalization = ``tokens`` [batch, seq, width]; the mask-weighted mean of the
    tokens = ``embedding`` [batch, width]. ``pad_scale`` scales the embedding of token 0 (the
    padding id), so that padded positions can be made to dominate activation ranges."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    table = w(vocab, width)
    table[0] *= pad_scale
    inits = [numpy_helper.from_array(table, "table")]
    for name in ("q", "k", "v", "o"):
        inits += [numpy_helper.from_array(w(width, width, scale=width ** -0.5), f"w_{name}"),
                  numpy_helper.from_array(w(width, scale=0.1), f"b_{name}")]
    inits += [
        numpy_helper.from_array(np.ones(width, np.float32) + w(width, scale=0.1), "gamma"),
        numpy_helper.from_array(w(width, scale=0.1), "beta"),
        numpy_helper.from_array(np.array(width ** 0.5, np.float32), "sqrt_d"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(mask_fill, np.float32), "fill"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
    ]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["emb"], name="embedding")]
    for name in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["emb", f"w_{name}"], [f"{name}_mm"], name=f"{name}_proj"),
                  helper.make_node("Add", [f"{name}_mm", f"b_{name}"], [name], name=f"{name}_bias")]
    nodes += [
        helper.make_node("Transpose", ["k"], ["kt"], name="k_transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("Div", ["scores", "sqrt_d"], ["scaled"], name="scale"),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], name="mask_cast", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis1"], ["mask_row"], name="mask_row"),
        helper.make_node("Sub", ["one", "mask_row"], ["inverted"], name="mask_invert"),
        helper.make_node("Mul", ["inverted", "fill"], ["mask_bias"], name="mask_bias"),
        helper.make_node("Add", ["scaled", "mask_bias"], ["masked_scores"], name="mask_add"),
        helper.make_node("Softmax", ["masked_scores"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["context"], name="weighted"),
        helper.make_node("MatMul", ["context", "w_o"], ["o_mm"], name="o_proj"),
        helper.make_node("Add", ["o_mm", "b_o"], ["attended"], name="o_bias"),
        helper.make_node("Add", ["attended", "emb"], ["residual"], name="residual"),
        helper.make_node("LayerNormalization", ["residual", "gamma", "beta"], ["tokens"], name="norm", axis=-1),
        helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"], name="mask_column"),
        helper.make_node("Mul", ["tokens", "mask3"], ["kept"], name="pool_mask"),
        helper.make_node("ReduceSum", ["kept", "axis1"], ["total"], name="pool_sum", keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], name="pool_count", keepdims=0),
        helper.make_node("Div", ["total", "count"], ["embedding"], name="pool_mean"),
    ]
    graph = helper.make_graph(
        nodes, "attention_block",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "sequence", width]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", width])],
        inits)
    model = make_model(graph)
    onnx.checker.check_model(model)
    return model


def token_batches(count: int = 4, batch: int = 8, seed: int = 1, length: int = 32, vocab: int = 200,
                  shortest: int = 3, longest: int = 12):
    """A calibration callable: ``count`` batches of ``batch`` right-padded token samples
    (``shortest``..``longest`` real tokens of ids 1..vocab-1, then padding id 0, mask 0)."""

    def batches():
        rng = np.random.default_rng(seed)
        for _ in range(count):
            yield token_feeds(rng, batch, length, vocab, shortest, longest)

    return batches


def token_feeds(rng: np.random.Generator, batch: int, length: int = 32, vocab: int = 200, shortest: int = 3,
                longest: int = 12) -> dict[str, np.ndarray]:
    """One batch of right-padded token samples (see :func:`token_batches`)."""
    ids = np.zeros((batch, length), np.int64)
    mask = np.zeros((batch, length), np.int64)
    for row in range(batch):
        real = int(rng.integers(shortest, longest + 1))
        ids[row, :real] = rng.integers(1, vocab, real)
        mask[row, :real] = 1
    return {"input_ids": ids, "attention_mask": mask}


def real_token_cosine(reference: np.ndarray, candidate: np.ndarray, mask: np.ndarray) -> float:
    """Worst cosine over the real tokens of two [batch, seq, dim] outputs."""
    a = reference[mask != 0].astype(np.float64)
    b = candidate[mask != 0].astype(np.float64)
    return float(np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
