"""Self-benchmark: ResNet-20 against itself must come out at a ratio of 1 (0.9–1.1).

Why: a benchmark that reports a speedup for two identical models measures the harness,
not the models. Interleaving the runs (A B, B A, …) in one process is what makes the
ratio of medians stable on a noisy machine; this script checks that it is, on a real
model. It exits 1 when the ratio leaves the 0.9–1.1 band.

    python benchmarks/bench_self.py [--runs 200] [--threads N] [--model PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "resnet20_cifar10.onnx"
BAND = (0.9, 1.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--runs", type=int, default=200, help="interleaved rounds (default 200)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: onnxruntime's)")
    parser.add_argument("--json", action="store_true", help="also print the full result as JSON")
    args = parser.parse_args(argv)

    if not args.model.exists():
        print(f"skipped: {args.model} not found (../shared/models is needed)", file=sys.stderr)
        return 0

    sys.path.insert(0, str(REPO))
    from onnxopt.bench.latency import bench_models

    data = args.model.read_bytes()
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)}
    result = bench_models(
        [data, data],
        feeds,
        warmup=args.warmup,
        runs=args.runs,
        threads=args.threads,
        labels=["A", "B"],
    )
    (comparison,) = result.comparisons
    print(f"model: {args.model.name} ({len(data)} bytes), provider cpu, threads {args.threads or 'default'}")
    print(f"{result.rounds} interleaved rounds after {result.warmup} warm-up runs per model")
    for bench in result.models:
        s = bench.stats
        print(
            f"  {bench.label}: p50 {s.p50_ms:.3f} ms  mean {s.mean_ms:.3f}  p90 {s.p90_ms:.3f}  "
            f"p99 {s.p99_ms:.3f}  min {s.min_ms:.3f}  std {s.std_ms:.3f}  {s.throughput:.0f} samples/s"
        )
    lo, hi = comparison.ci95
    ok = BAND[0] <= comparison.speedup <= BAND[1]
    print(
        f"ratio median(A)/median(B) = {comparison.speedup:.4f}  "
        f"(per-round p10–p90 {comparison.ratio_p10:.3f}–{comparison.ratio_p90:.3f}, "
        f"bootstrap 95% CI {lo:.4f}–{hi:.4f})"
    )
    print(f"peak RSS {result.peak_rss_bytes / 2**20:.1f} MiB")
    print(f"{'PASS' if ok else 'FAIL'}: ratio {'within' if ok else 'outside'} {BAND[0]}–{BAND[1]}")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
