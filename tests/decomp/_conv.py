"""A direct numpy convolution (ONNX Conv semantics) to apply factors in the tests."""

from __future__ import annotations

import numpy as np


def conv2d(x, W, bias=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1):
    """ONNX Conv: x [N, C, H, W], W [F, C/group, kh, kw], pads (top, left, bottom, right)."""
    x = np.asarray(x, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    N, C, H, Wd = x.shape
    F, Cg, kh, kw = W.shape
    assert C == Cg * group and F % group == 0, (x.shape, W.shape, group)
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (Wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((N, F, ho, wo))
    Fg = F // group
    for g in range(group):
        xs = xp[:, g * Cg : (g + 1) * Cg]
        Wg = W[g * Fg : (g + 1) * Fg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
                out[:, g * Fg : (g + 1) * Fg] += np.einsum("fc,nchw->nfhw", Wg[:, :, i, j], patch)
    if bias is not None:
        out += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return out


def conv2d_loops(x, W, strides, pads, dilations):
    """Brute-force definition (group=1), only to check ``conv2d`` itself on tiny inputs."""
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    pt, pl, pb, pr = pads
    ho = (H + pt + pb - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (Wd + pl + pr - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((N, F, ho, wo))
    for n in range(N):
        for f in range(F):
            for y in range(ho):
                for z in range(wo):
                    acc = 0.0
                    for c in range(C):
                        for i in range(kh):
                            for j in range(kw):
                                r = y * strides[0] + i * dilations[0] - pt
                                q = z * strides[1] + j * dilations[1] - pl
                                if 0 <= r < H and 0 <= q < Wd:
                                    acc += W[f, c, i, j] * x[n, c, r, q]
                    out[n, f, y, z] = acc
    return out
