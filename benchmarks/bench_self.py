"""Self-benchmark: ``onnxopt bench A A'`` (A' a byte copy of A) must report a ratio of 1.

Why: a benchmark that reports a speedup for two identical models measures the harness,
not the models. This runs the user-facing command with its defaults (the same
``python -m onnxopt bench A A' --json`` a user runs, one fresh process per run, as a
user sees it), ``--repeats`` times (20 by default) on two models:

* ``resnet20_cifar10.onnx`` — sub-millisecond, where scheduler noise and thread-pool
  interference dominate;
* ``yolo_style_det_ddddocr.onnx`` — some 20–30 ms per run at 416×416.

It prints every median ratio with its interval and how sampling stopped, and exits 1
unless every ratio lies within 0.95–1.05. A' is a byte copy in a temporary folder (a
different path, the same bytes), as in the report that started it: ``onnxopt bench
resnet20_cifar10.onnx copy.onnx`` once printed 0.60× (default threads, spinning thread
pools, 50 rounds).

    python benchmarks/bench_self.py [--repeats 20] [--model PATH ...] [--band 0.95 1.05]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO.parent / "shared" / "models"
DEFAULT_MODELS = [MODELS / "resnet20_cifar10.onnx", MODELS / "yolo_style_det_ddddocr.onnx"]
BAND = (0.95, 1.05)


def bench_once(model: Path, copy: Path, extra: list[str]) -> dict:
    """One ``onnxopt bench model copy --json`` in a fresh process; its (only) result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "onnxopt", "bench", str(model), str(copy), "--json", *extra]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    (result,) = json.loads(done.stdout)["results"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", help="model(s) to test (default: the two above)")
    parser.add_argument("--repeats", type=int, default=20, help="runs of `onnxopt bench A A'` per model (20)")
    parser.add_argument("--band", type=float, nargs=2, default=BAND, metavar=("LO", "HI"))
    parser.add_argument(
        "extra", nargs="*", help="extra `onnxopt bench` options after `--` (default: none, the CLI's defaults)"
    )
    args = parser.parse_args(argv)
    models = args.model or DEFAULT_MODELS
    missing = [m for m in models if not m.exists()]
    if missing:
        print(f"skipped: {', '.join(map(str, missing))} not found (../shared/models is needed)", file=sys.stderr)
        return 0

    lo_band, hi_band = args.band
    print(f"onnxopt bench A A' (A' a byte copy), {args.repeats} runs per model, "
          f"options: {' '.join(args.extra) or 'defaults'}; band {lo_band}–{hi_band}; "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    failures = 0
    all_ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_self_") as tmp:
        for model in models:
            copy = Path(tmp) / f"copy_{model.name}"
            shutil.copyfile(model, copy)
            print(f"\n{model.name} ({model.stat().st_size} bytes)")
            ratios = all_ratios.setdefault(model.name, [])
            for run in range(1, args.repeats + 1):
                started = time.perf_counter()
                result = bench_once(model, copy, args.extra)
                wall = time.perf_counter() - started
                (comparison,) = result["comparisons"]
                ratio = comparison["speedup"]
                ratios.append(ratio)
                ok = lo_band <= ratio <= hi_band
                failures += not ok
                lo, hi = comparison["ci95"]
                p50 = result["models"][0]["p50_ms"]
                print(
                    f"  run {run:2d}: ratio {ratio:.4f} {'ok  ' if ok else 'FAIL'} 95% CI {lo:.4f}–{hi:.4f}  "
                    f"per-round p10/p50/p90 {comparison['ratio_p10']:.2f}/{comparison['ratio_p50']:.3f}/"
                    f"{comparison['ratio_p90']:.2f}  "
                    f"p50 {p50:.3f} ms  {result['rounds']} rounds in {result['timed_seconds']:.1f} s "
                    f"(stop: {result['stop_reason']}, spinning {result['spinning']}), {wall:.1f} s wall",
                    flush=True,
                )
    print()
    for name, ratios in all_ratios.items():
        print(f"{name}: ratios min {min(ratios):.4f} max {max(ratios):.4f} over {len(ratios)} runs")
    total = sum(len(r) for r in all_ratios.values())
    if failures:
        print(f"FAIL: {failures} of {total} ratios outside {lo_band}–{hi_band}")
        return 1
    print(f"PASS: all {total} ratios within {lo_band}–{hi_band}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
