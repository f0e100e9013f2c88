"""Benchmark: INT8 (static QDQ) and FP16 on four real models — CPU speed, agreement, accuracy.

    python benchmarks/quantize.py [--models mobilenet_v2,resnet56,...] [--min-time 8] [--json out.json]

Data: ``../shared/images/imagenet``, sorted by file name: the first 100 photos calibrate,
the other 400 evaluate (disjoint). Preprocessing as ``../shared/models/README.md`` says
(PIL bilinear, torchvision geometry). The two CIFAR-style models see the photos resized to
32×32 (short side, centre crop): there is no CIFAR test set here, so their figure is
top-1 *agreement* with the FP32 model, the literature's "similarity".

For every model:

* ``ort baseline`` — plain ``onnxruntime.quantization.quantize_static``: per-channel,
  MinMax, uint8 activations, int8 weights, QDQ, the same 100 calibration images;
* ``int8`` — this project's pass with its defaults (pre-processing, percentile 99.995,
  bias correction, ``reduce_range=auto``);
* ablations: ``int8 no bias corr`` (``bias_correction=false``) and ``int8 8-bit weights``
  (``reduce_range=false``: what the CPU's kernels do to 8-bit weights where it lacks VNNI);
* tuned variants where the defaults may miss a target (options chosen by measurement;
  the exploration is in the table below);
* ``int8 VNNI numerics`` — accuracy only: the ``int8 8-bit weights`` model (what the
  defaults produce on a VNNI CPU) run with onnxruntime's exact integer kernels
  (``session.x64quantprecision``), i.e. the integer results a VNNI CPU computes. Checked
  against the VNNI machine of the exploration below: resnet56 at P 99.999 without bias
  correction gave .963/.0084 there and .9625/.0080 emulated here;
* ``fp16`` — the fp16 pass with its defaults: worst and mean cosine against FP32.

Time: the ``time`` column is the wall time of quantizing (the whole ``onnxopt.optimize``
call, or ``quantize_static`` for the baseline); below the table, each int8 variant's time
by step, from the pass report's ``seconds_by_phase`` (prepare, preprocess, calibration,
quantization, bias correction, library check). The settings column says which model the
pass kept (``kept: this pass`` or plain quantize_static's, from its library check).

Latency: every variant of a model in one process, interleaved rounds (order rotating),
one intra-op thread, batch 1; speedups are ratios of medians FP32/variant. Three are
printed because this machine is shared (2 cores, other jobs running): the median *wall*
time, the median process *CPU time* of a run (with one thread, the compute itself: it
does not grow when the scheduler takes the core away mid-run, which inflates the wall
time of long runs most — measured here: FP32 ResNet-56 2.4 ms CPU but 14 ms wall median
while another job ran, INT8 1.3 ms / 1.3 ms), and the 10th-percentile wall time (the
undisturbed runs). On a quiet machine the three agree.

The first line names the CPU and whether it has VNNI: integer speed and the accuracy of
8-bit weights depend on it (``onnxopt.runtime.cpu``). The exploration below was measured on
an AVX-512 VNNI CPU before bias correction and ``reduce_range`` existed.

Exploration (the int8 pass, calibration = first 100, evaluation = the other 400;
agreement with FP32 / mean softmax KL(FP32‖INT8); P = percentile of |x|):

================  ===========  ===========  ===========  ===========  ===========
model             MinMax       entropy      P 99.99      P 99.995     P 99.999
================  ===========  ===========  ===========  ===========  ===========
resnet56          .960/.0127   .963/.0145   .940/.0190   .948/.0134   .963/.0084
mobilenet_v2      .935/.0510   .953/.0261   .953/.0319   .960/.0272   .940/.0354
efficientnet_l0   .978/.0094   .970/.0347   .980/.0134   .978/.0091   .978/.0089
================  ===========  ===========  ===========  ===========  ===========

Also tried: two-sided percentiles of x (mobilenet_v2 .945/.0267 at 99.99, resnet56
.953/.0117 at 99.999); MinMax with moving average (resnet56 .908/.091); onnxruntime's
entropy calibrator with 2048 bins (mobilenet_v2 .890/.133, 17 minutes); excluding nodes
on mobilenet_v2 — first conv, last Gemm, the 17 depthwise convs — (.920–.950, no gain);
on resnet56 leaving each single conv in float in turn (KL .0083–.0099: no sensitive layer
stands out), the residual Adds in float (.953/.0093), first conv + last Gemm in float
(.963/.0082), per-tensor weights (.950/.0134). Weights-only int8 on resnet56 reaches
.990/.0015, so its loss is in the activations; agreement moves by ±1 point between
settings of equal KL (400 photos, many near-ties on these out-of-domain 32×32 images).

On an AVX2 AMD EPYC without VNNI (agreement / KL; the pass's defaults at each step):
8-bit weights everywhere: resnet56 .870/.165, mobilenet_v2 .845/.240 (u8×s8 pairs
saturate int16); every weight 7-bit: .953/.0174, .928/—; depthwise weights back to 8
bits: mobilenet_v2 .940/.0363; + bias correction: resnet56 .950/.0142, mobilenet_v2
.958/.0234 (top-1 0.8175 → 0.830); 8 bits again for convs reading small non-negative
codes: .955/.0128, .965/.0207; the image stem in float: .9675/.0104, —/.0195
(efficientnet_l0 .0089 → .0045). Also tried there: correcting every layer's total output
shift measured on the quantized model, all layers at once (diverges: resnet56 agreement
.9525 → .9375 → .8175 → .665 over three rounds; layer by layer in order it converges but
gains nothing over the weight-only correction: KL .01285 → .01276); int8 activations
(0.69×) and uint8 weights (1.0×; .985/.0129 on the first 200 evaluation photos).

With VNNI numerics (exact kernels, 8-bit weights, bias correction unless said):
resnet56 P 99.995 .9475/.0146 (no bias correction .945/.0130), P 99.999 .9625/.0081,
MinMax .955/.0114, entropy .960/.0139, image stem in float .9625/.0105; mobilenet_v2
top-1 .8225 / agreement .9675 / cosine .9937 (no bias correction .835/.9575/.9911,
entropy .825/.9675/.9954). On this AVX2 CPU, 8-bit weights with only the stem in float:
resnet56 .9675/.0100 — the u8×s8 saturation that costs 8-bit weights their accuracy here
is almost all in the stem, whose signed image input fills the uint8 range. Keeping the
stem's weights at 8 bits and its input codes within 0..127 instead (range doubled: no
pair can saturate) was worse than 7-bit weights: .9525/.0197. Keeping the classifier
Gemm in float changed nothing (resnet56 KL .0104 → .0102, mobilenet_v2 and
efficientnet_l0 equal to 4 digits, with either numerics).

Speed cost of the float stem on ResNets: the stem's quantized output feeds both the first
block's conv and its residual Add, and onnxruntime's NHWC layout pass then stops at every
QLinearAdd — two Transposes per residual block (54 on resnet56, against 2 with an integer
stem): 1.54× against 1.63× for ``int8 8-bit weights`` in the same run. Removing them by
hand from onnxruntime's optimized graph took 3.29 ms to 3.08 ms; that graph holds
CPU-only contrib ops, so it is not what the pass writes.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS_DIR = SHARED / "models"
IMAGES = SHARED / "images" / "imagenet"
CALIBRATION = 100
TORCH_MEAN = np.array([0.485, 0.456, 0.406]) * 255
TORCH_STD = np.array([0.229, 0.224, 0.225]) * 255


@dataclass
class ModelSpec:
    file: str
    input: str
    preprocess: str  # torch224 | tf127 | cifar | caffe
    imagenet: bool  # labels apply (1000 ImageNet classes)
    tuned: dict[str, str] = field(default_factory=dict)  # label -> int8 pass spec
    targets: str = ""


#: Ablations shown for every model: what the defaults' bias correction and reduce_range=auto buy here.
ABLATIONS = {"int8 no bias corr": "int8:bias_correction=false", "int8 8-bit weights": "int8:reduce_range=false"}
#: The variant whose model equals the defaults on a VNNI CPU (all weights 8-bit).
VNNI_DEFAULTS = "int8 8-bit weights"

SPECS: dict[str, ModelSpec] = {
    "mobilenet_v2": ModelSpec("mobilenet_v2_imagenet.onnx", "input", "torch224", True,
                              {**ABLATIONS, "int8 entropy": "int8:method=entropy"},
                              "target: >= 1.7x, top-1 drop <= 0.5 point"),
    "efficientnet_lite0": ModelSpec("efficientnet_lite0_imagenet.onnx", "input", "tf127", True, dict(ABLATIONS)),
    "resnet56": ModelSpec("resnet56_cifar10.onnx", "input", "cifar", False,
                          {**ABLATIONS, "int8 minmax": "int8:method=minmax", "int8 p99.999": "int8:percentile=99.999"},
                          "target: >= 2x, agreement >= 97 %"),
    "nsfw_resnet50": ModelSpec("resnet50_half_open_nsfw_opset9.onnx", "input:0", "caffe", False, dict(ABLATIONS)),
}


# ---------------------------------------------------------------- data


def image_files() -> list[Path]:
    return sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))


def labels() -> dict[str, int]:
    with open(IMAGES / "labels.tsv") as handle:
        return {row["file"]: int(row["index"]) for row in csv.DictReader(handle, delimiter="\t")}


def _load(path: Path, resize: int, crop: int) -> np.ndarray:
    from PIL import Image

    image = Image.open(path).convert("RGB")
    w, h = image.size
    nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - crop) / 2)), int(round((nh - crop) / 2))
    return np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32)


def preprocess(kind: str, path: Path) -> np.ndarray:
    if kind == "torch224":
        return ((_load(path, 256, 224) - TORCH_MEAN) / TORCH_STD).transpose(2, 0, 1).astype(np.float32)
    if kind == "tf127":
        return ((_load(path, 256, 224) - 127.0) / 128.0).transpose(2, 0, 1).astype(np.float32)
    if kind == "cifar":
        return ((_load(path, 32, 32) - TORCH_MEAN) / TORCH_STD).transpose(2, 0, 1).astype(np.float32)
    if kind == "caffe":  # NHWC, BGR, minus the Caffe means
        return np.ascontiguousarray(_load(path, 256, 224)[:, :, ::-1] - np.array([104.0, 117.0, 123.0])).astype(np.float32)
    raise ValueError(kind)


# ---------------------------------------------------------------- helpers


def session(model: bytes, exact_integer: bool = False):
    """``exact_integer``: onnxruntime's "x64quantprecision" mode, whose u8×u8 kernels
    accumulate without the int16 saturation of AVX2's u8×s8 ones — the integer results a
    VNNI CPU computes (slower; only for accuracy)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if exact_integer:
        from onnxopt.runtime.cpu import EXACT_INTEGER_KERNELS

        for key, value in EXACT_INTEGER_KERNELS.items():
            options.add_session_config_entry(key, value)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def predict(model: bytes, name: str, x: np.ndarray, batch: int = 25, exact_integer: bool = False) -> np.ndarray:
    s = session(model, exact_integer)
    return np.concatenate([s.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def runnable(proto) -> bytes:
    from onnxopt.runtime.ir_version import runnable_bytes

    return runnable_bytes(proto)


def loads(model: bytes) -> str | None:
    try:
        session(model)
    except Exception as exc:  # onnxruntime raises several types for invalid models
        return str(exc).strip().splitlines()[0][:160]
    return None


def measure(models: list[bytes], feeds: dict[str, np.ndarray], min_time: float, warmup: int = 5,
            min_rounds: int = 30) -> list[dict]:
    """Interleaved timing (order rotating each round), one intra-op thread: per model the
    median wall time, the median process CPU time (immune to being descheduled on a
    shared machine) and the 10th-percentile wall time."""
    import onnxruntime as ort

    sessions = []
    for model in models:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        sessions.append(ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]))
    for s in sessions:
        for _ in range(warmup):
            s.run(None, feeds)
    wall: list[list[float]] = [[] for _ in sessions]
    cpu: list[list[float]] = [[] for _ in sessions]
    started, rounds = time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - started < min_time:
        for offset in range(len(sessions)):
            i = (rounds + offset) % len(sessions)
            c0, w0 = time.process_time(), time.perf_counter()
            sessions[i].run(None, feeds)
            wall[i].append(time.perf_counter() - w0)
            cpu[i].append(time.process_time() - c0)
        rounds += 1
    return [{"wall": float(np.median(w)), "cpu": float(np.median(c)), "wall_p10": float(np.percentile(w, 10)),
             "rounds": rounds} for w, c in zip(wall, cpu)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def ort_baseline(path: Path, name: str, calibration: np.ndarray) -> bytes:
    """Plain quantize_static as the issue measured it (no pre-processing, MinMax)."""
    import contextlib
    import io as _io

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(calibration):
                return None
            self.i += 1
            return {name: calibration[self.i - 1 : self.i]}

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(_io.StringIO()):
        out = Path(tmp) / "q.onnx"
        logging.disable(logging.WARNING)
        try:
            quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        return runnable(onnx.load(str(out)))


def run_pass(path: Path, spec: str, name: str, calibration: np.ndarray):
    """Run one pass spec through onnxopt's API, calibration streamed in batches of 10."""
    import onnxopt
    from onnxopt.passbase import PassContext

    context = PassContext(
        calibration=lambda: ({name: calibration[i : i + 10]} for i in range(0, len(calibration), 10)),
        calibration_description=f"first {len(calibration)} photos",
    )
    start = time.perf_counter()
    model, report = onnxopt.optimize(str(path), spec, context=context)
    return runnable(model), report.passes[0], time.perf_counter() - start


# ---------------------------------------------------------------- benchmark


def bench_model(key: str, spec: ModelSpec, min_time: float, label_of: dict[str, int]) -> dict:
    path = MODELS_DIR / spec.file
    files = image_files()
    t0 = time.perf_counter()
    data = np.stack([preprocess(spec.preprocess, p) for p in files])
    calibration, evaluation = data[:CALIBRATION], data[CALIBRATION:]
    truth = np.array([label_of.get(p.name, -1) for p in files[CALIBRATION:]])
    original = path.read_bytes()
    reference = predict(original, spec.input, evaluation)
    print(f"\n## {key} ({spec.file}; {len(calibration)} calibration / {len(evaluation)} evaluation photos"
          f"{'; ' + spec.targets if spec.targets else ''})", flush=True)

    variants: list[tuple[str, bytes, float, str]] = []
    step_seconds: dict[str, dict[str, float]] = {}  # the int8 pass's time per step, per variant
    failed: list[tuple[str, str]] = []
    start = time.perf_counter()
    baseline = ort_baseline(path, spec.input, calibration)
    problem = loads(baseline)
    if problem is None:
        variants.append(("ort baseline", baseline, time.perf_counter() - start, "quantize_static per-channel MinMax u8/s8"))
    else:
        failed.append(("ort baseline", f"onnxruntime cannot load plain quantize_static's model: {problem}"))
    for label, pass_spec in [("int8", "int8"), *spec.tuned.items()]:
        model, report, seconds = run_pass(path, pass_spec, spec.input, calibration)
        if report.skipped_reason:
            print(f"  {label}: skipped: {report.skipped_reason}")
            continue
        figures = report.figures
        note = f"{figures.get('method')}, {figures.get('quantized_nodes')} nodes, " \
               f"{figures.get('excluded_nodes', 0)} excluded, {figures.get('per_channel_fallbacks', 0)} fallbacks"
        if figures.get("result"):
            note += f"; kept: {figures['result']}"
        variants.append((label, model, seconds, f"{pass_spec}: {note}"))
        step_seconds[label] = figures.get("seconds_by_phase") or {}
    fp16_model, fp16_report, fp16_seconds = run_pass(path, "fp16", spec.input, calibration)

    def accuracy(label: str, output: np.ndarray, seconds: float, note: str) -> dict:
        row = {"variant": label, "seconds": round(seconds, 1), "note": note,
               "seconds_by_phase": step_seconds.get(label, {}),
               "agreement": float(np.mean(output.argmax(1) == reference.argmax(1))),
               "cosine_mean": float(cosines(reference, output).mean())}
        if spec.imagenet:
            row["top1"] = float(np.mean(output.argmax(1) == truth))
        return row

    rows = [accuracy(label, predict(model, spec.input, evaluation), seconds, note)
            for label, model, seconds, note in variants]
    # What a VNNI CPU computes: its defaults keep 8-bit weights (reduce_range=auto -> off),
    # and its kernels accumulate exactly. Accuracy only: this CPU's exact kernels are slow.
    vnni = [(m, s) for label, m, s, _ in variants if label == VNNI_DEFAULTS]
    accuracy_only = [accuracy("int8 VNNI numerics", predict(m, spec.input, evaluation, exact_integer=True), s,
                              f"{VNNI_DEFAULTS!r} run with exact integer kernels (x64quantprecision); "
                              "accuracy only") for m, s in vnni]
    fp16_output = predict(fp16_model, spec.input, evaluation)
    fp16_cos = cosines(reference, fp16_output)

    sample = {spec.input: evaluation[:1]}
    timing = measure([original] + [m for _, m, _, _ in variants] + [fp16_model], sample, min_time)
    for index, row in enumerate(rows, start=1):
        row.update({k: timing[0][k] / timing[index][k] for k in ("wall", "cpu", "wall_p10")})
    fp16_speed = {k: timing[0][k] / timing[-1][k] for k in ("wall", "cpu", "wall_p10")}

    top1_ref = float(np.mean(reference.argmax(1) == truth)) if spec.imagenet else None
    print(f"  FP32: median {timing[0]['wall'] * 1e3:.2f} ms wall, {timing[0]['cpu'] * 1e3:.2f} ms CPU "
          f"({timing[0]['rounds']} interleaved rounds, batch 1, 1 thread)")
    print(f"  {'variant':<18} {'speed: wall':>11} {'CPU time':>9} {'wall p10':>9} {'agreement':>10} "
          f"{'top-1 (drop)':>17} {'cos mean':>9} {'time':>5}  settings (time: quantizing, whole; steps below)")
    print(f"  {'fp32':<18} {'1.00x':>11} {'1.00x':>9} {'1.00x':>9} {'1.0000':>10} "
          f"{(f'{top1_ref:.4f}' if spec.imagenet else '-'):>17} {'1.0000':>9}")
    for row in rows:
        top1 = f"{row['top1']:.4f} ({(row['top1'] - top1_ref) * 100:+.2f})" if spec.imagenet else "-"
        print(f"  {row['variant']:<18} {row['wall']:>10.2f}x {row['cpu']:>8.2f}x {row['wall_p10']:>8.2f}x "
              f"{row['agreement']:>10.4f} {top1:>17} {row['cosine_mean']:>9.4f} {row['seconds']:>4.0f}s  {row['note']}")
    for row in rows:  # where the quantizing time went (the pass's seconds_by_phase)
        if row["seconds_by_phase"]:
            steps = ", ".join(f"{step} {value:.1f}s" for step, value in row["seconds_by_phase"].items())
            print(f"  {row['variant']:<18} time by step: {steps}")
    for row in accuracy_only:
        top1 = f"{row['top1']:.4f} ({(row['top1'] - top1_ref) * 100:+.2f})" if spec.imagenet else "-"
        print(f"  {row['variant']:<18} {'-':>11} {'-':>9} {'-':>9} {row['agreement']:>10.4f} {top1:>17} "
              f"{row['cosine_mean']:>9.4f} {'':>5}  {row['note']}")
    for label, reason in failed:
        print(f"  {label:<18} failed: {reason}")
    print(f"  fp16: cosine vs FP32 worst {fp16_cos.min():.5f}, mean {fp16_cos.mean():.6f}; agreement "
          f"{np.mean(fp16_output.argmax(1) == reference.argmax(1)):.4f}; CPU speed {fp16_speed['wall']:.2f}x wall, "
          f"{fp16_speed['cpu']:.2f}x CPU time (FP16 is for CUDA); {fp16_report.figures.get('nodes_fp16')} nodes "
          f"fp16, {fp16_report.figures.get('nodes_fp32')} fp32 ({fp16_seconds:.0f}s)")
    print(f"  ({time.perf_counter() - t0:.0f}s for this model)", flush=True)
    return {"model": key, "top1_fp32": top1_ref, "int8": rows + accuracy_only,
            "failed": failed,
            "fp16": {"cosine_min": float(fp16_cos.min()), "cosine_mean": float(fp16_cos.mean()), "speed": fp16_speed}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SPECS), help=f"comma-separated, from {', '.join(SPECS)}")
    parser.add_argument("--min-time", type=float, default=8.0, help="seconds of interleaved timing per model")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if not MODELS_DIR.exists() or not IMAGES.exists():
        print("skipped: needs ../shared/models and ../shared/images/imagenet", file=sys.stderr)
        return 0
    sys.path.insert(0, str(REPO))
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SPECS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(SPECS)}")
    import onnxruntime

    from onnxopt.runtime import cpu as hostcpu

    print(f"onnxruntime {onnxruntime.__version__}; {hostcpu.cpu_name()}: {hostcpu.integer_kernels().describe()}; "
          f"calibration: first {CALIBRATION} of {len(image_files())} photos (sorted by name); evaluation: the rest")
    label_of = labels()
    start = time.perf_counter()
    results = [bench_model(key, SPECS[key], args.min_time, label_of) for key in keys]
    print(f"\ntotal {time.perf_counter() - start:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
