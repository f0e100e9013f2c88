"""Multiply–accumulate counts of a dense convolution and of its decomposed forms.

All totals are exact, strides included, because every factor is counted at the spatial
size it really runs at. Conventions (the same as the factor docstrings):

* ``out_hw = (Ho, Wo)`` is the output size of the original conv; ``in_hw = (Hi, Wi)`` its
  (unpadded) input size. ``in_hw`` defaults to ``out_hw`` (stride 1, "same" padding).
* A 1×1 factor *before* the spatial factor runs at the input resolution (it carries no
  stride and no pads); 1×1 factors after it run at the output resolution.
* ``spatial`` / ``cp``: the kh×1 factor carries stride_h, dilation_h and the top/bottom
  pads, so it produces (Ho, Wi); the 1×kw factor carries the width ones and produces
  (Ho, Wo).

MACs per output pixel are ``macs_per_output_pixel(total, out_hw)``; calling a function with
``out_hw = in_hw = (1, 1)`` gives the per-pixel count of a stride-1 layer directly.

| scheme    | MACs                                                            |
|-----------|-----------------------------------------------------------------|
| dense     | C/g·F·kh·kw·Ho·Wo                                               |
| spatial   | C·K·kh·Ho·Wi + K·F·kw·Ho·Wo                                     |
| tucker    | C·R1·Hi·Wi + R1·R2·kh·kw·Ho·Wo + R2·F·Ho·Wo                     |
| cp        | C·R·Hi·Wi + R·kh·Ho·Wi + R·kw·Ho·Wo + R·F·Ho·Wo                 |
| separable | C·m·kh·kw·Ho·Wo + C·m·F·Ho·Wo                                   |
| svd       | rows·(K·R + R·N)   vs dense rows·K·N                            |

Ranks may be floats (used when solving for a MAC budget); the result is then a float.

MACs are a proxy: 1×1 convolutions are memory-bound and each extra node has a fixed
overhead, so a measured latency gain is smaller than the MAC ratio (see ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "conv_output_hw",
    "cp_macs",
    "dense_conv_macs",
    "macs_per_output_pixel",
    "matrix_macs",
    "separable_macs",
    "spatial_macs",
    "svd_macs",
    "tucker_macs",
]


def _hw(hw: Sequence[int] | None, default: Sequence[int]) -> tuple[int, int]:
    if hw is None:
        hw = default
    h, w = hw
    if h < 1 or w < 1:
        raise ValueError(f"spatial size must be positive, got {tuple(hw)}")
    return int(h), int(w)


def conv_output_hw(
    in_hw: Sequence[int],
    kernel_hw: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
) -> tuple[int, int]:
    """ONNX Conv output size; ``pads`` in ONNX order (top, left, bottom, right)."""
    hi, wi = in_hw
    kh, kw = kernel_hw
    pt, pl, pb, pr = pads
    ho = (hi + pt + pb - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (wi + pl + pr - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    return ho, wo


def macs_per_output_pixel(total: float, out_hw: Sequence[int]) -> float:
    ho, wo = _hw(out_hw, out_hw)
    return total / (ho * wo)


def dense_conv_macs(c_in: int, c_out: int, kh: int, kw: int, out_hw: Sequence[int], *, group: int = 1):
    """Original Conv: (C/group)·F·kh·kw per output pixel."""
    ho, wo = _hw(out_hw, out_hw)
    if c_in % group:
        raise ValueError(f"c_in={c_in} is not divisible by group={group}")
    return (c_in // group) * c_out * kh * kw * ho * wo


def spatial_macs(c_in, c_out, kh, kw, rank, out_hw, in_hw=None):
    """Jaderberg scheme 2: kh×1 C→K at (Ho, Wi), then 1×kw K→F at (Ho, Wo)."""
    ho, wo = _hw(out_hw, out_hw)
    _, wi = _hw(in_hw, (ho, wo))
    return c_in * rank * kh * ho * wi + rank * c_out * kw * ho * wo


def tucker_macs(c_in, c_out, kh, kw, rank_out, rank_in, out_hw, in_hw=None):
    """Tucker-2: 1×1 C→R1 (R1 = rank_in) at (Hi, Wi), kh×kw R1→R2 (R2 = rank_out) and
    1×1 R2→F at (Ho, Wo). Argument order follows ``tucker2(W, rank_out, rank_in)``."""
    ho, wo = _hw(out_hw, out_hw)
    hi, wi = _hw(in_hw, (ho, wo))
    return c_in * rank_in * hi * wi + (rank_in * rank_out * kh * kw + rank_out * c_out) * ho * wo


def cp_macs(c_in, c_out, kh, kw, rank, out_hw, in_hw=None):
    """CP: 1×1 C→R at (Hi, Wi), kh×1 depthwise at (Ho, Wi), 1×kw depthwise and 1×1 R→F
    at (Ho, Wo)."""
    ho, wo = _hw(out_hw, out_hw)
    hi, wi = _hw(in_hw, (ho, wo))
    return c_in * rank * hi * wi + rank * kh * ho * wi + rank * (kw + c_out) * ho * wo


def separable_macs(c_in, c_out, kh, kw, multiplier, out_hw):
    """Depthwise kh×kw C→C·m then 1×1 C·m→F, both at (Ho, Wo)."""
    ho, wo = _hw(out_hw, out_hw)
    return c_in * multiplier * (kh * kw + c_out) * ho * wo


def matrix_macs(k: int, n: int, rows: int = 1):
    """Dense [rows, K] @ [K, N]."""
    return rows * k * n


def svd_macs(k, n, rank, rows: int = 1):
    """[rows, K] @ [K, R] @ [R, N]."""
    return rows * (k * rank + rank * n)
