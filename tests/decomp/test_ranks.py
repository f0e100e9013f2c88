"""Rank selection: every selector, rounding, clamping, bad input, EVBMF and speedup."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.decomp import (
    cp_exact_rank_upper_bound,
    cp_macs,
    dense_conv_macs,
    evbmf,
    evbmf_result,
    matrix_macs,
    round_rank,
    select_rank,
    select_rank_pair,
    spatial_macs,
    svd_macs,
    tucker2_unfolding_singular_values,
    tucker2_unfoldings,
    tucker_macs,
)

S = np.array([3.0, 2.0, 1.0])  # energies 9/14 = .643, 13/14 = .929, 1


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"rank": 2}, 2),
        ({"rank": np.int64(2)}, 2),
        ({"rank": 1}, 1),  # an int is an absolute rank
        ({"rank": 1.0}, 3),  # a float is a fraction: 1.0 is the full rank, not rank 1
        ({"rank": np.float64(1.0)}, 3),
        ({"rank": 7}, 3),  # clamped to max_rank
        ({"rank": 0.5}, 2),  # ceil(0.5 · 3)
        ({"rank": 0.01}, 1),
        ({"energy": 0.6}, 1),
        ({"energy": 9 / 14}, 1),
        ({"energy": 0.643}, 2),
        ({"energy": 0.65}, 2),
        ({"energy": 0.9}, 2),
        ({"energy": 0.95}, 3),
        ({"energy": 1.0}, 3),
    ],
)
def test_select_rank_basic(kwargs, expected):
    assert select_rank(S, 3, **kwargs) == expected


def test_energy_is_exact_on_a_long_spectrum():
    s = np.sqrt(np.arange(100, 0, -1, dtype=float))  # energies 100, 99, …, 1
    total = s @ s
    for e in (0.1, 0.5, 0.9, 0.99):
        r = select_rank(s, 100, energy=e)
        assert np.sum(s[:r] ** 2) / total >= e > np.sum(s[: r - 1] ** 2) / total


def test_energy_ignores_input_order():
    assert select_rank(S[::-1], 3, energy=0.9) == 2


@pytest.mark.parametrize(("r", "round_to", "max_rank", "expected"), [(1, 16, 64, 16), (16, 16, 64, 16), (17, 16, 64, 32), (50, 16, 40, 40), (5, 8, 64, 8), (5, 1, 64, 5)])
def test_round_up_and_clamp(r, round_to, max_rank, expected):
    assert round_rank(r, max_rank, round_to) == expected
    assert select_rank(None, max_rank, rank=r, round_to=round_to) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"rank": 2, "energy": 0.9},
        {"energy": 0.0},
        {"energy": 1.5},
        {"energy": -0.1},
        {"rank": 0},
        {"rank": -3},
        {"rank": 2.5},
        {"rank": 2.0},  # written with a decimal point: not silently an absolute rank
        {"rank": 1.5},
        {"rank": 0.0},
        {"rank": float("nan")},
        {"rank": True},
        {"rank": 2, "round_to": 0},
        {"speedup": 2.0},  # no cost function
        {"speedup": 0.0, "macs_for_rank": lambda r: r, "original_macs": 10},
    ],
)
def test_bad_combinations_raise(kwargs):
    with pytest.raises(ValueError):
        select_rank(S, 3, **kwargs)


def test_bad_max_rank_and_missing_singular_values():
    with pytest.raises(ValueError, match="max_rank"):
        select_rank(S, 0, rank=1)
    with pytest.raises(ValueError, match="singular values"):
        select_rank(None, 3, energy=0.9)
    with pytest.raises(ValueError, match="none was given"):
        select_rank(S, 3)


# ------------------------------------------------------------------ EVBMF


@pytest.mark.parametrize(("shape", "true_rank", "seed"), [((60, 100), 5, 0), ((100, 60), 8, 1), ((40, 300), 3, 2)])
def test_evbmf_recovers_rank_of_noisy_low_rank_matrix(shape, true_rank, seed):
    rng = np.random.default_rng(seed)
    L, M = shape
    signal = rng.standard_normal((L, true_rank)) @ rng.standard_normal((true_rank, M))
    noise = 0.1 * rng.standard_normal(shape)  # each signal singular value ≫ noise edge
    assert evbmf(signal + noise) == true_rank
    res = evbmf_result(signal + noise)
    assert res.sigma2 == pytest.approx(0.01, rel=0.2)  # noise variance is estimated


def test_evbmf_pure_noise_and_select_rank_clamps():
    noise = np.random.default_rng(3).standard_normal((50, 80))
    assert evbmf(noise) <= 1
    assert select_rank(None, 50, vbmf_matrix=noise) == 1
    assert select_rank(None, 50, vbmf_matrix=noise, round_to=16) == 16


def test_evbmf_known_sigma_and_exact_low_rank():
    rng = np.random.default_rng(4)
    Y = rng.standard_normal((30, 4)) @ rng.standard_normal((4, 50))
    assert evbmf(Y) == 4  # noiseless: variance bound degenerates, still the true rank
    assert evbmf(Y + 0.01 * rng.standard_normal(Y.shape), sigma2=1e-4) == 4


def test_vbmf_pair_on_tucker_unfoldings():
    rng = np.random.default_rng(5)
    core = rng.standard_normal((6, 4, 3, 3))
    W = np.einsum("fb,baij,ca->fcij", rng.standard_normal((32, 6)), core, rng.standard_normal((24, 4)))
    W += 0.01 * rng.standard_normal(W.shape)
    assert select_rank_pair(None, (32, 24), vbmf_matrices=tucker2_unfoldings(W)) == (6, 4)


# ------------------------------------------------------------------ speedup


LAYERS = [(64, 64, 3, 3, (32, 32), (32, 32)), (128, 64, 3, 3, (16, 16), (32, 32)), (256, 256, 3, 3, (8, 8), (8, 8))]


def _reduction(original, macs):
    return original / macs


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("speedup", [1.5, 2.0, 3.0, 4.0])
def test_speedup_single_rank_within_5_percent(layer, speedup):
    F, C, kh, kw, out_hw, in_hw = layer
    dense = dense_conv_macs(C, F, kh, kw, out_hw)
    for name, fn, max_rank in [
        ("cp", lambda r: cp_macs(C, F, kh, kw, r, out_hw, in_hw), kh * kw * min(F, C)),
        ("spatial", lambda r: spatial_macs(C, F, kh, kw, r, out_hw, in_hw), min(C * kh, F * kw)),
    ]:
        r = select_rank(None, max_rank, speedup=speedup, macs_for_rank=fn, original_macs=dense)
        got = _reduction(dense, fn(r))
        assert speedup <= got <= 1.05 * speedup, (name, r, got)
        assert r == max_rank or _reduction(dense, fn(r + 1)) < speedup  # the largest such r


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("speedup", [1.5, 2.0, 3.0, 4.0])
def test_speedup_tucker_pair_proportional_within_5_percent(layer, speedup):
    F, C, kh, kw, out_hw, in_hw = layer
    dense = dense_conv_macs(C, F, kh, kw, out_hw)

    def fn(ro, ri):
        return tucker_macs(C, F, kh, kw, ro, ri, out_hw, in_hw)

    ro, ri = select_rank_pair(None, (F, C), speedup=speedup, macs_for_ranks=fn, original_macs=dense)
    got = dense / fn(ro, ri)
    assert speedup <= got <= 1.05 * speedup, (ro, ri, got)
    assert ri / C == pytest.approx(ro / F, abs=1.0 / min(F, C))  # R1/C = R2/F


def test_speedup_svd_matrix_within_5_percent():
    K, N = 1024, 512
    for speedup in (2.0, 3.0, 5.0):
        r = select_rank(None, min(K, N), speedup=speedup, macs_for_rank=lambda r: svd_macs(K, N, r), original_macs=matrix_macs(K, N))
        assert speedup <= K * N / svd_macs(K, N, r) <= 1.05 * speedup


def test_speedup_reached_at_full_rank_gives_max_rank():
    def fn(r):
        return svd_macs(100, 10, r)

    assert select_rank(None, 10, speedup=0.5, macs_for_rank=fn, original_macs=matrix_macs(100, 10)) == 10
    assert select_rank_pair(None, (12, 8), speedup=0.1, macs_for_ranks=lambda a, b: a * b, original_macs=96) == (12, 8)


def test_speedup_out_of_reach_gives_rank_one_and_rounding_applies_after():
    dense = dense_conv_macs(4, 4, 3, 3, (8, 8))

    def fn(r):
        return cp_macs(4, 4, 3, 3, r, (8, 8))

    assert select_rank(None, 36, speedup=1e6, macs_for_rank=fn, original_macs=dense) == 1
    r = select_rank(None, 256, speedup=2.0, macs_for_rank=lambda r: tucker_macs(64, 64, 3, 3, r, r, (8, 8)), original_macs=dense_conv_macs(64, 64, 3, 3, (8, 8)))
    r16 = select_rank(None, 256, speedup=2.0, macs_for_rank=lambda r: tucker_macs(64, 64, 3, 3, r, r, (8, 8)), original_macs=dense_conv_macs(64, 64, 3, 3, (8, 8)), round_to=16)
    assert r16 % 16 == 0 and r <= r16 < r + 16


# ------------------------------------------------------------------ pair selectors


def test_select_rank_pair_energy_and_fraction():
    W = np.random.default_rng(6).standard_normal((12, 8, 3, 3))
    s_out, s_in = tucker2_unfolding_singular_values(W)
    ro, ri = select_rank_pair((s_out, s_in), (12, 8), energy=0.9)
    assert ro == select_rank(s_out, 12, energy=0.9) and ri == select_rank(s_in, 8, energy=0.9)
    assert select_rank_pair(None, (12, 8), rank=0.5) == (6, 4)
    assert select_rank_pair(None, (12, 8), rank=(5, 3)) == (5, 3)
    assert select_rank_pair(None, (40, 24), rank=(5, 3), round_to=16) == (16, 16)
    assert select_rank_pair((s_out, s_in), (12, 8), energy=(1.0, 1.0)) == (12, 8)
    with pytest.raises(ValueError):
        select_rank_pair((s_out, s_in), (12, 8), energy=0.9, rank=2)
    with pytest.raises(ValueError):
        select_rank_pair(None, (12, 8), energy=0.9)


def test_cp_bound_is_a_max_rank():
    assert cp_exact_rank_upper_bound(np.zeros((64, 32, 3, 3))) == 288


def _reference_evbmf(Y):
    """The reference numpy/scipy port (CasvandenBogaard/VBMF, H = L), condensed."""
    from scipy.optimize import minimize_scalar

    L, M = Y.shape
    alpha = L / M
    tauubar = 2.5129 * np.sqrt(alpha)
    s = np.linalg.svd(Y, compute_uv=False)
    xubar = (1 + tauubar) * (1 + alpha / tauubar)

    def obj(sigma2):
        x = s**2 / (M * sigma2)
        z1, z2 = x[x > xubar], x[x <= xubar]
        t = 0.5 * (z1 - (1 + alpha) + np.sqrt((z1 - (1 + alpha)) ** 2 - 4 * alpha))
        return np.sum(z2 - np.log(z2)) + np.sum(z1 - t) + np.sum(np.log((t + 1) / z1)) + alpha * np.sum(np.log(t / alpha + 1))

    eh_ub = int(min(np.ceil(L / (1 + alpha)) - 1, L)) - 1
    upper = np.sum(s**2) / (L * M)
    lower = max(s[eh_ub + 1] ** 2 / (M * xubar), np.mean(s[eh_ub + 1 :] ** 2) / M)
    sigma2 = minimize_scalar(obj, bounds=[lower, upper], method="bounded").x
    return int(np.sum(s > np.sqrt(M * sigma2 * xubar)))


def test_evbmf_matches_reference_port():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(7)
    for _ in range(15):
        L, M = sorted(rng.integers(8, 120, 2))
        t = int(rng.integers(1, L))
        Y = rng.uniform(0.05, 1) * rng.standard_normal((L, t)) @ rng.standard_normal((t, M)) + rng.standard_normal((L, M))
        assert evbmf(Y) == _reference_evbmf(Y)
    # a nearly exactly low-rank matrix, where a global search would disagree
    Y = rng.standard_normal((16, 6)) @ rng.standard_normal((6, 144))
    Y[:, :8] += 1e-3 * rng.standard_normal((16, 8))
    assert evbmf(Y) == _reference_evbmf(Y)


# ------------------------------------------------------------------ rank=1.0 vs rank=1 (issue 12, 6b)


def _rank_option(spec: str):
    from onnxopt.registry import build_options, get, parse_spec

    (parsed,) = parse_spec(spec)
    return build_options(get(parsed.name), parsed.options).rank


def test_rank_one_point_zero_is_the_full_rank():
    """`tucker:rank=1.0` meant absolute rank 1; now it is the fraction 1.0 (the full rank)."""
    assert _rank_option("tucker:rank=1.0") == 1.0 and isinstance(_rank_option("tucker:rank=1.0"), float)
    assert select_rank_pair(None, (12, 8), rank=_rank_option("tucker:rank=1.0")) == (12, 8)
    assert select_rank(None, 7, rank=_rank_option("svd:rank=1.0")) == 7
    # written without a decimal point: an absolute rank
    assert _rank_option("tucker:rank=1") == 1 and isinstance(_rank_option("tucker:rank=1"), int)
    assert select_rank_pair(None, (12, 8), rank=_rank_option("tucker:rank=1")) == (1, 1)
    assert _rank_option("spatial:rank=8") == 8 and isinstance(_rank_option("spatial:rank=8"), int)
    assert _rank_option("cp:rank=0.25") == 0.25


@pytest.mark.parametrize("text", ["2.5", "2.0", "1e2", "1.5", "0.0", "-0.5"])
def test_rank_with_a_decimal_point_above_one_is_an_error(text):
    from onnxopt.errors import UsageError

    with pytest.raises(UsageError) as info:
        _rank_option(f"tucker:rank={text}")
    message = str(info.value)
    assert f"rank={float(text)!r}: write a whole number for an absolute rank or a fraction in (0, 1]" in message
    assert "tucker" in message


@pytest.mark.parametrize("text", ["0", "-3", "abc"])
def test_bad_absolute_rank(text):
    from onnxopt.errors import UsageError

    with pytest.raises(UsageError):
        _rank_option(f"svd:rank={text}")


@pytest.mark.parametrize(("suffix", "text"), [(".yaml", "rank: {}"), (".json", '"rank": {}'), (".toml", "rank = {}")])
def test_config_files_keep_the_form(tmp_path, suffix, text):
    from onnxopt.registry import build_options, get, load_config

    body = {
        ".yaml": "passes:\n  - {{name: tucker, {}}}\n",
        ".json": '{{"passes": [{{"name": "tucker", {}}}]}}',
        ".toml": '[[passes]]\nname = "tucker"\n{}\n',
    }[suffix]
    for value, expected in (("1.0", 1.0), ("1", 1), ("0.5", 0.5)):
        path = tmp_path / f"p{suffix}"
        path.write_text(body.format(text.format(value)))
        (spec,) = load_config(path)
        rank = build_options(get("tucker"), spec.options).rank
        assert rank == expected and type(rank) is type(expected), (suffix, value, rank)


def test_report_writes_the_rank_as_it_means():
    from onnxopt.decomp.ranks import format_rank
    from onnxopt.registry import build_options, get

    assert format_rank(1.0) == "1.0" and format_rank(1) == "1" and format_rank(np.int64(16)) == "16"
    assert build_options(get("tucker"), {"rank": "1.0"}).describe_selector() == "rank=1.0"
    assert build_options(get("tucker"), {"rank": "4"}).describe_selector() == "rank=4"
    assert build_options(get("separable"), {"multiplier": "2"}).selector == ("rank", 2)


def test_select_by_dispatches_a_pass_selector():
    from onnxopt.decomp import select_by

    W = np.random.default_rng(3).standard_normal((12, 10, 3, 3))
    values = tucker2_unfolding_singular_values(W)

    def never():
        raise AssertionError("not needed by this selector")

    assert select_by(("rank", 0.5), 20, singular_values=never, vbmf_matrix=never) == 10
    assert select_by(("energy", 0.9), 20, singular_values=lambda: S, round_to=4) == select_rank(S, 20, energy=0.9, round_to=4)
    assert select_by(("energy", 0.9), (12, 10), singular_values=lambda: values) == select_rank_pair(values, (12, 10), energy=0.9)
    assert select_by(("vbmf", True), (12, 10), vbmf_matrix=lambda: tucker2_unfoldings(W)) == select_rank_pair(
        None, (12, 10), vbmf_matrices=tucker2_unfoldings(W))

    def macs(ro, ri):
        return tucker_macs(10, 12, 3, 3, ro, ri, (8, 8))

    original = dense_conv_macs(10, 12, 3, 3, (8, 8))
    assert select_by(("speedup", 2.0), (12, 10), macs_for=macs, original_macs=original) == select_rank_pair(
        None, (12, 10), speedup=2.0, macs_for_ranks=macs, original_macs=original)
    with pytest.raises(ValueError, match="unknown rank selector"):
        select_by(("multiplier", 2), 4)
