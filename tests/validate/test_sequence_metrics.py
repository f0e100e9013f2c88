"""Metrics of sequence models' outputs (issue 15, item 2): output kinds, padding masked out of
token outputs, the Spearman of pairwise similarities of sentence embeddings, integer
outputs compared exactly."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.validate import metrics as metrics_module
from onnxopt.validate.metrics import MetricsAccumulator, OutputAccumulator
from onnxopt.validate.output_kinds import output_kind, pairwise_spearman, spearman
from onnxopt.validate.tolerances import OutputMetrics, Tolerances, check_gate


def _text_feeds(mask: np.ndarray) -> dict[str, np.ndarray]:
    ids = np.where(mask != 0, 1000 + np.arange(mask.shape[1]), 0).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask.astype(np.int64)}


def _padded_mask(lengths, seq: int) -> np.ndarray:
    return (np.arange(seq)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)


def metrics_of(reference, candidate, feeds=None, name="y", batches=None) -> OutputMetrics:
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    accumulator = OutputAccumulator(name)
    bounds = batches or [(0, len(reference))]
    for start, stop in bounds:
        part = None if feeds is None else {k: v[start:stop] for k, v in feeds.items()}
        accumulator.update(reference[start:stop], candidate[start:stop], [str(i) for i in range(start, stop)],
                           None, part)
    return accumulator.result()


def _numpy_spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation with numpy only (no ties): Pearson of the ranks."""
    return float(np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1])


