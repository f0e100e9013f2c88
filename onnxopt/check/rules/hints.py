"""The ``hints`` rule (only with ``hints=True``): what an optimization pass would gain.

Layers a Tucker-2 decomposition would cut by a useful share of MACs, the INT8 candidates,
and the MatMul/Gemm candidates for svd / int8-dynamic (MACs at sequence length 128 where a
sequence dimension is dynamic). Hints are warnings so that the output stays one format;
like every warning they fail the run only with ``strict``.
"""

from __future__ import annotations

import math

from onnxopt.check.context import CheckRun
from onnxopt.check.findings import WARNING
from onnxopt.check.registry import rule
from onnxopt.check.text import human_count
from onnxopt.check.walk import float_types, initializer_shapes

# A decomposition is only suggested where it pays (see ARCHITECTURE.md: small layers get
# slower on CPU despite fewer MACs).
HINT_MIN_LAYER_MACS = 10_000_000
HINT_MAX_MAC_RATIO = 0.7
HINT_MIN_CHANNELS = 16


def tucker2_mac_ratio(channels: int, filters: int, kernel: int, stride_area: int = 1,
                      rank_in: int | None = None, rank_out: int | None = None) -> float:
    """MACs of a Tucker-2 replacement (1×1 → k×k core → 1×1) over the dense conv's, per output pixel.

    ``kernel`` is kh·kw; the first 1×1 runs at the input resolution, ``stride_area`` (sh·sw)
    times the output pixels. Ranks default to half the channels.
    """
    from onnxopt.decomp.costs import dense_conv_macs, tucker_macs

    r1 = rank_in or max(1, channels // 2)
    r2 = rank_out or max(1, filters // 2)
    # One output pixel; the kernel as kernel×1 and the input as stride_area×1 pixels.
    tucker = tucker_macs(channels, filters, kernel, 1, r2, r1, out_hw=(1, 1), in_hw=(stride_area, 1))
    return tucker / dense_conv_macs(channels, filters, kernel, 1, (1, 1))


@rule("hints", WARNING, "with --hints: layers a decomposition or INT8 pass would speed up")
def hints(run: CheckRun) -> None:
    if not run.config.hints:
        return
    from onnxopt.analysis import COUNTED_OPS, TARGET_DECOMPOSE, attribute, decomposition_target
    from onnxopt.analysis.blocks import linear_candidates_hint  # MatMul/Gemm for svd and int8-dynamic

    costs = run.costs()
    if costs is None:
        return
    model = run.model
    floats = float_types()
    weights = initializer_shapes(model)
    total = sum(c.macs or 0 for c in costs.values() if c.op_type in COUNTED_OPS)
    int8_layers = 0
    int8_macs = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type not in COUNTED_OPS:
            continue
        cost = costs.get(node.name or f"{node.op_type}_{index}")
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        if cost is None or weight is None or weight[1] not in floats:
            continue
        int8_layers += 1
        int8_macs += cost.macs or 0
        shape = weight[0]
        kernel_dims = shape[2:]
        if (not cost.macs or cost.macs < HINT_MIN_LAYER_MACS
                or decomposition_target(node.op_type, shape, attribute(node, "group", 1), kernel_dims) != TARGET_DECOMPOSE
                or min(shape[0], shape[1]) < HINT_MIN_CHANNELS):
            continue
        filters, channels = shape[0], shape[1]
        strides = attribute(node, "strides", None) or [1] * len(kernel_dims)
        ratio = tucker2_mac_ratio(channels, filters, math.prod(kernel_dims), math.prod(strides))
        if ratio > HINT_MAX_MAC_RATIO:
            continue
        after = int(cost.macs * ratio)
        run.add("hints", f"node '{cost.name}' (Conv {'×'.join(map(str, kernel_dims))}, {channels}→{filters}, "
                         f"{human_count(cost.macs)} MACs): Tucker-2 at ranks {channels // 2}/{filters // 2} "
                         f"(pass 'tucker') would cut its MACs by ~{100 * (1 - ratio):.0f}% "
                         f"({human_count(cost.macs)} → {human_count(after)})")
    if int8_layers:
        all_known = all(c.macs is not None for c in costs.values() if c.op_type in COUNTED_OPS)
        share = f" ({100 * int8_macs / total:.0f}% of the {human_count(total)} MACs)" if total and all_known else ""
        run.add("hints", f"INT8 quantization applies to {int8_layers} Conv/Gemm/MatMul layer(s) with float "
                         f"weights{share}: the same MACs in int8 arithmetic, weights 4× smaller")
    linear = linear_candidates_hint(model, costs)
    if linear:
        run.add("hints", linear)
