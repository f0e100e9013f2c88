"""Each factorisation: exact at full rank (by formula AND applied as convolutions with the
strides / dilations / pads placed as the docstrings say), error non-increasing in rank."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.decomp import (
    cp4,
    cp_exact_rank_upper_bound,
    lowrank_matrix,
    relative_error,
    separable_factors,
    separable_singular_values,
    spatial_factors,
    spatial_singular_values,
    tucker2,
    tucker2_unfolding_singular_values,
)

from ._conv import conv2d, conv2d_loops

TOL = 1e-5
# per-axis different values catch a height/width mix-up
GEOMETRIES = [
    {"strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1)},
    {"strides": (2, 2), "pads": (1, 1, 1, 1), "dilations": (1, 1)},
    {"strides": (1, 1), "pads": (2, 2, 2, 2), "dilations": (2, 2)},
    {"strides": (2, 1), "pads": (1, 0, 2, 1), "dilations": (1, 2)},
]


def weight(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def split_hw(geom):
    """kh×1 factor gets the height attributes, 1×kw factor the width ones."""
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = geom["strides"], geom["dilations"], geom["pads"]
    return (
        {"strides": (sh, 1), "dilations": (dh, 1), "pads": (pt, 0, pb, 0)},
        {"strides": (1, sw), "dilations": (1, dw), "pads": (0, pl, 0, pr)},
    )


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(a)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((2, 4, 9, 10))


def test_conv_helper_matches_definition():
    rng = np.random.default_rng(2)
    xs, W = rng.standard_normal((1, 2, 6, 7)), rng.standard_normal((3, 2, 3, 2))
    for g in GEOMETRIES:
        np.testing.assert_allclose(conv2d(xs, W, **g), conv2d_loops(xs, W, g["strides"], g["pads"], g["dilations"]), atol=1e-12)


# ------------------------------------------------------------------ spatial


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_spatial_full_rank_conv(x, geom):
    W, b = weight((5, 4, 3, 2)), weight((5,), 3)
    full = min(4 * 3, 2 * 5)
    f = spatial_factors(W, full)
    assert f.vertical.shape == (full, 4, 3, 1) and f.horizontal.shape == (5, full, 1, 2)
    assert f.vertical.dtype == np.float32 and f.rel_error < TOL
    W_hat = np.einsum("kci,fkj->fcij", f.vertical[..., 0], f.horizontal[:, :, 0, :])
    assert rel(W, W_hat) < TOL
    gv, gh = split_hw(geom)
    y = conv2d(conv2d(x, f.vertical, **gv), f.horizontal, b, **gh)
    assert rel(conv2d(x, W, b, **geom), y) < TOL


def test_spatial_error_decreases_and_matches_svd():
    W = weight((6, 4, 3, 3))
    s = spatial_singular_values(W)
    errs = [spatial_factors(W, r).rel_error for r in range(1, s.size + 1)]
    assert all(a >= b - 1e-7 for a, b in zip(errs, errs[1:])) and errs[0] > 0.3
    # Eckart–Young: error = tail energy
    for r in (1, 4, 8):
        assert errs[r - 1] == pytest.approx(np.sqrt(np.sum(s[r:] ** 2) / np.sum(s**2)), rel=1e-4)
    with pytest.raises(ValueError):
        spatial_factors(W, s.size + 1)


# ------------------------------------------------------------------ tucker


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_tucker_full_rank_conv(x, geom):
    W, b = weight((6, 4, 3, 2)), weight((6,), 3)
    t = tucker2(W, 6, 4)
    assert t.first.shape == (4, 4, 1, 1) and t.core.shape == (6, 4, 3, 2) and t.last.shape == (6, 6, 1, 1)
    assert t.rel_error < TOL
    W_hat = np.einsum("fb,baij,ac->fcij", t.last[:, :, 0, 0], t.core, t.first[:, :, 0, 0])
    assert rel(W, W_hat) < TOL
    y = conv2d(conv2d(conv2d(x, t.first), t.core, **geom), t.last, b)
    assert rel(conv2d(x, W, b, **geom), y) < TOL


def test_tucker_truncated_shapes_and_monotone():
    W = weight((12, 8, 3, 3))
    s_out, s_in = tucker2_unfolding_singular_values(W)
    assert s_out.shape == (12,) and s_in.shape == (8,)
    t = tucker2(W, 5, 3)
    assert (t.first.shape, t.core.shape, t.last.shape) == ((3, 8, 1, 1), (5, 3, 3, 3), (12, 5, 1, 1))
    # first / last are orthonormal projections
    np.testing.assert_allclose(t.first[:, :, 0, 0] @ t.first[:, :, 0, 0].T, np.eye(3), atol=1e-6)
    errs = [tucker2(W, r, max(1, (r * 8) // 12)).rel_error for r in range(1, 13)]
    assert all(a >= b - 1e-7 for a, b in zip(errs, errs[1:])) and errs[-1] < TOL


def test_tucker_hooi_converges_to_a_stationary_point():
    # at a HOOI fixed point each factor spans the leading subspace of W projected on the other
    W = weight((16, 12, 3, 3), 9)
    t = tucker2(W, 6, 5, n_iter=40)
    U_out, U_in = t.last[:, :, 0, 0].astype(np.float64), t.first[:, :, 0, 0].T.astype(np.float64)
    Y0 = np.einsum("fcij,ca->faij", W, U_in).reshape(16, -1)
    Y1 = np.einsum("fcij,fb->cbij", W, U_out).reshape(12, -1)
    for U, Y, r in ((U_out, Y0, 6), (U_in, Y1, 5)):
        best = np.sum(np.linalg.svd(Y, compute_uv=False)[:r] ** 2)
        assert np.sum((U.T @ Y) ** 2) == pytest.approx(best, rel=1e-5)


def test_tucker_hooi_never_worse_than_hosvd():
    W = weight((16, 12, 3, 3), 4)
    e0 = tucker2(W, 6, 5, n_iter=0).rel_error
    e = [tucker2(W, 6, 5, n_iter=n).rel_error for n in (1, 2, 4)]
    assert e[0] <= e0 + 1e-9 and e[1] <= e[0] + 1e-9 and e[2] <= e[1] + 1e-9
    assert e[2] < e0  # on a random tensor HOOI must actually improve
    with pytest.raises(ValueError):
        tucker2(W, 17, 5)


# ------------------------------------------------------------------ cp


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_cp_exact_bound_conv(x, geom):
    W, b = weight((5, 4, 3, 2)), weight((5,), 3)
    R = cp_exact_rank_upper_bound(W)
    assert R == 3 * 2 * 4
    c = cp4(W, R)
    assert c.last.shape == (5, R, 1, 1) and c.first.shape == (R, 4, 1, 1)
    assert c.vertical.shape == (R, 1, 3, 1) and c.horizontal.shape == (R, 1, 1, 2)
    assert c.rel_error < TOL
    W_hat = np.einsum(
        "fr,rc,ri,rj->fcij", c.last[:, :, 0, 0], c.first[:, :, 0, 0], c.vertical[:, 0, :, 0], c.horizontal[:, 0, 0, :]
    )
    assert rel(W, W_hat) < TOL
    gv, gh = split_hw(geom)
    y = conv2d(x, c.first)
    y = conv2d(y, c.vertical, group=R, **gv)
    y = conv2d(y, c.horizontal, group=R, **gh)
    y = conv2d(y, c.last, b)
    assert rel(conv2d(x, W, b, **geom), y) < TOL


def test_cp_rank_above_bound_is_padded_and_exact():
    W = weight((3, 6, 3, 3))
    c = cp4(W, cp_exact_rank_upper_bound(W) + 5)
    assert c.last.shape[1] == 32 and c.rel_error < TOL and c.iterations == 0


def test_cp_als_recovers_low_rank_tensor():
    rng = np.random.default_rng(5)
    A, B, V, H = (rng.standard_normal((n, 4)) for n in (10, 8, 3, 3))
    W = np.einsum("fr,cr,ir,jr->fcij", A, B, V, H)
    c = cp4(W, 4, max_iter=500, tol=1e-10)
    assert c.rel_error < 1e-4, c.rel_error
    assert c.iterations > 1


def test_cp_error_decreases_with_rank_and_progress_reports():
    W = weight((8, 6, 3, 3), 6)
    seen = []
    errs = []
    for r in (2, 8, 20, 40, cp_exact_rank_upper_bound(W)):
        seen.clear()
        c = cp4(W, r, max_iter=30, progress=lambda i, e: seen.append((i, e)))
        errs.append(c.rel_error)
        if r < cp_exact_rank_upper_bound(W):
            assert [i for i, _ in seen] == list(range(1, c.iterations + 1))
            # ALS is monotone; the tracked fit agrees with the measured error
            es = [e for _, e in seen]
            assert all(a >= b - 1e-6 for a, b in zip(es, es[1:]))
            assert es[-1] == pytest.approx(c.rel_error, rel=1e-3, abs=1e-6)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < TOL


def test_cp_als_improves_on_its_start_and_hosvd_start_works():
    W = weight((8, 6, 3, 3), 7)
    start = cp4(W, 12, max_iter=0).rel_error
    assert cp4(W, 12, max_iter=20).rel_error < start - 1e-3
    assert cp4(W, 12, max_iter=20, init="hosvd").rel_error < 0.9
    with pytest.raises(ValueError):
        cp4(W, 0)


def test_cp_blocked_mttkrp_matches_unblocked(monkeypatch):
    import onnxopt.decomp.cp as cpmod

    W = weight((9, 7, 3, 3), 8)
    ref = cp4(W, 10, max_iter=5, tol=0)
    monkeypatch.setattr(cpmod, "_MIN_BLOCK", 1)  # forces blocks of a few rows
    got = cpmod.cp4(W, 10, max_iter=5, tol=0)
    np.testing.assert_allclose(got.last, ref.last, rtol=1e-4, atol=1e-5)
    assert got.rel_error == pytest.approx(ref.rel_error, rel=1e-6)


def test_cp_block_size_bounds_temporaries():
    import onnxopt.decomp.cp as cpmod

    # a 512×512×3×3 kernel at rank 1145: GEMM temporaries are cut into blocks of at most
    # max(size(W), _MIN_BLOCK) elements instead of one 512×9×1145 array
    budget = max(512 * 512 * 9, cpmod._MIN_BLOCK)
    rows = cpmod._block(512, 9 * 1145, budget)
    assert rows * 9 * 1145 <= budget and rows < 512


# ------------------------------------------------------------------ separable


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_separable_full_multiplier_conv(x, geom):
    W, b = weight((7, 4, 3, 2)), weight((7,), 3)
    m = min(7, 3 * 2)
    s = separable_factors(W, m)
    assert s.depthwise.shape == (4 * m, 1, 3, 2) and s.pointwise.shape == (7, 4 * m, 1, 1)
    assert s.rel_error < TOL
    D = s.depthwise.reshape(4, m, 3, 2)  # channel c·m + k
    W_hat = np.einsum("fck,ckij->fcij", s.pointwise[:, :, 0, 0].reshape(7, 4, m), D)
    assert rel(W, W_hat) < TOL
    y = conv2d(conv2d(x, s.depthwise, group=4, **geom), s.pointwise, b)
    assert rel(conv2d(x, W, b, **geom), y) < TOL


def test_separable_error_decreases_and_energy_spectrum():
    W = weight((10, 5, 3, 3))
    errs = [separable_factors(W, m).rel_error for m in range(1, 10)]
    assert all(a > b for a, b in zip(errs, errs[1:])) and errs[-1] < TOL
    s = separable_singular_values(W)
    assert s.shape == (9,)
    # aggregated spectrum predicts the error exactly (per-channel SVDs are independent)
    for m in (1, 3, 6):
        assert errs[m - 1] == pytest.approx(np.sqrt(np.sum(s[m:] ** 2) / np.sum(s**2)), rel=1e-4)
    with pytest.raises(ValueError):
        separable_factors(W, 10)


# ------------------------------------------------------------------ fc


def test_lowrank_matrix():
    M = weight((20, 12))
    lr = lowrank_matrix(M, 12)
    assert lr.first.shape == (20, 12) and lr.second.shape == (12, 12) and lr.rel_error < TOL
    X = weight((3, 20), 1)
    assert rel(X @ M, (X @ lr.first) @ lr.second) < TOL
    errs = [lowrank_matrix(M, r).rel_error for r in range(1, 13)]
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert relative_error(M, lr.first.astype(np.float64) @ lr.second) == pytest.approx(lr.rel_error, abs=1e-9)
