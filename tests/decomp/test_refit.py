"""Refit of the last factor: exact recovery, streaming, bounded memory, real benefit."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.decomp import LastFactorRefit, im2col, tucker2

from ._conv import conv2d


def test_recovers_exact_weights_over_batches():
    rng = np.random.default_rng(0)
    R, F = 6, 5
    W, b = rng.standard_normal((F, R)), rng.standard_normal(F)
    refit = LastFactorRefit(R, F, ridge=0.0)
    for _ in range(4):
        Z = rng.standard_normal((3, R, 7, 9))
        Y = np.einsum("fr,nrhw->nfhw", W, Z) + b[None, :, None, None]
        refit.update(Z.astype(np.float32), Y.astype(np.float32))
    w_hat, b_hat = refit.solve()
    assert w_hat.shape == (F, R) and b_hat.shape == (F,) and w_hat.dtype == np.float32
    np.testing.assert_allclose(w_hat, W, atol=1e-4)
    np.testing.assert_allclose(b_hat, b, atol=1e-4)
    assert refit.relative_residual(w_hat, b_hat) < 1e-5
    assert refit.n_samples == 12 and refit.n_rows == 12 * 63


def test_default_ridge_is_tiny_and_bias_optional():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((4, 3))
    Z = rng.standard_normal((200, 3))
    refit = LastFactorRefit(3, 4, fit_bias=False)
    refit.update(Z, Z @ W.T)
    w_hat, b_hat = refit.solve()
    np.testing.assert_allclose(w_hat, W, atol=1e-4)
    assert not b_hat.any()


def test_memory_does_not_grow_with_samples():
    rng = np.random.default_rng(2)
    refit = LastFactorRefit(8, 5, max_pixels_per_sample=16)
    before = refit.nbytes
    arrays_before = {k: v.shape for k, v in vars(refit).items() if isinstance(v, np.ndarray)}
    for _ in range(20):
        refit.update(rng.standard_normal((2, 8, 10, 10)), rng.standard_normal((2, 5, 10, 10)))
    assert refit.nbytes == before == 8 * ((8 + 1) ** 2 + 5 * (8 + 1))
    assert {k: v.shape for k, v in vars(refit).items() if isinstance(v, np.ndarray)} == arrays_before
    assert not any(isinstance(v, (list, dict)) for v in vars(refit).values())
    assert refit.n_rows == 20 * 2 * 16  # subsampled to 16 pixels per sample


def test_subsampling_still_recovers_weights():
    rng = np.random.default_rng(3)
    W, b = rng.standard_normal((3, 4)), rng.standard_normal(3)
    refit = LastFactorRefit(4, 3, ridge=0.0, max_pixels_per_sample=10)
    Z = rng.standard_normal((5, 4, 20, 20))
    refit.update(Z, np.einsum("fr,nrhw->nfhw", W, Z) + b[None, :, None, None])
    w_hat, b_hat = refit.solve()
    np.testing.assert_allclose(w_hat, W, atol=1e-4)
    assert refit.n_rows == 50


def test_refit_improves_a_truncated_tucker_layer():
    rng = np.random.default_rng(4)
    # activations with correlated channels, as real feature maps have
    mix = rng.standard_normal((8, 8)) * np.linspace(1.0, 0.05, 8)
    x = np.einsum("cd,ndhw->nchw", mix, rng.standard_normal((6, 8, 12, 12)))
    W, bias = rng.standard_normal((12, 8, 3, 3)), rng.standard_normal(12)
    t = tucker2(W, 4, 3)
    Z = conv2d(conv2d(x, t.first), t.core, pads=(1, 1, 1, 1))  # input of the last factor
    Y = conv2d(x, W, bias, pads=(1, 1, 1, 1))
    refit = LastFactorRefit(4, 12)
    refit.update(Z[:3], Y[:3])
    refit.update(Z[3:], Y[3:])
    w_new, b_new = refit.solve()
    w_old = t.last[:, :, 0, 0]
    before = refit.relative_residual(w_old, bias)
    after = refit.relative_residual(w_new, b_new)
    assert after < 0.95 * before  # measured 0.85 vs 0.93 on this seed
    # and it is the least-squares optimum: perturbing it only makes things worse
    assert refit.relative_residual(w_new + 1e-3, b_new) > after


def test_shape_errors():
    refit = LastFactorRefit(4, 3)
    with pytest.raises(ValueError):
        refit.update(np.zeros((2, 5, 3, 3)), np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError):
        refit.update(np.zeros((2, 4, 3, 3)), np.zeros((2, 3, 4, 3)))
    with pytest.raises(ValueError, match="no data"):
        refit.solve()


def test_im2col_matches_conv():
    rng = np.random.default_rng(5)
    x, W = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 1, 3))
    geom = {"strides": (1, 2), "pads": (0, 1, 0, 2), "dilations": (1, 2)}
    cols = im2col(x, (1, 3), **geom)
    np.testing.assert_allclose(np.einsum("fk,nkhw->nfhw", W.reshape(4, -1), cols), conv2d(x, W, **geom), atol=1e-12)


def test_channels_last_rows():
    rng = np.random.default_rng(6)
    W, b = rng.standard_normal((3, 5)), rng.standard_normal(3)
    Z = rng.standard_normal((4, 7, 5))  # [N, T, R] as a MatMul sees it
    refit = LastFactorRefit(5, 3, ridge=0.0, channels_last=True)
    refit.update(Z, Z @ W.T + b)
    w_hat, b_hat = refit.solve()
    np.testing.assert_allclose(w_hat, W, atol=1e-4)
    np.testing.assert_allclose(b_hat, b, atol=1e-4)
