"""Benchmark: how much faster can INT8 convolutions be than FP32 ones on this CPU?

    python benchmarks/int8_ceiling.py [--min-time 6] [--depth 8]

For each shape, a chain of ``--depth`` identical Conv+ReLU layers (C→C channels, k×k,
H×W, batch 1) is built with random weights, quantized by the ``int8`` pass (its defaults;
``calib=random``: the values do not change integer kernel speed) and timed against its
FP32 original, interleaved, one intra-op thread, median process CPU time (``quantize.py``'s
``measure``). A chain of equal convolutions is the kindest case for INT8: no residual adds,
no layout changes inside, the Q/DQ only at its two ends, so its ratio bounds what a whole
network of such layers can reach. The shapes are those of ResNet-56's three stages, of
MobileNetV2's pointwise and depthwise layers and a large 3×3 one.

Why it matters: x86 CPUs without VNNI multiply u8×s8 with ``vpmaddubsw`` + ``vpmaddwd``
(two multiply µops per 32 MACs, against one FMA µop per 8 FP32 MACs): at best 2× the FP32
MAC rate before im2col and requantization; VNNI's ``vpdpbusd`` does the 32 MACs in one µop.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import quantize as qb  # the sibling benchmark: the interleaved timer, the pass runner

#: (label, channels, kernel, height/width, depthwise)
SHAPES = [
    ("resnet56 stage 1", 16, 3, 32, False),
    ("resnet56 stage 2", 32, 3, 16, False),
    ("resnet56 stage 3", 64, 3, 8, False),
    ("mobilenet_v2 1x1", 96, 1, 14, False),
    ("mobilenet_v2 1x1", 320, 1, 7, False),
    ("mobilenet_v2 dw", 144, 3, 56, True),
    ("mobilenet_v2 dw", 576, 3, 14, True),
    ("large 3x3", 128, 3, 28, False),
]


def conv_chain(channels: int, kernel: int, size: int, depthwise: bool, depth: int, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(depth):
        fan_in = (1 if depthwise else channels) * kernel * kernel
        w = rng.standard_normal((channels, fan_in // (kernel * kernel), kernel, kernel)).astype(np.float32)
        w *= np.sqrt(2.0 / fan_in)  # He init: activations keep their scale
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        pad = kernel // 2
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[pad] * 4,
                                   group=channels if depthwise else 1),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    # A cheap quantizable tail, so that the last conv's output is quantized too (a conv whose
    # output leaves the graph stays float, dequantizing its weights on every run).
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"], name="pool"))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=6.0, help="seconds of interleaved timing per shape")
    parser.add_argument("--depth", type=int, default=8, help="Conv+ReLU layers per chain")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(qb.REPO))
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime

    import onnxopt
    from onnxopt.runtime import cpu as hostcpu

    print(f"onnxruntime {onnxruntime.__version__}; {hostcpu.cpu_name()}: {hostcpu.integer_kernels().describe()}")
    print(f"chains of {args.depth} Conv+ReLU, batch 1, 1 thread, interleaved, median CPU time")
    print(f"{'shape':<18} {'C':>4} {'k':>2} {'HxW':>6} {'MMAC':>6} {'FP32 ms':>8} {'INT8 ms':>8} {'INT8 speed':>10}")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, channels, kernel, size, depthwise in SHAPES:
            path = Path(tmp) / "chain.onnx"
            onnx.save(conv_chain(channels, kernel, size, depthwise, args.depth), path)
            int8, report = onnxopt.optimize(str(path), "int8:calib=random:bias_correction=false")
            fp32 = path.read_bytes()
            feeds = {"x": np.random.default_rng(1).standard_normal((1, channels, size, size)).astype(np.float32)}
            t_fp32, t_int8 = qb.measure([fp32, qb.runnable(int8)], feeds, args.min_time)
            ratio = t_fp32["cpu"] / t_int8["cpu"]
            ratios.append(ratio)
            macs = args.depth * channels * (1 if depthwise else channels) * kernel * kernel * size * size / 1e6
            print(f"{label:<18} {channels:>4} {kernel:>2} {size:>3}x{size:<2} {macs:>6.1f} {t_fp32['cpu'] * 1e3:>8.3f} "
                  f"{t_int8['cpu'] * 1e3:>8.3f} {ratio:>9.2f}x", flush=True)
    print(f"best {max(ratios):.2f}x, median {np.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
