"""MAC formulas equal the MACs of the factor convolutions actually run (strides included)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.decomp import (
    conv_output_hw,
    cp_macs,
    dense_conv_macs,
    macs_per_output_pixel,
    matrix_macs,
    separable_macs,
    spatial_macs,
    svd_macs,
    tucker_macs,
)

from ._conv import conv2d


def conv_macs(x_shape, w_shape, group=1, **geom):
    """MACs of one Conv = output elements × (C/group)·kh·kw, from the real output shape."""
    y = conv2d(np.zeros(x_shape), np.zeros(w_shape), group=group, **geom)
    return y.size // x_shape[0] * w_shape[1] * w_shape[2] * w_shape[3], y.shape


# every axis differs (Ho ≠ Hi, Wo ≠ Wi, asymmetric pads) so a factor counted at the
# wrong resolution changes the total
GEOM = {"strides": (2, 2), "pads": (1, 0, 1, 1), "dilations": (1, 2)}
VERT = {"strides": (2, 1), "dilations": (1, 1), "pads": (1, 0, 1, 0)}
HORIZ = {"strides": (1, 2), "dilations": (1, 2), "pads": (0, 0, 0, 1)}
C, F, KH, KW, HI, WI = 6, 10, 3, 3, 11, 12


def geometry():
    out_hw = conv_output_hw((HI, WI), (KH, KW), **GEOM)
    return out_hw, (HI, WI)


def test_output_size_matches_conv():
    out_hw, _ = geometry()
    _, shape = conv_macs((1, C, HI, WI), (F, C, KH, KW), **GEOM)
    assert shape[2:] == out_hw == (6, 5)
    assert dense_conv_macs(C, F, KH, KW, out_hw) == conv_macs((1, C, HI, WI), (F, C, KH, KW), **GEOM)[0]
    assert dense_conv_macs(C, F, KH, KW, out_hw, group=2) * 2 == dense_conv_macs(C, F, KH, KW, out_hw)


def test_spatial_macs_exact():
    out_hw, in_hw = geometry()
    K = 4
    m1, s1 = conv_macs((1, C, HI, WI), (K, C, KH, 1), **VERT)
    m2, s2 = conv_macs(s1, (F, K, 1, KW), **HORIZ)
    assert s2[2:] == out_hw
    assert spatial_macs(C, F, KH, KW, K, out_hw, in_hw) == m1 + m2


def test_tucker_macs_exact():
    out_hw, in_hw = geometry()
    r1, r2 = 4, 5
    m1, s1 = conv_macs((1, C, HI, WI), (r1, C, 1, 1))
    m2, s2 = conv_macs(s1, (r2, r1, KH, KW), **GEOM)
    m3, _ = conv_macs(s2, (F, r2, 1, 1))
    assert tucker_macs(C, F, KH, KW, r2, r1, out_hw, in_hw) == m1 + m2 + m3


def test_cp_macs_exact():
    out_hw, in_hw = geometry()
    R = 7
    m1, s1 = conv_macs((1, C, HI, WI), (R, C, 1, 1))
    m2, s2 = conv_macs(s1, (R, 1, KH, 1), group=R, **VERT)
    m3, s3 = conv_macs(s2, (R, 1, 1, KW), group=R, **HORIZ)
    m4, s4 = conv_macs(s3, (F, R, 1, 1))
    assert s4[2:] == out_hw
    assert cp_macs(C, F, KH, KW, R, out_hw, in_hw) == m1 + m2 + m3 + m4


def test_separable_macs_exact():
    out_hw, _ = geometry()
    m = 2
    m1, s1 = conv_macs((1, C, HI, WI), (C * m, 1, KH, KW), group=C, **GEOM)
    m2, _ = conv_macs(s1, (F, C * m, 1, 1))
    assert separable_macs(C, F, KH, KW, m, out_hw) == m1 + m2


def test_matrix_and_per_pixel():
    assert matrix_macs(64, 10, rows=3) == 1920
    assert svd_macs(64, 10, 4, rows=3) == 3 * (64 * 4 + 4 * 10)
    assert macs_per_output_pixel(dense_conv_macs(16, 32, 3, 3, (8, 8)), (8, 8)) == 16 * 32 * 9
    # in_hw defaults to out_hw: per-pixel counts of a stride-1 layer
    assert tucker_macs(16, 32, 3, 3, 8, 4, (1, 1)) == 16 * 4 + 4 * 8 * 9 + 8 * 32
    with pytest.raises(ValueError):
        dense_conv_macs(6, 4, 3, 3, (8, 8), group=4)


def test_cp_macs_with_one_depthwise_factor():
    """A 1×k kernel: the cp pass emits one depthwise conv instead of two."""
    out_hw, in_hw = (6, 9), (6, 11)
    R = 5
    m1, s1 = conv_macs((1, C, *in_hw), (R, C, 1, 1))
    m2, s2 = conv_macs(s1, (R, 1, 1, 3), group=R)
    m3, s3 = conv_macs(s2, (F, R, 1, 1))
    assert s3[2:] == out_hw
    assert cp_macs(C, F, 1, 3, R, out_hw, in_hw, one_depthwise=True) == m1 + m2 + m3
