"""CUDA latency of optimized models under onnxruntime's CUDA provider settings.

For each pair (baseline, candidate) of ONNX files in a folder (the models that
``cuda_check.py --keep DIR`` writes), prints median latencies and the ratio
median(baseline)/median(candidate) under three provider settings: onnxruntime's defaults,
``prefer_nhwc=1`` (channels-last convolutions, what tensor cores want for float16) and
``enable_cuda_graph=1`` (one graph launch per run instead of one launch per kernel).
Runs are interleaved (A B A B …) with inputs and outputs bound on the GPU.

    python benchmarks/cuda_settings.py DIR [--runs 200]

Exits 0 with one line where CUDA does not load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PAIRS = [
    ("mobilenet_v2_imagenet.onnx", "mobilenet_fp16.onnx", 1),
    ("mobilenet_v2_imagenet.onnx", "mobilenet_fp16.onnx", 32),
    ("mobilenet_v2_imagenet.onnx", "mobilenet_int8.onnx", 1),
    ("yolo_style_det_ddddocr.onnx", "yolo_fp16.onnx", 1),
    ("yolo_fp16.onnx", "yolo_tucker_fp16.onnx", 1),
]
SETTINGS = {
    "defaults": {},
    "prefer_nhwc": {"prefer_nhwc": "1"},
    "cuda_graph": {"enable_cuda_graph": "1"},
}


def runner(path: Path, options: dict, batch: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=[("CUDAExecutionProvider", options)])
    binding = session.io_binding()
    keep = []
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in value.shape]
        dtype = np.float16 if "float16" in value.type else np.float32
        array = np.random.default_rng(0).standard_normal(shape).astype(dtype)
        device = ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)
        keep.append(device)
        binding.bind_ortvalue_input(value.name, device)
    for value in session.get_outputs():
        binding.bind_output(value.name, "cuda", 0)

    def run() -> None:
        binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    run.keep = keep  # type: ignore[attr-defined]
    return run


def interleaved(a, b, runs: int) -> tuple[float, float]:
    for _ in range(10):
        a(), b()
    times_a, times_b = [], []
    for i in range(runs):
        for run, times in ((a, times_a), (b, times_b)) if i % 2 == 0 else ((b, times_b), (a, times_a)):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return statistics.median(times_a) * 1e3, statistics.median(times_b) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from onnxopt.runtime import cuda_status

    ok, reason = cuda_status()
    if not ok:
        print(f"skipped: onnxruntime's CUDA provider does not load here ({reason})")
        return 0
    for base, candidate, batch in PAIRS:
        if not (args.folder / base).exists() or not (args.folder / candidate).exists():
            print(f"{base} vs {candidate}: missing")
            continue
        cells = []
        for label, options in SETTINGS.items():
            try:
                a = runner(args.folder / base, options, batch)
                b = runner(args.folder / candidate, options, batch)
                ms_a, ms_b = interleaved(a, b, args.runs)
                cells.append(f"{label} {ms_a:.3f}/{ms_b:.3f} ms = {ms_a / ms_b:.2f}x")
            except Exception as exc:  # noqa: BLE001 - a setting a model cannot use is a result too
                cells.append(f"{label} failed: {str(exc).splitlines()[0][:80]}")
        print(f"{base} -> {candidate} b{batch}: " + "; ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
