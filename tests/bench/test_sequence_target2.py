"""benchmarks/sequence.py, target 2 (svd + INT8 faster than INT8 alone at the same
fidelity): the noise rule, the fidelity rule, the variant selection and the A/B timing's
order swap — the pure logic, without the model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seq():
    spec = importlib.util.spec_from_file_location("sequence_benchmark", REPO / "benchmarks" / "sequence.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def fidelity(mean: float, spearman: float) -> dict:
    return {"mean": mean, "p1": mean, "spearman": spearman}


def stack(seq, ratio: float, mean: float = 0.998, spearman: float = 0.998, decomposed: int = 2):
    return seq.Variant("svd + int8", "svd,int8", alone=seq.STATIC, fidelity=fidelity(mean, spearman),
                       vs_alone=(ratio, ratio), decomposed=decomposed)


def alone(seq):
    return seq.Variant(seq.STATIC, "int8", fidelity=fidelity(0.9985, 0.9982))


def test_noise_margin_is_the_floor_or_twice_the_control(seq):
    assert seq.noise_margin(1.0) == seq.NOISE_FLOOR
    assert seq.noise_margin(1.003) == seq.NOISE_FLOOR
    assert seq.noise_margin(0.98) == pytest.approx(0.04)


@pytest.mark.parametrize("ratio, mean, spearman, decomposed, control, wins", [
    (1.03, 0.998, 0.998, 2, 1.0, True),
    (1.005, 0.998, 0.998, 2, 1.0, False),  # faster, but within the noise floor
    (1.03, 0.998, 0.998, 2, 1.02, False),  # the control says the noise is ±2 %
    (1.03, 0.9960, 0.998, 2, 1.0, False),  # mean cosine 0.0025 below INT8 alone
    (1.03, 0.998, 0.9960, 2, 1.0, False),  # Spearman 0.0022 below
    (1.03, 0.998, 0.998, 0, 1.0, False),  # nothing decomposed: the same model as INT8 alone
])
def test_stack_wins(seq, ratio, mean, spearman, decomposed, control, wins):
    assert seq.stack_wins(stack(seq, ratio, mean, spearman, decomposed), alone(seq), control) is wins


def test_limit_line_names_the_best_close_stack_and_the_fastest(seq):
    close = stack(seq, 1.018)
    close.label = "close"
    far = stack(seq, 1.05, mean=0.95, spearman=0.94)
    far.label = "far"
    line = seq.limit_line([close, far], {seq.STATIC: alone(seq)})
    assert "best stack, close, runs 1.018×" in line
    assert "fastest, far, runs 1.050× at mean cosine -0.04850" in line


def test_limit_line_without_a_close_stack(seq):
    line = seq.limit_line([stack(seq, 1.05, mean=0.95)], {seq.STATIC: alone(seq)})
    assert line.startswith("no stack that decomposes a layer stays within")


def test_select_variants_brings_a_stacks_int8_alone(seq):
    wanted = next(v for v in seq.transformer_variants() if v.alone == seq.STATIC)
    chosen = [v.label for v in seq.select_variants([wanted.spec])]
    assert chosen == [seq.STATIC, wanted.label]
    assert [v.label for v in seq.select_variants(["int8"])] == [seq.STATIC]
    assert [v.label for v in seq.select_variants([seq.DYNAMIC])] == [seq.DYNAMIC]
    assert len(seq.select_variants(None)) == len(seq.transformer_variants())


def test_select_variants_rejects_an_unknown_name(seq):
    with pytest.raises(SystemExit, match="unknown --variant nope"):
        seq.select_variants(["nope"])


def test_ab_ratio_cancels_a_position_bias(seq, monkeypatch):
    """Whatever runs second is 2 % faster: identical models must still compare as 1.0."""
    import onnxopt.bench.latency as latency

    def biased(models, feeds, **kwargs):
        return SimpleNamespace(models=[SimpleNamespace(times_ms=[10.0 * (1 - 0.02 * position)] * kwargs["runs"])
                                       for position, _ in enumerate(models)])

    monkeypatch.setattr(latency, "bench_models", biased)
    medians, minima, _, _ = seq.ab_ratio(b"a", b"a", {}, runs=5, repeats=4)
    assert medians == pytest.approx(1.0, abs=1e-3)
    assert minima == pytest.approx(1.0, abs=1e-3)
