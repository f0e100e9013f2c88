"""onnxopt.validate.metrics: hand-computed metrics, streaming, edge cases, the gate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from onnxopt.errors import InputError
from onnxopt.validate.data import load_labels
from onnxopt.validate.metrics import MetricsAccumulator, OutputAccumulator, compute_metrics
from onnxopt.validate.tolerances import OutputMetrics, Tolerances, check_gate
from tests.helpers import SHARED_IMAGES


def metrics_of(reference, candidate, ids=None, labels=None, name="y") -> OutputMetrics:
    accumulator = OutputAccumulator(name)
    accumulator.update(np.asarray(reference), np.asarray(candidate), ids, labels)
    return accumulator.result()


# --------------------------------------------------------------------------- hand-computed


def test_metrics_match_hand_computed_values():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    cand = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
    m = metrics_of(ref, cand, ids=["a", "b"], labels={"a": 1, "b": 0})
    assert m.samples == 2 and m.elements == 4
    assert m.max_abs_error == 1.0
    assert m.mean_abs_error == 0.25
    assert m.rel_l2_error == pytest.approx(1 / math.sqrt(30))
    cos_b = (9 + 20) / (5 * math.sqrt(34))
    assert m.cosine_mean == pytest.approx((1 + cos_b) / 2)
    assert m.cosine_min == pytest.approx(cos_b)
    assert m.snr_db == pytest.approx(10 * math.log10(30))
    # [N, 2] output: a classifier. Both pick class 1 for both samples.
    assert m.classifier and m.top1_agreement == 1.0
    assert m.labeled == 2
    assert (m.reference_top1, m.candidate_top1) == (0.5, 0.5)
    assert (m.reference_top5, m.candidate_top5) == (1.0, 1.0)  # k = min(5, classes) = 2


def test_top1_top5_and_agreement():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 10))
    cand = ref.copy()
    cand[0] = -cand[0]  # sample 0 changes its top-1
    ids = [f"s{i}" for i in range(6)]
    order = np.argsort(-ref, axis=1)
    labels = {"s0": int(order[0, 0]), "s1": int(order[1, 3]), "s2": int(order[2, 7])}  # s3..s5 unlabelled
    m = metrics_of(ref, cand, ids, labels)
    assert m.top1_agreement == pytest.approx(5 / 6)
    assert m.labeled == 3
    assert m.reference_top1 == pytest.approx(1 / 3)
    assert m.reference_top5 == pytest.approx(2 / 3)
    assert m.candidate_top1 == pytest.approx(0.0)
    assert m.candidate_top5 == pytest.approx(1 / 3)


def test_non_classifier_outputs_have_no_agreement():
    m = metrics_of(np.ones((2, 3, 4)), np.ones((2, 3, 4)), ids=["0", "1"])
    assert not m.classifier and m.top1_agreement is None
    assert metrics_of(np.ones((2, 1)), np.ones((2, 1)), ids=["0", "1"]).classifier is False


def test_sample_axis_is_the_batch_only_when_it_matches_the_ids():
    # Output [1, 3549, 6] for a batch of one: one sample. Output [5] for a batch of 2: one sample.
    ref = np.random.default_rng(1).standard_normal((1, 7, 6))
    assert metrics_of(ref, ref, ids=["0"]).samples == 1
    assert metrics_of(np.arange(5.0), np.arange(5.0), ids=["0", "1"]).samples == 1
    assert metrics_of(np.float32(3.0), np.float32(3.0), ids=["0"]).cosine_min == 1.0


# --------------------------------------------------------------------------- streaming


def test_streaming_equals_one_batch():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((12, 10)).astype(np.float32)
    cand = (ref + 0.05 * rng.standard_normal((12, 10))).astype(np.float32)
    ids = [str(i) for i in range(12)]
    labels = {str(i): i % 10 for i in range(0, 12, 2)}
    whole = metrics_of(ref, cand, ids, labels)
    acc = OutputAccumulator("y")
    for start, stop in ((0, 1), (1, 5), (5, 12)):
        acc.update(ref[start:stop], cand[start:stop], ids[start:stop], labels)
    parts = acc.result()
    for key, value in whole.to_dict().items():
        if isinstance(value, float):
            assert getattr(parts, key) == pytest.approx(value, rel=1e-12), key
        else:
            assert getattr(parts, key) == value, key
    for rtol in (0.0, 0.01, 0.1, 1.0, 10.0):
        assert parts.allclose_excess(rtol) == pytest.approx(whole.allclose_excess(rtol), rel=1e-12)


@pytest.mark.parametrize("kind", ["noise", "proportional", "mixed"])
def test_allclose_excess_is_exact(kind):
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((8, 4000))
    if kind == "noise":
        cand = ref + 1e-3 * rng.standard_normal(ref.shape)
    elif kind == "proportional":  # fp16-like error: many points on the Pareto staircase
        cand = ref * (1 + 1e-3 * rng.random(ref.shape))
    else:
        cand = ref * (1 + 1e-3 * rng.standard_normal(ref.shape)) + 1e-5 * rng.standard_normal(ref.shape)
    acc = OutputAccumulator("y")
    for start in range(0, 8, 3):
        acc.update(ref[start:start + 3], cand[start:start + 3], None)
    m = acc.result()
    assert m.envelope[0].size < 2000  # kept points, not all 32000
    diff, base = np.abs(ref - cand), np.abs(ref)
    for rtol in (0.0, 1e-4, 5e-4, 1e-3, 2e-3, 1.0):
        assert m.allclose_excess(rtol) == pytest.approx(float(np.max(diff - rtol * base)), rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("power", [0.5, 2.0])
def test_allclose_excess_is_exact_on_long_staircases(power):
    # |a−b| grows with |a| (concave or convex): thousands of Pareto points, so the convex
    # hull reduction runs, and its result must still be exact for every rtol.
    rng = np.random.default_rng(2)
    ref = np.sort(rng.random(20000)) * 10
    cand = ref + 1e-3 * ref**power * (1 + 0.01 * rng.random(ref.size))
    m = metrics_of(ref[None], cand[None], ids=["0"])
    assert m.envelope[0].size < 1000
    diff = np.abs(ref - cand)
    for rtol in (0.0, 1e-4, 1e-3, 2e-3, 5e-3, 1e-2, 0.1):
        assert m.allclose_excess(rtol) == pytest.approx(float(np.max(diff - rtol * ref)), rel=1e-12, abs=1e-18)


def test_metrics_accumulator_handles_several_outputs():
    ref = {"a": np.ones((2, 3)), "b": np.zeros((2, 2))}
    cand = {"a": np.ones((2, 3)) * 2, "b": np.zeros((2, 2))}
    acc = MetricsAccumulator(["a", "b"])
    acc.update(ref, cand, ["0", "1"])
    a, b = acc.result()
    assert (a.name, a.max_abs_error, a.rel_l2_error) == ("a", 1.0, 1.0)
    assert (b.name, b.rel_l2_error, b.snr_db, b.cosine_min) == ("b", 0.0, math.inf, 1.0)
    assert [m.name for m in compute_metrics(ref, cand, ["0", "1"])] == ["a", "b"]


# --------------------------------------------------------------------------- edge cases


def test_nan_and_inf_are_counted_and_left_out():
    ref = np.array([[1.0, np.nan, np.inf, 2.0]])
    same = np.array([[1.0, np.nan, np.inf, 2.5]])
    m = metrics_of(ref, same, ids=["0"])
    assert (m.nonfinite_reference, m.nonfinite_candidate, m.nonfinite_mismatch) == (2, 2, 0)
    assert m.elements == 2 and m.max_abs_error == 0.5 and m.mean_abs_error == 0.25
    assert m.rel_l2_error == pytest.approx(0.5 / math.sqrt(5))
    assert check_gate([m], Tolerances(max_rel_error=1.0)) == []

    broken = np.array([[np.nan, 0.0, -np.inf, np.inf]])
    m = metrics_of(ref, broken, ids=["0"])
    assert m.nonfinite_mismatch == 4  # NaN vs 1, 0 vs NaN, -inf vs +inf, inf vs 2
    assert m.elements == 0 and m.max_abs_error is None and m.rel_l2_error is None
    assert m.cosine_min == 1.0  # nothing finite left to compare in the sample
    failures = check_gate([m], Tolerances(max_rel_error=1.0))
    assert failures == ["output 'y': 4 NaN/Inf value(s) appear in one model only (reference 2, candidate 3)"]


def test_all_zero_reference():
    zeros = np.zeros((2, 3))
    m = metrics_of(zeros, zeros, ids=["0", "1"])
    assert (m.rel_l2_error, m.snr_db, m.cosine_min, m.max_abs_error) == (0.0, math.inf, 1.0, 0.0)
    other = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    m = metrics_of(zeros, other, ids=["0", "1"])
    assert (m.rel_l2_error, m.snr_db) == (math.inf, -math.inf)
    assert (m.cosine_min, m.cosine_mean) == (0.0, 0.5)  # zero vs non-zero sample: 0; zero vs zero: 1
    assert check_gate([m], Tolerances(max_rel_error=0.5)) == ["output 'y': relative L2 error inf > max 0.5"]


def test_shape_mismatch_is_recorded_and_fails_the_gate():
    acc = OutputAccumulator("y")
    acc.update(np.ones((1, 10)), np.ones((1, 12)), ["0"])
    m = acc.result()
    assert m.shape_error == "shape (1, 12) differs from the reference (1, 10)"
    assert check_gate([m], Tolerances()) == ["output 'y': shape (1, 12) differs from the reference (1, 10)"]


def test_to_dict_is_strict_json():
    m = metrics_of(np.zeros((1, 3)), np.array([[0.0, 1.0, 0.0]]), ids=["0"])
    data = m.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["rel_l2_error"] == "inf" and data["snr_db"] == "-inf"
    assert "envelope" not in data
    assert list(data)[:3] == ["name", "samples", "elements"]


# --------------------------------------------------------------------------- gate


def test_gate_lines_per_metric():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]])
    cand = np.array([[1.0, 2.0], [4.0, 3.0]])  # sample 1 flips its top-1
    m = metrics_of(ref, cand, ids=["0", "1"], name="logits")
    cos = (12 + 12) / 25
    assert m.cosine_min == pytest.approx(cos)
    failures = check_gate([m], Tolerances(atol=0.5, min_cosine=0.999, min_agreement=0.9, max_rel_error=0.1))
    assert failures == [
        "output 'logits': max abs error 1 > atol 0.5",
        f"output 'logits': relative L2 error {math.sqrt(2 / 30):.4g} > max 0.1",
        "output 'logits': cosine 0.96 < min 0.999 (worst sample; 1 of 2 samples below, the 5th-percentile "
        "cosine is 0.9600)",
        "output 'logits': top-1 agreement 0.5 < min 0.9",
    ]
    assert check_gate([m], Tolerances(atol=1.0, min_cosine=0.96, min_agreement=0.5, max_rel_error=0.26)) == []
    assert check_gate([m], Tolerances()) == []


def test_gate_shows_enough_digits():
    m = OutputMetrics("logits", cosine_min=0.99987)
    assert check_gate([m], Tolerances(min_cosine=0.9999)) == ["output 'logits': cosine 0.99987 < min 0.9999 (worst sample)"]


@pytest.mark.parametrize("seed", range(6))
def test_atol_rtol_gate_agrees_with_numpy_allclose(seed):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((3, 50))
    cand = ref * (1 + 1e-3 * rng.standard_normal(ref.shape)) + 1e-4 * rng.standard_normal(ref.shape)
    m = metrics_of(ref, cand, ids=["0", "1", "2"])
    for atol in (0.0, 1e-5, 1e-4, 3e-4, 1e-3):
        for rtol in (0.0, 1e-3, 3e-3, 1e-2):
            failed = bool(check_gate([m], Tolerances(atol=atol, rtol=rtol)))
            assert failed == (not np.allclose(cand, ref, rtol=rtol, atol=atol)), (atol, rtol)


def test_rtol_alone_means_atol_zero():
    m = metrics_of(np.array([[1.0, 100.0]]), np.array([[1.0, 100.5]]), ids=["0"])
    assert check_gate([m], Tolerances(rtol=0.01)) == []
    assert check_gate([m], Tolerances(rtol=0.001)) == [
        "output 'y': max(|a−b| − rtol·|a|) 0.4 > atol 0 (rtol 0.001)"
    ]


def test_min_agreement_needs_a_classifier_output():
    m = metrics_of(np.ones((2, 3, 4)), np.ones((2, 3, 4)), ids=["0", "1"])
    assert check_gate([m], Tolerances(min_agreement=0.9)) == [
        "top-1 agreement cannot be checked: no output is shaped [N, classes]"
    ]


# --------------------------------------------------------------------------- labels


def test_load_labels(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("file\tindex\twnid\tname\na.JPEG\t3\tn1\tcat\n\nb.png\t0\tn2\tdog\n")
    assert load_labels(path) == {"a.JPEG": 3, "b.png": 0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name\tindex\na\t1\n", "labels.tsv: the header must start with 'file<TAB>index'"),
        ("file\tindex\na\tcat\n", "labels.tsv line 2: index 'cat' is not an integer"),
        ("file\tindex\na\n", "labels.tsv line 2: expected file<TAB>index"),
        ("file\tindex\n", "labels.tsv has no labels"),
        ("", "labels.tsv: the header must start with 'file<TAB>index'"),
    ],
)
def test_bad_labels(tmp_path, text, message):
    (tmp_path / "labels.tsv").write_text(text)
    with pytest.raises(InputError) as error:
        load_labels(tmp_path / "labels.tsv")
    assert message in str(error.value)


def test_missing_labels_file(tmp_path):
    with pytest.raises(InputError, match="labels file not found"):
        load_labels(tmp_path / "nope.tsv")


@pytest.mark.skipif(not (SHARED_IMAGES / "imagenet" / "labels.tsv").exists(), reason="needs ../shared/images/imagenet")
def test_shared_imagenet_labels():
    labels = load_labels(SHARED_IMAGES / "imagenet" / "labels.tsv")
    assert len(labels) == 500 and labels["n01440764_tench.JPEG"] == 0


# --------------------------------------------------------------------------- percentile and channels (issue 12)


def test_cosine_p5_is_the_fifth_lowest_of_100_and_streams():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((100, 8))
    cand = ref + 0.01 * rng.standard_normal((100, 8))
    cand[:7] = -ref[:7]  # seven samples reversed: cosine −1
    one = metrics_of(ref, cand, ids=[str(i) for i in range(100)])
    assert one.cosine_min == pytest.approx(-1.0) and one.cosine_p5 == pytest.approx(-1.0)
    cand[:7] = ref[:7] * 1.5  # fixed: the 5th-lowest is now an ordinary sample
    accumulator = OutputAccumulator("y")
    for start in range(0, 100, 30):
        accumulator.update(ref[start:start + 30], cand[start:start + 30], [str(i) for i in range(start, min(start + 30, 100))])
    streamed = accumulator.result()
    cosines = np.sort([np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(ref, cand)])
    assert streamed.cosine_p5 == pytest.approx(cosines[4])
    assert streamed.samples_below(streamed.cosine_p5) == 4
    assert "sample_cosines" not in streamed.to_dict() and "cosine_p5" in streamed.to_dict()


def test_cosine_p5_of_few_samples_is_the_worst():
    ref = np.eye(8)
    cand = np.eye(8)
    cand[3, 4] = 1.0
    m = metrics_of(ref, cand, ids=[str(i) for i in range(8)])
    assert m.cosine_p5 == m.cosine_min == pytest.approx(1 / math.sqrt(2))


def test_channel_cosine_of_detection_outputs():
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(0, 416, (3, 50, 4)), rng.uniform(0, 1, (3, 50, 2))], axis=2)
    cand = ref.copy()
    cand[:, :, 4] = rng.uniform(0, 1, (3, 50))  # objectness replaced by noise
    m = metrics_of(ref, cand, ids=["a", "b", "c"])
    assert m.cosine_min > 0.999  # the coordinates hide it from the whole-output cosine
    assert m.channel_cosine_argmin == 4 and m.channel_cosine_min < 0.9
    failures = check_gate([m], Tolerances(min_channel_cosine=0.99))
    assert failures == [f"output 'y': cosine of attribute channel 4 (last axis) {m.channel_cosine_min:.4g} < min 0.99"]


@pytest.mark.parametrize("shape", [(3, 10), (3, 4, 200), (3, 200, 300), (3, 2, 8, 8)])
def test_channel_cosine_only_for_detection_like_outputs(shape):
    ref = np.random.default_rng(0).standard_normal(shape)
    m = metrics_of(ref, ref * 2, ids=["a", "b", "c"])
    assert m.channel_cosine_min is None
    assert check_gate([m], Tolerances(min_channel_cosine=0.99)) == []


def test_p5_gate_line_says_how_many_samples_fall_below():
    ref = np.ones((20, 4))
    cand = np.ones((20, 4))
    cand[:3] = [1, -1, 1, -1]  # cosine 0
    m = metrics_of(ref, cand, ids=[str(i) for i in range(20)])
    assert check_gate([m], Tolerances(min_cosine_p5=0.98)) == [
        "output 'y': 5th-percentile cosine 0 < min 0.98 (3 of 20 samples below; the worst 0.0000)"]
