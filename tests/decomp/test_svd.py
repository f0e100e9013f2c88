"""Truncated SVD, singular values, relative error, leading subspaces."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.decomp import leading_left_singular_vectors, relative_error, singular_values, truncated_svd


@pytest.mark.parametrize("shape", [(12, 7), (7, 12)])
def test_truncated_svd_exact_at_full_rank_and_balanced(shape):
    M = np.random.default_rng(0).standard_normal(shape)
    r = min(shape)
    A, B = truncated_svd(M, r)
    assert A.shape == (shape[0], r) and B.shape == (r, shape[1]) and A.dtype == np.float32
    assert relative_error(M, A.astype(np.float64) @ B) < 1e-6
    # √S split evenly: column norms of A equal row norms of B (= √s)
    s = singular_values(M)
    np.testing.assert_allclose(np.linalg.norm(A, axis=0), np.sqrt(s), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(B, axis=1), np.sqrt(s), rtol=1e-5)


def test_truncated_svd_error_is_eckart_young_and_decreasing():
    M = np.random.default_rng(1).standard_normal((20, 15))
    s = singular_values(M)
    errs = []
    for r in range(1, 16):
        A, B = truncated_svd(M, r)
        errs.append(relative_error(M, A.astype(np.float64) @ B))
        assert errs[-1] == pytest.approx(np.sqrt(np.sum(s[r:] ** 2) / np.sum(s**2)), abs=1e-6)
    assert all(a > b for a, b in zip(errs, errs[1:]))


@pytest.mark.parametrize("rank", [0, 16, -1])
def test_truncated_svd_bad_rank(rank):
    with pytest.raises(ValueError):
        truncated_svd(np.ones((15, 20)), rank)
    with pytest.raises(ValueError):
        truncated_svd(np.ones((2, 3, 4)), 1)


def test_relative_error_edge_cases():
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.zeros(3), np.ones(3)) == float("inf")
    assert relative_error(np.array([3.0, 4.0]), np.array([3.0, 0.0])) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        relative_error(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("shape", [(6, 40), (40, 6)])
def test_leading_left_singular_vectors(shape):
    M = np.random.default_rng(2).standard_normal(shape)
    U, _, _ = np.linalg.svd(M, full_matrices=False)
    r = min(3, min(shape))
    Q = leading_left_singular_vectors(M, r)
    np.testing.assert_allclose(Q.T @ Q, np.eye(r), atol=1e-10)
    # same subspace as the SVD's (up to signs / rotation)
    np.testing.assert_allclose(np.abs(U[:, :r].T @ Q), np.eye(r), atol=1e-8)
    full = leading_left_singular_vectors(M, shape[0])
    np.testing.assert_allclose(full.T @ full, np.eye(shape[0]), atol=1e-10)
