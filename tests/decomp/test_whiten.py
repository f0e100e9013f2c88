"""Activation-aware (whitened) low-rank factorisation: lower output error than the plain
SVD on correlated inputs, the plain SVD when Σ = c·I, the discarded energy is the output
error, singular Σ handled."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.decomp import SecondMoment, lowrank_matrix, whitened_lowrank, whitened_svd, whitening


def correlated_inputs(rows=3000, K=40, seed=0):
    """Rows on a decaying spectrum of directions, as real activations are."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((K, K)) * np.exp(-np.arange(K) / 5.0)
    return rng.standard_normal((rows, K)) @ mixing.T


def moment(X):
    m = SecondMoment(X.shape[1])
    for part in np.array_split(X, 3):  # streamed in batches
        m.update(part)
    return m


def output_error(X, W, factors):
    approx = factors.first.astype(np.float64) @ factors.second.astype(np.float64)
    return float(np.linalg.norm(X @ (W - approx)) / np.linalg.norm(X @ W))


def test_second_moment_streams_exactly():
    X = correlated_inputs(rows=500, K=12)
    m = moment(X)
    assert m.count == 500
    np.testing.assert_allclose(m.matrix(), X.T @ X / 500, rtol=1e-12)
    with pytest.raises(ValueError, match="rows"):
        m.update(np.zeros((3, 5)))


@pytest.mark.parametrize("rank", [2, 6, 12])
def test_whitened_beats_plain_svd_on_correlated_inputs(rank):
    X = correlated_inputs()
    W = np.random.default_rng(1).standard_normal((40, 30))
    sigma = moment(X).matrix()
    plain = output_error(X, W, lowrank_matrix(W, rank))
    white = output_error(X, W, whitened_lowrank(W, sigma, rank))
    assert white < 0.7 * plain, (plain, white)


def test_discarded_energy_is_the_output_error():
    X = correlated_inputs(seed=2)
    W = np.random.default_rng(3).standard_normal((40, 30))
    svd = whitened_svd(W, moment(X).matrix(), damping=1e-9)
    for rank in (3, 8, 20):
        assert svd.output_rel_error(rank) == pytest.approx(output_error(X, W, svd.lowrank(rank)), rel=1e-3)
    chosen = whitened_lowrank(W, moment(X).matrix(), energy=0.99, damping=1e-9)
    assert output_error(X, W, chosen) <= np.sqrt(0.01) + 1e-6
    assert chosen.first.shape[1] < 30


@pytest.mark.parametrize("scale", [1.0, 7.5])
def test_isotropic_inputs_give_the_plain_svd(scale):
    W = np.random.default_rng(4).standard_normal((24, 18))
    white = whitened_lowrank(W, scale * np.eye(24), 5)
    plain = lowrank_matrix(W, 5)
    np.testing.assert_allclose(white.first @ white.second, plain.first @ plain.second, atol=1e-5)
    assert white.rel_error == pytest.approx(plain.rel_error, rel=1e-5)


def test_full_rank_is_exact():
    X = correlated_inputs(K=16, rows=400)
    W = np.random.default_rng(5).standard_normal((16, 20))
    full = whitened_lowrank(W, moment(X).matrix(), 16)
    assert full.rel_error < 1e-5


def test_singular_second_moment():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((300, 4)) @ rng.standard_normal((4, 20))  # inputs on a 4-D subspace
    W = rng.standard_normal((20, 12))
    sigma = moment(X).matrix()
    assert np.linalg.matrix_rank(sigma) == 4
    factors = whitened_lowrank(W, sigma, 4)
    assert np.all(np.isfinite(factors.first)) and np.all(np.isfinite(factors.second))
    assert output_error(X, W, factors) < 0.1 < output_error(X, W, lowrank_matrix(W, 4))
    root, inverse = whitening(sigma)
    np.testing.assert_allclose(root @ inverse, np.eye(20), atol=1e-8)
    assert whitened_lowrank(W, sigma, 12).rel_error < 1e-5  # exact at full rank all the same


@pytest.mark.parametrize("sigma", [np.zeros((10, 10)), np.full((10, 10), np.nan)], ids=["zero", "nan"])
def test_degenerate_second_moment_falls_back_to_plain_svd(sigma):
    W = np.random.default_rng(7).standard_normal((10, 8))
    white, plain = whitened_lowrank(W, sigma, 3), lowrank_matrix(W, 3)
    np.testing.assert_allclose(white.first @ white.second, plain.first @ plain.second, atol=1e-5)


def test_bad_arguments():
    W = np.ones((6, 4))
    with pytest.raises(ValueError, match="exactly one"):
        whitened_lowrank(W, np.eye(6))
    with pytest.raises(ValueError, match="does not match"):
        whitened_lowrank(W, np.eye(5), 2)
    with pytest.raises(ValueError, match="rank must be"):
        whitened_lowrank(W, np.eye(6), 5)
    with pytest.raises(ValueError, match="damping"):
        whitening(np.eye(3), damping=0)


def test_whitened_tucker2_is_exact_at_full_rank_and_plain_for_isotropic_inputs():
    from onnxopt.decomp import tucker2, tucker2_reconstruct, whitened_tucker2

    rng = np.random.default_rng(8)
    W = rng.standard_normal((10, 12, 3, 3))
    sigma = moment(correlated_inputs(rows=400, K=12)).matrix()
    full, _ = whitened_tucker2(W, 10, 12, sigma)
    assert full.rel_error < 1e-5
    white, output_error = whitened_tucker2(W, 4, 5, np.eye(12))
    plain = tucker2(W, 4, 5)
    np.testing.assert_allclose(tucker2_reconstruct(*white[:3]), tucker2_reconstruct(*plain[:3]), atol=1e-5)
    assert output_error == pytest.approx(plain.rel_error, rel=1e-4)
