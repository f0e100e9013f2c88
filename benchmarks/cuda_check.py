"""CUDA check: every CUDA path of onnxopt, run once through the CLI on a real GPU.

Prints one line per check with its figures, then the total time:

1. ``compare --providers cpu,cuda`` of MobileNetV2 against itself on photos: CPU-vs-CUDA
   top-1 agreement and max abs difference.
2. ``fp16`` and ``fp16:mixed=auto`` of MobileNetV2 validated on CUDA (worst-sample cosine,
   nodes kept in float32), and ``bench --providers cuda`` FP32 vs FP16 at batch 1 and 32.
3. ``int8`` validated on CUDA, and which execution provider ran its nodes there (onnxruntime
   runs a QDQ model's quantized ops on the CPU provider when CUDA has no kernel for them).
4. ``tucker:speedup=2:refit,fp16`` on the YOLO-style detector against ``fp16`` alone on CUDA.
5. ``profile --providers cuda`` on the half-width ResNet-50: the per-node table.

Where onnxruntime's CUDA provider does not load it prints one line saying why and exits 0.
Exit 1 when a check fails. Models and photos come from ``../shared`` (or ``--shared``).

    python benchmarks/cuda_check.py [--shared DIR] [--photos 50] [--keep DIR]
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
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MOBILENET = "mobilenet_v2_imagenet.onnx"
YOLO = "yolo_style_det_ddddocr.onnx"
RESNET50_HALF = "resnet50_half_open_nsfw_opset9.onnx"


class CheckFailed(Exception):
    """A check could not produce its figures (the CLI failed, or a figure is missing)."""


def onnxopt(*args: str, allow_exit: tuple[int, ...] = (0,)) -> dict:
    """Run ``python -m onnxopt ARGS --json`` and return the parsed JSON report."""
    command = [sys.executable, "-m", "onnxopt", *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode not in allow_exit:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise CheckFailed(f"`onnxopt {' '.join(args[:2])} …` exited {done.returncode}: {last}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise CheckFailed(f"`onnxopt {args[0]}` printed no JSON report: {exc}") from exc


def worst_cosine(validation: dict, provider: str = "cuda") -> float:
    rows = [r for r in validation["results"] if r["provider"] == provider]
    if not rows:
        raise CheckFailed(f"the validation ran on {validation['providers']}, not on {provider}")
    return min(r["cosine_min"] for r in rows)


def cuda_speedup(model_a: Path, model_b: Path, batch: int, runs: int = 100) -> float:
    """median(A) / median(B) on CUDA (IO binding), interleaved; above 1: B is faster."""
    report = onnxopt("bench", str(model_a), str(model_b), "--providers", "cuda",
                     "--batch-size", str(batch), "--runs", str(runs), "--warmup", "10")
    (result,) = report["results"]
    return result["comparisons"][0]["speedup"]


def providers_of_nodes(model: Path) -> Counter:
    """Which execution provider ran each node of ``model`` on a CUDA session (from a profile)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(model.with_suffix(""))
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options,
                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in value.shape]
        feeds[value.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(3):
        session.run(None, feeds)
    trace = json.loads(Path(session.end_profiling()).read_text())
    counts: Counter = Counter()
    seen: set[str] = set()
    for event in trace:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args and event["name"] not in seen:
            seen.add(event["name"])
            counts[(args["provider"].replace("ExecutionProvider", ""), args.get("op_name", "?"))] += 1
    return counts


def check_compare(models: Path, photos: Path, work: Path) -> str:
    report = onnxopt("compare", str(models / MOBILENET), "--providers", "cpu,cuda", "--data", str(photos),
                     "--preprocess", "imagenet", "--min-agreement", "0.98", allow_exit=(0, 1))
    rows = [r for r in report["results"] if r["provider"] == "cuda"]
    if not rows:
        raise CheckFailed("no CUDA row in the comparison")
    row = rows[0]
    return (f"agreement {row['top1_agreement']:.4f}, max abs diff {row['max_abs_error']:.3g}, "
            f"rel L2 {row['rel_l2_error']:.3g}, worst cosine {row['cosine_min']:.6f} "
            f"on {row['samples']} photos (gate {'passed' if report['gate']['passed'] else 'FAILED'})")


def check_fp16(models: Path, photos: Path, work: Path) -> str:
    source = models / MOBILENET
    parts = []
    for spec in ("fp16", "fp16:mixed=auto"):
        out = work / f"mobilenet_{spec.replace(':', '_').replace('=', '_')}.onnx"
        report = onnxopt("optimize", str(source), "--passes", spec, "--providers", "cuda", "--data", str(photos),
                         "--preprocess", "imagenet", "-o", str(out), "--force", allow_exit=(0, 1))
        figures = report["passes"][0].get("figures", {})
        verdict = "passed" if report["validation"]["passed"] else "FAILED"
        parts.append(f"{spec}: worst cosine {worst_cosine(report['validation']):.5f} ({verdict}), "
                     f"{figures.get('nodes_fp32', '?')} nodes kept fp32")
    fp16 = work / "mobilenet_fp16.onnx"
    speed = [f"b{batch} {cuda_speedup(source, fp16, batch):.2f}x" for batch in (1, 32)]
    return "; ".join(parts) + "; FP16/FP32 speedup on CUDA " + ", ".join(speed)


def check_int8(models: Path, photos: Path, work: Path) -> str:
    out = work / "mobilenet_int8.onnx"
    report = onnxopt("optimize", str(models / MOBILENET), "--passes", "int8", "--providers", "cuda",
                     "--data", str(photos), "--preprocess", "imagenet", "-o", str(out), "--force",
                     allow_exit=(0, 1))
    validation = report["validation"]
    cuda_rows = [r for r in validation["results"] if r["provider"] == "cuda"]
    agreement = cuda_rows[0].get("top1_agreement") if cuda_rows else None
    counts = providers_of_nodes(out)
    by_provider = Counter()
    for (provider, _op), n in counts.items():
        by_provider[provider] += n
    cpu_ops = sorted({op for (provider, op), _n in counts.items() if provider == "CPU"})
    placement = ", ".join(f"{p} {n}" for p, n in by_provider.most_common())
    speed = cuda_speedup(models / MOBILENET, out, 1)
    return (f"worst cosine {worst_cosine(validation):.4f}, agreement {agreement}, "
            f"gate {'passed' if validation['passed'] else 'FAILED'}; nodes by provider: {placement}"
            + (f" (on CPU: {', '.join(cpu_ops)})" if cpu_ops else "")
            + f"; INT8/FP32 speedup on CUDA b1 {speed:.2f}x")


def check_tucker_fp16(models: Path, photos: Path, work: Path) -> str:
    source = models / YOLO
    fp16 = work / "yolo_fp16.onnx"
    both = work / "yolo_tucker_fp16.onnx"
    onnxopt("optimize", str(source), "--passes", "fp16", "--providers", "cuda", "--data", str(photos),
            "-o", str(fp16), "--force", allow_exit=(0, 1))
    report = onnxopt("optimize", str(source), "--passes", "tucker:speedup=2:refit,fp16", "--providers", "cuda",
                     "--data", str(photos), "-o", str(both), "--force", allow_exit=(0, 1))
    decomposed = len(report["passes"][0].get("applied", []))
    cosine = worst_cosine(report["validation"])
    over_fp32 = cuda_speedup(source, both, 1)
    over_fp16 = cuda_speedup(fp16, both, 1)
    return (f"{decomposed} convs decomposed, worst cosine {cosine:.4f} "
            f"(gate {'passed' if report['validation']['passed'] else 'FAILED'}); on CUDA b1: "
            f"tucker+fp16 vs fp16 alone {over_fp16:.2f}x (goal >= 2x), vs FP32 {over_fp32:.2f}x")


def check_profile(models: Path, photos: Path, work: Path) -> str:
    report = onnxopt("profile", str(models / RESNET50_HALF), "--providers", "cuda", "--runs", "10", "--top", "5")
    nodes = report.get("nodes") or []
    if not nodes:
        raise CheckFailed("the per-node table is empty")
    top = nodes[0]
    return (f"{len(nodes)} nodes timed, kernel time {report['kernel_ms_per_run']:.3f} ms/run, "
            f"unmatched share {report['unmatched_share']:.1%}; top node {top['name']} ({top['op_type']}) "
            f"{top['share']:.1%}")


CHECKS = [
    ("compare cpu,cuda", check_compare),
    ("fp16 on CUDA", check_fp16),
    ("int8 on CUDA", check_int8),
    ("tucker+fp16 on CUDA", check_tucker_fp16),
    ("profile on CUDA", check_profile),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                        help="folder holding models/ and images/imagenet/ (default ../shared)")
    parser.add_argument("--photos", type=int, default=50, help="photos to validate on (default 50)")
    parser.add_argument("--keep", type=Path, help="keep the optimized models in this folder")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from onnxopt.runtime import cuda_status

    ok, reason = cuda_status()
    if not ok:
        print(f"CUDA check skipped: onnxruntime's CUDA provider does not load here ({reason})")
        return 0
    import onnxruntime

    models = args.shared / "models"
    images = sorted((args.shared / "images" / "imagenet").glob("*.JPEG"))[: args.photos]
    if not (models / MOBILENET).exists() or not images:
        print(f"CUDA check skipped: models or photos missing under {args.shared}")
        return 0
    print(f"onnxruntime {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}")
    failed = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxopt-cuda-check-") as tmp:
        work = Path(tmp)
        photos = work / "photos"
        photos.mkdir()
        for image in images:
            os.symlink(image.resolve(), photos / image.name)
        for number, (name, check) in enumerate(CHECKS, 1):
            began = time.perf_counter()
            try:
                line = check(models, photos, work)
            except Exception as exc:  # noqa: BLE001 - one line per failed check, then go on
                failed += 1
                line = f"FAILED: {type(exc).__name__}: {exc}"
            print(f"{number}. {name}: {line} [{time.perf_counter() - began:.0f} s]", flush=True)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for model in work.glob("*.onnx"):
                shutil.copy(model, args.keep / model.name)
    print(f"{len(CHECKS) - failed}/{len(CHECKS)} checks ran in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