def _pairs(e: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities, i < j, by loops (the definition)."""
    values = []
    for i in range(len(e)):
        for j in range(i + 1, len(e)):
            values.append(float(e[i] @ e[j] / (np.linalg.norm(e[i]) * np.linalg.norm(e[j]))))
    return np.asarray(values)


# --------------------------------------------------------------------------- kinds


@pytest.mark.parametrize(("shape", "dtype", "feeds", "name", "kind"), [
    ((4, 384), np.float32, "text", "461", "embedding"),
    ((4, 384), np.float32, "ids only", "sentence_embedding", "embedding"),
    ((4, 2), np.float32, "text", "output", "classifier"),  # a text classifier: 2 labels
    ((4, 384), np.float32, "text", "logits", "classifier"),  # its name says so
    ((4, 384), np.float32, "image", "features", "classifier"),  # not a sequence model: as before
    ((4, 384), np.float32, None, "461", "classifier"),  # no feeds given: as before
    ((4, 16, 384), np.float32, "text", "last_hidden_state", "tokens"),
    ((4, 16, 384), np.float32, "image", "boxes", "other"),
    ((4, 16), np.int64, "text", "output", "integer"),
    ((4, 16), np.bool_, None, "mask", "integer"),
])
def test_output_kind(shape, dtype, feeds, name, kind):
    given = {
        "text": _text_feeds(_padded_mask([3, 16, 1, 8], 16)),
        "ids only": {"input_ids": np.ones((4, 16), np.int64)},
        "image": {"images": np.zeros((4, 3, 8, 8), np.float32), "orig_target_sizes": np.ones((4, 2), np.int64)},
        None: None,
    }[feeds]
    assert output_kind(name, np.zeros(shape, dtype), given) == kind


def test_embedding_outputs_get_no_top1_agreement():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 384)).astype(np.float32)
    cand = ref + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)
    feeds = _text_feeds(_padded_mask([5, 3, 9, 2, 7, 4], 12))
    m = metrics_of(ref, cand, feeds, name="461")
    assert m.kind == "embedding"
    assert not m.classifier and m.top1_agreement is None
    assert m.pairwise_spearman is not None and m.pairwise_samples == 6
    assert m.cosine_p5 is not None  # the per-sentence cosine stays
    # The same arrays without the model's inputs: judged as a classifier, as before.
    assert metrics_of(ref, cand, name="461").classifier


# --------------------------------------------------------------------------- tokens


def test_padding_is_left_out_of_token_outputs():
    rng = np.random.default_rng(1)
    lengths = [3, 7, 1, 5]
    mask = _padded_mask(lengths, 8)
    ref = rng.standard_normal((4, 8, 16)).astype(np.float32)
    cand = ref.copy()
    cand[mask == 0] = rng.standard_normal(cand[mask == 0].shape)  # only the padding differs
    m = metrics_of(ref, cand, _text_feeds(mask), name="token_embeddings")
    assert m.kind == "tokens"
    assert m.cosine_min == pytest.approx(1.0) and m.cosine_p5 == pytest.approx(1.0)
    assert m.max_abs_error == 0.0 and m.rel_l2_error == 0.0
    assert m.elements == sum(lengths) * 16
    assert m.tokens == sum(lengths)
    assert m.token_cosine_mean == pytest.approx(1.0) and m.token_cosine_p5 == pytest.approx(1.0)
    assert check_gate([m], Tolerances(max_rel_error=1e-4)) == []
    # The channel cosine of detection-like outputs ([N, boxes, ≤128 attributes]) does not apply.
    assert m.channel_cosine_min is None


def test_token_cosines_are_per_real_token_and_stream():
    rng = np.random.default_rng(2)
    lengths = [4, 9, 2, 6, 9, 1, 3]
    mask = _padded_mask(lengths, 9)
    ref = rng.standard_normal((7, 9, 8))
    cand = ref + 0.3 * rng.standard_normal(ref.shape)
    real = mask.astype(bool)
    a, b = ref[real], cand[real]
    expected = np.einsum("td,td->t", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    per_sample = [float(np.sum(ref[i, :n] * cand[i, :n]) / (np.linalg.norm(ref[i, :n]) * np.linalg.norm(cand[i, :n])))
                  for i, n in enumerate(lengths)]
    for batches in (None, [(0, 2), (2, 3), (3, 7)]):
        m = metrics_of(ref, cand, _text_feeds(mask), batches=batches)
        assert m.tokens == real.sum()
        assert m.token_cosine_mean == pytest.approx(expected.mean(), rel=1e-6)
        assert m.token_cosine_p5 == pytest.approx(np.percentile(expected, 5, method="lower"), rel=1e-6)
        assert m.cosine_min == pytest.approx(min(per_sample), rel=1e-9)
        assert m.cosine_mean == pytest.approx(np.mean(per_sample), rel=1e-9)


def test_a_mask_of_another_shape_masks_nothing():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((2, 5, 8))
    cand = ref.copy()
    cand[:, 4] += 1.0
    feeds = _text_feeds(_padded_mask([2, 3], 6))  # seq 6, the output has 5 positions
    m = metrics_of(ref, cand, feeds)
    assert m.kind == "tokens" and m.tokens == 10
    assert m.cosine_min < 1.0


# --------------------------------------------------------------------------- Spearman


def test_spearman_matches_a_numpy_rank_correlation():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(40)
    y = x + rng.standard_normal(40)
    assert spearman(x, y) == pytest.approx(_numpy_spearman(x, y), abs=1e-12)
    assert spearman(x, x) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(np.ones(5), x[:5]) is None


def test_spearman_gives_ties_their_average_rank():
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 6.0])
    rx = np.array([1.0, 2.5, 2.5, 4.0, 5.0])  # the two 2.0 share ranks 2 and 3
    ry = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    assert spearman(x, y) == pytest.approx(float(np.corrcoef(rx, ry)[0, 1]), abs=1e-12)


def test_pairwise_spearman_of_the_evaluation_set_streams():
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((23, 64)).astype(np.float32)
    cand = ref + 0.4 * rng.standard_normal(ref.shape).astype(np.float32)
    feeds = _text_feeds(_padded_mask(rng.integers(1, 10, 23), 10))
    expected = _numpy_spearman(_pairs(ref.astype(np.float64)), _pairs(cand.astype(np.float64)))
    assert 0.5 < expected < 0.99
    for batches in (None, [(0, 1), (1, 8), (8, 23)]):
        m = metrics_of(ref, cand, feeds, batches=batches)
        assert m.pairwise_samples == 23
        assert m.pairwise_spearman == pytest.approx(expected, abs=1e-6)
    assert pairwise_spearman(ref[:2], cand[:2]) is None  # one pair: no ranking


def test_pairwise_spearman_holds_a_deterministic_subset(monkeypatch):
    monkeypatch.setattr(metrics_module, "MAX_PAIRWISE_SAMPLES", 10)
    rng = np.random.default_rng(6)
    ref = rng.standard_normal((37, 64))
    cand = ref + 0.5 * rng.standard_normal(ref.shape)
    feeds = _text_feeds(_padded_mask(rng.integers(1, 5, 37), 5))
    results = [metrics_of(ref, cand, feeds, batches=batches)
               for batches in (None, [(0, 5), (5, 6), (6, 30), (30, 37)], [(i, i + 1) for i in range(37)])]
    assert {m.pairwise_samples for m in results} == {10}
    assert len({m.pairwise_spearman for m in results}) == 1  # the same subset whatever the batches
    keys = metrics_module._sample_keys(np.arange(37))
    kept = np.sort(np.argsort(keys)[:10])
    assert results[0].pairwise_spearman == pytest.approx(pairwise_spearman(ref[kept], cand[kept]), abs=1e-6)


def test_gate_checks_pairwise_spearman_of_embeddings_only():
    rng = np.random.default_rng(7)
    ref = rng.standard_normal((20, 64))
    cand = ref + 1.0 * rng.standard_normal(ref.shape)
    feeds = _text_feeds(_padded_mask(rng.integers(1, 5, 20), 5))
    m = metrics_of(ref, cand, feeds)
    failures = check_gate([m], Tolerances(min_pairwise_spearman=0.99))
    assert len(failures) == 1 and "Spearman of pairwise similarities" in failures[0]
    assert "20 samples' pairs" in failures[0]
    other = metrics_of(ref, cand)  # the same values judged without the model's inputs: a classifier
    assert check_gate([other], Tolerances(min_pairwise_spearman=0.99)) == []


# --------------------------------------------------------------------------- integers


def test_pass_through_integer_outputs_compare_exactly_and_any_difference_fails():
    feeds = _text_feeds(_padded_mask([8, 8, 8], 8))
    ids = feeds["input_ids"]  # the model returns its token ids unchanged
    changed = ids.copy()
    changed[1, 2] += 1
    same = metrics_of(ids, ids, feeds, name="output")
    assert same.kind == "integer" and same.integer_mismatches == 0 and same.integer_pass_through
    assert not same.classifier and same.top1_agreement is None and same.cosine_min is None
    assert check_gate([same], Tolerances()) == []
    m = metrics_of(ids, changed, feeds, name="output")
    assert m.integer_mismatches == 1
    for tolerances in (Tolerances(), Tolerances(min_cosine_p5=0.5), Tolerances(max_rel_error=1.0)):
        failures = check_gate([m], tolerances)
        assert failures and f"1 of {ids.size} integer values differ" in failures[0]


def test_computed_integer_outputs_are_reported_not_failed():
    """argmax labels: a lossy pass may flip a few; the count is reported, no bound is applied."""
    feeds = _text_feeds(_padded_mask([8, 8, 8], 8))
    labels = np.arange(24, dtype=np.int64).reshape(3, 8) % 5
    flipped = labels.copy()
    flipped[0, 0] = 4 - flipped[0, 0]
    m = metrics_of(labels, flipped, feeds, name="labels")
    assert m.kind == "integer" and m.integer_mismatches == 1 and m.integer_pass_through is False
    assert check_gate([m], Tolerances(min_cosine_p5=0.98)) == []


def test_metrics_accumulator_passes_feeds_to_every_output():
    mask = _padded_mask([2, 4], 4)
    feeds = _text_feeds(mask)
    rng = np.random.default_rng(8)
    tokens = rng.standard_normal((2, 4, 64))
    outputs = {"ids": feeds["input_ids"], "tokens": tokens, "sentence": tokens.mean(axis=1)}
    accumulator = MetricsAccumulator(outputs)
    accumulator.update(outputs, outputs, ["0", "1"], None, feeds)
    kinds = {m.name: m.kind for m in accumulator.result()}
    assert kinds == {"ids": "integer", "tokens": "tokens", "sentence": "embedding"}


# --------------------------------------------------------------------------- end to end


def test_compare_models_masks_padding_of_a_text_model(tmp_path):
    """Gather rows of a table by token id; the candidate differs only in the padding row
    (id 0): its token output is judged equal, the integer pass-through exactly."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxopt import api
    from onnxopt.validate.compare import compare_models

    def model(table: np.ndarray) -> bytes:
        graph = helper.make_graph(
            [helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
             helper.make_node("Identity", ["attention_mask"], ["mask_out"])],
            "g",
            [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
             helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
            [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["b", "s", 64]),
             helper.make_tensor_value_info("mask_out", TensorProto.INT64, ["b", "s"])],
            [numpy_helper.from_array(table, "table")],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        return proto.SerializeToString()

    rng = np.random.default_rng(9)
    table = rng.standard_normal((50, 64)).astype(np.float32)
    other = table.copy()
    other[0] = rng.standard_normal(64)  # the pad token's row
    mask = _padded_mask([3, 6, 2, 4], 6)
    ids = np.where(mask != 0, rng.integers(1, 50, mask.shape), 0).astype(np.int64)
    np.savez(tmp_path / "text.npz", input_ids=ids, attention_mask=mask)
    reference = model(table)
    source = api.data_source(onnx.load_from_string(reference), data=tmp_path / "text.npz")
    result = compare_models(reference, model(other), source, batch_size=2)
    by_name = {m.name: m for m in result.metrics}
    assert by_name["tokens"].kind == "tokens" and by_name["tokens"].cosine_min == pytest.approx(1.0)
    assert by_name["tokens"].tokens == mask.sum()
    assert by_name["mask_out"].kind == "integer" and by_name["mask_out"].integer_mismatches == 0
    assert result.failures(Tolerances(max_rel_error=1e-4)) == []


# --------------------------------------------------------------------------- table


def test_sequence_figures_are_shown_in_80_columns():
    import io

    from rich.console import Console

    from onnxopt.cli.tables import print_metrics

    base = {"provider": "cpu", "reference_provider": "cpu", "samples": 200, "max_abs_error": 0.25,
            "mean_abs_error": 0.04, "rel_l2_error": 0.22, "cosine_mean": 0.974861, "cosine_min": 0.957996,
            "snr_db": 13.1, "classifier": False, "top1_agreement": None, "labeled": 0,
            "token_cosine_mean": None, "token_cosine_p5": None, "pairwise_spearman": None,
            "pairwise_samples": 0, "integer_mismatches": None}
    rows = [
        {**base, "output": "output", "kind": "integer", "integer_mismatches": 0, "cosine_mean": None,
         "cosine_min": None},
        {**base, "output": "onnx::Shape_422", "kind": "tokens", "token_cosine_mean": 0.981234,
         "token_cosine_p5": 0.962345},
        {**base, "output": "461", "kind": "embedding", "pairwise_spearman": 0.991234, "pairwise_samples": 200},
        {**base, "output": "logits", "kind": "classifier", "classifier": True, "top1_agreement": 0.99},
    ]
    for providers, mode in ((["cpu"], "models"), (["cpu", "cuda"], "models")):
        stream = io.StringIO()
        print_metrics(Console(file=stream, width=80, color_system=None, legacy_windows=False), rows, mode=mode,
                      providers=providers)
        text = stream.getvalue()
        assert "…" not in text, text
        assert max(len(line.rstrip()) for line in text.splitlines()) <= 80, text
        assert "output kind tok cos mean tok cos p5 spearman int diff" in " ".join(text.split())
        assert "0.962345" in text and "0.991234" in text and "embedding" in text
        assert "200 samples' pairs" in " ".join(text.split())
        assert "logits" not in text.split("sequence outputs")[-1]  # a classifier is not in the sequence table


def test_lossy_defaults_bound_the_spearman_of_embeddings_with_data_only():
    from onnxopt.validate.gate import FP16_TOLERANCES, default_tolerances

    class Int8Dynamic:
        name, lossless = "int8-dynamic", False

    assert default_tolerances([Int8Dynamic], has_data=True)[0].min_pairwise_spearman == 0.99
    assert default_tolerances([Int8Dynamic], has_data=False)[0].min_pairwise_spearman is None
    assert FP16_TOLERANCES.min_pairwise_spearman is None
