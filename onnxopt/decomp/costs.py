"""Multiply–accumulate counts of a dense convolution and of its decomposed forms: the one
place these formulas live.

``out_hw = (Ho, Wo)`` is the original conv's output size, ``in_hw = (Hi, Wi)`` its unpadded
input size (default ``out_hw``). A 1×1 factor before the spatial factor runs at the input
resolution; factors after it at the output resolution; a kh×1 factor carrying stride_h
produces (Ho, Wi). ``out_hw = in_hw = (1, 1)`` gives per-pixel counts of a stride-1 layer.

| scheme    | MACs                                                            |
|-----------|-----------------------------------------------------------------|
| dense     | C/g·F·kh·kw·Ho·Wo                                               |
| spatial   | C·K·kh·Ho·Wi + K·F·kw·Ho·Wo                                     |
| tucker    | C·R1·Hi·Wi + R1·R2·kh·kw·Ho·Wo + R2·F·Ho·Wo                     |
| cp        | C·R·Hi·Wi + R·kh·Ho·Wi + R·kw·Ho·Wo + R·F·Ho·Wo                 |
| separable | C·m·kh·kw·Ho·Wo + C·m·F·Ho·Wo                                   |
| svd       | rows·(K·R + R·N)   vs dense rows·K·N                            |

Ranks may be floats (when solving for a MAC budget). MACs are a proxy: 1×1 convolutions
are memory-bound and each node has a fixed overhead, so latency drops less than MACs.
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


def cp_macs(c_in, c_out, kh, kw, rank, out_hw, in_hw=None, *, one_depthwise: bool = False):
    """CP: 1×1 C→R at (Hi, Wi), kh×1 depthwise at (Ho, Wi), 1×kw depthwise and 1×1 R→F
    at (Ho, Wo). ``one_depthwise``: the two depthwise factors as one kh×kw depthwise conv
    at (Ho, Wo) (what the ``cp`` pass emits when kh or kw is 1)."""
    ho, wo = _hw(out_hw, out_hw)
    hi, wi = _hw(in_hw, (ho, wo))
    if one_depthwise:
        return c_in * rank * hi * wi + rank * (kh * kw + c_out) * ho * wo
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
