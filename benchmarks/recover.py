"""Benchmark of the ``recover`` pass (issue 14): decomposition + distillation, alone and under INT8.

    python benchmarks/recover.py                       # all four models (~40 min on 2 cores)
    python benchmarks/recover.py --models yolo_style_det --json out.json
    python benchmarks/recover.py --quick               # tiny sizes: a smoke run, figures meaningless
    python benchmarks/recover.py --int8-budget 300     # more time for recover after int8 (its lr probes)

Data: ``../shared/images/imagenet`` sorted by name; the first N photos are the calibration
split (whitening statistics, ``refit``, ``recover`` — which holds out 20 % of them for its
learning rate and early stopping — and the INT8 ranges), photos 100 … 100 + M evaluate
(disjoint). Preprocessing as ``../shared/models/README.md`` says. ``whiten=auto`` is on in
every decomposition (calibration data is given).

Models: ``yolo_style_det`` (worst attribute channel), ``resnet56`` (CIFAR: top-1 agreement),
``resnet50_half`` (mean cosine), ``mobilenet_v2`` (top-1 against the photos' ImageNet labels
too). Rows per model, each beside the same pipeline without recovery and with refit only:
FP32, the decomposition plain, with ``refit``, with ``refit,recover`` (not for
``mobilenet_v2``: INT8 rows only); ``int8`` alone, ``int8,recover`` (recover after int8
trains the quantization scales) and ``int8,recover:quantized=all`` (also the integer
weights and biases); for ``yolo_style_det`` and ``resnet50_half`` also ``refit,int8``,
``refit,recover,int8`` and ``refit,recover,int8,recover``; for ``resnet56`` and
``mobilenet_v2`` (the INT8 accuracy targets) also ``int8:keep_float=K`` (``--keep-float``,
default 2: the K activations whose rounding costs most stay float) and it followed by
``recover``.
Each model is built from the row before it in its chain (``recover`` gets the FP32 model as
its teacher, as the pipeline hands it over; ``int8`` calibrates on the same photos), which
is what one pipeline computes; ``pass s`` adds up the chain's pass times.

Columns: ``vs FP32`` — median latency FP32 / row, onnxruntime CPU, one intra-op thread,
batch 1, every model of the table interleaved in one process
(``onnxopt.bench.latency.bench_models``); ``vs int8`` — the same against ``int8`` alone;
fidelity against FP32 on the evaluation photos with the gate's metrics
(``onnxopt.validate.metrics``), INT8 models run with the session settings their pass asks
the gate for (exact integer kernels on a CPU without VNNI): the detector's worst attribute
channel (``channel_cosine_min`` over the [N, 3549, 6] output's last axis) and mean
per-sample cosine, the classifier's top-1 agreement and mean cosine; ``loss`` — recover's
held-out loss before → after (per-channel-normalised MSE), with the learning rate it chose.
At the end: the issue's targets, MET / NOT MET with the measured figures, the measured
speed/fidelity frontier, recover's seconds and the process's peak memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxopt import api  # noqa: E402
from onnxopt.passbase import PassContext  # noqa: E402
from onnxopt.runtime import create_session, first_line  # noqa: E402

SHARED = ROOT.parent / "shared"
IMAGES = SHARED / "images" / "imagenet"
EVAL_START = 100
TORCH = "mean=123.675,116.28,103.53 std=58.395,57.12,57.375"


@dataclass
class ModelSpec:
    file: str
    preprocess: str
    detector: bool  # judged per attribute channel; else a classifier (top-1 agreement)
    decomposition: str | None  # None: the INT8 rows only
    n_calib: int
    n_eval: int
    batch: int  # calibration and evaluation batch
    steps: int  # recover steps
    time_budget: float  # recover seconds
    runs: int  # interleaved latency rounds
    int8_budget: float  # recover seconds after int8 (quantized layers, fake quantization)
    int8_after: bool  # also the decomposition rows followed by int8 (and recover)
    labels: bool = False  # ImageNet classifier: top-1 against the photos' labels too
    keep_float: bool = False  # also int8:keep_float=K rows (INT8 accuracy targets), K from --keep-float


MODELS = {
    "yolo_style_det": ModelSpec("yolo_style_det_ddddocr.onnx", "resize=416 crop=416 mean=0 std=255", True,
                                "tucker:speedup=8,svd:speedup=3", n_calib=48, n_eval=60, batch=1, steps=120, time_budget=180,
                                runs=20, int8_budget=150, int8_after=True),
    "resnet56": ModelSpec("resnet56_cifar10.onnx", f"resize=32 crop=32 {TORCH}", False, "tucker:energy=0.9",
                          n_calib=100, n_eval=400, batch=5, steps=120, time_budget=120, runs=100,
                          int8_budget=120, int8_after=False, keep_float=True),
    "resnet50_half": ModelSpec("resnet50_half_open_nsfw_opset9.onnx", "caffe", False, "tucker:speedup=6,svd:speedup=3",
                               n_calib=64, n_eval=100, batch=4, steps=120, time_budget=180, runs=20,
                               int8_budget=180, int8_after=True),
    "mobilenet_v2": ModelSpec("mobilenet_v2_imagenet.onnx", f"resize=256 crop=224 {TORCH}", False, None,
                              n_calib=100, n_eval=400, batch=4, steps=120, time_budget=180, runs=40,
                              int8_budget=240, int8_after=False, labels=True, keep_float=True),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


# ---------------------------------------------------------------------------- data and passes


def load_images(model: onnx.ModelProto, preprocess: str, start: int, count: int) -> np.ndarray:
    from onnxopt.analysis.inputs import model_inputs
    from onnxopt.validate.data import list_images
    from onnxopt.validate.preprocess import image_pipeline

    pipeline = image_pipeline(preprocess, model_inputs(model)[0])
    files = list_images(IMAGES)[start:start + count]
    return np.stack([pipeline.load(path) for path in files]).astype(np.float32)


def image_labels(start: int, count: int) -> np.ndarray:
    """The ImageNet class index of photos ``start`` … ``start + count − 1`` (labels.tsv)."""
    import csv

    from onnxopt.validate.data import list_images

    with open(IMAGES / "labels.tsv") as handle:
        index = {row["file"]: int(row["index"]) for row in csv.DictReader(handle, delimiter="\t")}
    return np.array([index[path.name] for path in list_images(IMAGES)[start:start + count]])


@dataclass
class Row:
    label: str
    model: onnx.ModelProto | None
    seconds: float = 0.0  # pass seconds of the whole chain
    config: dict[str, str] = field(default_factory=dict)  # session settings the passes ask the gate for
    recover: dict | None = None  # recover's figures, or {"reason": ...} when it left the model unchanged
    failed: str | None = None
    speed: float | None = None
    speed_int8: float | None = None
    metrics: dict = field(default_factory=dict)


class Chain:
    """Runs passes through ``onnxopt.api.optimize`` on one model's calibration split."""

    def __init__(self, fp32: onnx.ModelProto, name: str, calib: np.ndarray, batch: int):
        self.fp32, self.name, self.calib, self.batch = fp32, name, calib, batch
        self.shapes = {name: (1, *calib.shape[1:])}

    def step(self, parent: Row, spec: str, label: str) -> Row:
        if parent.model is None:
            return Row(label, None, failed=parent.failed)
        context = PassContext(
            calibration=lambda: ({self.name: self.calib[i:i + self.batch]} for i in range(0, len(self.calib), self.batch)),
            calibration_description=f"first {len(self.calib)} photos", teacher=self.fp32)
        log(f"{label} ...")
        try:
            model, report = api.optimize(parent.model, spec, context=context, input_shapes=self.shapes)
        except Exception as exc:  # noqa: BLE001 — a benchmark reports and goes on
            return Row(label, None, failed=f"{type(exc).__name__}: {first_line(exc)}")
        row = Row(label, model, parent.seconds + sum(p.seconds for p in report.passes), dict(parent.config),
                  parent.recover)
        for pass_report in report.passes:
            row.config.update(pass_report.validate_with)
            if pass_report.name == "recover":
                row.recover = dict(pass_report.figures)
                if pass_report.skipped_reason:
                    row.recover["reason"] = pass_report.skipped_reason
        log(f"{label}: {row.seconds:.1f} s")
        return row


# ---------------------------------------------------------------------------- measures


def run_outputs(model: onnx.ModelProto, x: np.ndarray, batch: int, config: dict[str, str]) -> list[dict]:
    session = create_session(model, "cpu", threads=None, config=config or None)
    names = [o.name for o in session.get_outputs()]
    name = session.get_inputs()[0].name
    return [dict(zip(names, session.run(None, {name: x[i:i + batch]}))) for i in range(0, len(x), batch)]


def fidelity(reference: list[dict], candidate: list[dict]) -> dict:
    """The gate's metrics of the first output, streamed over the evaluation batches."""
    from onnxopt.validate.metrics import MetricsAccumulator

    first = next(iter(reference[0]))
    accumulator = MetricsAccumulator([first])
    for ref, cand in zip(reference, candidate):
        accumulator.update({first: ref[first]}, {first: cand[first]})
    m = accumulator.result()[0]
    return {"cosine_mean": m.cosine_mean, "cosine_min": m.cosine_min, "channel_cosine_min": m.channel_cosine_min,
            "channel_cosine_argmin": m.channel_cosine_argmin, "top1_agreement": m.top1_agreement}


def time_rows(rows: list[Row], feeds: dict[str, np.ndarray], runs: int) -> None:
    """Speed vs FP32 (rows[0]) and vs ``int8`` alone: interleaved, one thread, batch 1."""
    from onnxopt.bench.latency import bench_models

    timed = [r for r in rows if r.model is not None]
    result = bench_models([r.model.SerializeToString() for r in timed], feeds, threads=1, warmup=3, runs=runs)
    medians = [m.stats.p50_ms for m in result.models]
    int8 = next((medians[i] for i, r in enumerate(timed) if r.label == "int8"), None)
    for row, median in zip(timed, medians):
        row.speed = medians[0] / median
        if int8 is not None and "int8" in row.label:
            row.speed_int8 = int8 / median


# ---------------------------------------------------------------------------- one model


def with_refit(method: str) -> str:
    """``method`` with ``refit`` on each of its passes: "tucker:speedup=8,svd" -> "tucker:speedup=8:refit,svd:refit"."""
    return ",".join(f"{step}:refit" for step in method.split(","))


def bench_model(key: str, spec: ModelSpec, quick: bool, decomposition: str | None, int8_budget: float | None,
                keep_float: int) -> dict:
    started = time.perf_counter()
    if quick:
        spec.n_calib, spec.n_eval, spec.steps, spec.time_budget, spec.int8_budget, spec.runs = 6, 4, 4, 30, 30, 3
    if int8_budget is not None:
        spec.int8_budget = int8_budget
    method = decomposition or spec.decomposition  # None: INT8 rows only
    refitted = with_refit(method) if method else None
    fp32 = onnx.load(SHARED / "models" / spec.file)
    name = fp32.graph.input[0].name
    calib = load_images(fp32, spec.preprocess, 0, spec.n_calib)
    evaluation = load_images(fp32, spec.preprocess, EVAL_START, spec.n_eval)
    chain = Chain(fp32, name, calib, spec.batch)
    recover = f"recover:steps={spec.steps}:time_budget={spec.time_budget:g}"
    recover_int8 = f"recover:steps={spec.steps}:time_budget={spec.int8_budget:g}"

    base = Row("FP32", fp32)
    rows = [base]
    if method:
        refit = chain.step(base, f"{refitted}", f"{refitted}")
        recovered = chain.step(refit, recover, f"{refitted},recover")
        rows += [chain.step(base, method, method), refit, recovered]
    int8 = chain.step(base, "int8", "int8")
    rows += [int8, chain.step(int8, recover_int8, "int8,recover"),
             chain.step(int8, f"{recover_int8}:quantized=all", "int8,recover:quantized=all")]
    if spec.keep_float and keep_float:
        mixed = chain.step(base, f"int8:keep_float={keep_float}", f"int8:keep_float={keep_float}")
        rows += [mixed, chain.step(mixed, recover_int8, f"int8:keep_float={keep_float},recover")]
    if method and spec.int8_after:
        recovered_int8 = chain.step(recovered, "int8", f"{refitted},recover,int8")
        rows += [chain.step(refit, "int8", f"{refitted},int8"), recovered_int8,
                 chain.step(recovered_int8, recover_int8, f"{refitted},recover,int8,recover")]

    log("evaluating ...")
    reference = run_outputs(fp32, evaluation, spec.batch, {})
    truth = image_labels(EVAL_START, spec.n_eval) if spec.labels else None
    for row in rows:
        if row.model is not None:
            outputs = reference if row is base else run_outputs(row.model, evaluation, spec.batch, row.config)
            row.metrics = fidelity(reference, outputs)
            if truth is not None:
                predicted = np.concatenate([next(iter(o.values())) for o in outputs]).argmax(1)
                row.metrics["top1"] = float(np.mean(predicted == truth))
    log("timing ...")
    time_rows(rows, {name: evaluation[:1]}, spec.runs)

    print(f"\n## {key} ({spec.file}, input {tuple(chain.shapes[name])}; calibration: first {spec.n_calib} photos, "
          f"batches of {spec.batch}; evaluation: photos {EVAL_START}..{EVAL_START + spec.n_eval - 1}; "
          f"{recover}; after int8 {recover_int8}; {spec.runs} latency rounds)")
    fidelity_head = "worst ch  cos mean" if spec.detector else "agreement  cos mean"
    width = max(len(r.label) for r in rows)
    print(f"  {'pipeline':<{width}} {'vs FP32':>7} {'vs int8':>7} {fidelity_head:>19} {'pass s':>7}  recover held-out loss")
    for row in rows:
        print("  " + row_line(row, spec.detector, width))
    recover_seconds = (recovered.recover or {}).get("seconds") if method else None
    print(f"  ({time.perf_counter() - started:.0f} s for this model; recover {recover_seconds} s; "
          f"peak memory so far {peak_mib():.0f} MiB)", flush=True)
    return {"model": key, "method": method, "refitted": refitted, "rows": [row_dict(r) for r in rows], "seconds": time.perf_counter() - started}


def row_line(row: Row, detector: bool, width: int = 44) -> str:
    if row.model is None:
        return f"{row.label:<{width}} failed: {row.failed}"

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    m = row.metrics
    first = m.get("channel_cosine_min") if detector else m.get("top1_agreement")
    loss = ""
    if row.recover:
        r = row.recover
        if r.get("reason"):
            loss = f"unchanged: {r['reason']}"
        else:
            rates = f"lr {r.get('lr')}" + (f", scale_lr {r['scale_lr']:g}" if r.get("scale_lr") else "")
            loss = f"{fmt(r.get('loss_before'), '.5f')} → {fmt(r.get('loss_after'), '.5f')} ({rates}, " \
                   f"{r.get('steps')} steps, {fmt(r.get('seconds'), '.0f')} s)"
        if "int8" in row.label.split(",")[-1]:
            loss = "(float model: " + loss + ")"
    top1 = f"top-1 {m['top1']:.4f}  " if "top1" in m else ""
    return (f"{row.label:<{width}} {fmt(row.speed, '.2f'):>6}× {fmt(row.speed_int8, '.2f') + '×' if row.speed_int8 else '-':>7} "
            f"{fmt(first, '.5f'):>9} {fmt(m.get('cosine_mean'), '.5f'):>9} {row.seconds:7.1f}  {top1}{loss}")


def row_dict(row: Row) -> dict:
    return {"label": row.label, "failed": row.failed, "speed": row.speed, "speed_vs_int8": row.speed_int8,
            "pass_seconds": row.seconds, "metrics": row.metrics, "recover": row.recover, "session_config": row.config}


# ---------------------------------------------------------------------------- targets


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


INT8_RECOVERED = ("int8,recover", "int8,recover:quantized=all")


def int8_recovered(rows: dict) -> list[str]:
    """The INT8 + recover rows of a model: INT8_RECOVERED and the keep_float one, if run."""
    return [*INT8_RECOVERED, *(label for label in rows if label.startswith("int8:keep_float=") and
                               label.endswith(",recover"))]


def _ok(row: dict | None) -> bool:
    return bool(row) and not row["failed"] and row["speed"] is not None


def _show(row: dict | None, what: str, measure, against: str = "speed") -> str:
    if not _ok(row) or row[against] is None:
        return "failed" if row else "not run"
    return f"{row[against]:.2f}× at {what} {measure(row):.5f}{unchanged(row)}"


def stacked_on_int8(refitted: str) -> list[str]:
    """The rows that stack a recovered decomposition under int8 (and recover again)."""
    return [f"{refitted},recover,int8", f"{refitted},recover,int8,recover"]


def meets(rows: dict, labels: list[str], speed_vs_int8: float, measure, fidelity: float) -> bool:
    """Whether one of ``labels`` runs ``speed_vs_int8`` times INT8 alone at ``fidelity`` or better."""
    return any(_ok(r) and r["speed_vs_int8"] >= speed_vs_int8 and measure(r) >= fidelity
               for r in map(rows.get, labels))


def targets(results: list[dict]) -> None:
    print("\n## targets (issue 14)")
    by_model = {r["model"]: r for r in results}

    def worst_channel(r):
        return r["metrics"].get("channel_cosine_min")

    def agreement(r):
        return r["metrics"].get("top1_agreement")

    def cosine(r):
        return r["metrics"].get("cosine_mean")

    yolo = by_model.get("yolo_style_det")
    if yolo:
        rows, refitted = {r["label"]: r for r in yolo["rows"]}, yolo["refitted"]
        rec = rows.get(f"{refitted},recover")
        ok = _ok(rec) and rec["speed"] >= 2.0 and worst_channel(rec) >= 0.99
        print(f"- yolo_style_det: decomposition + recover ≥ 2.0× vs FP32 at worst-channel cosine ≥ 0.99: "
              f"{verdict(ok)} — {refitted},recover {_show(rec, 'worst-channel cosine', worst_channel)}; "
              f"refit only {_show(rows.get(f'{refitted}'), 'worst-channel cosine', worst_channel)}")
        labels8 = stacked_on_int8(refitted)
        ok8 = meets(rows, labels8, 1.3, worst_channel, 0.98)
        print(f"- yolo_style_det: + INT8 ≥ 1.3× vs INT8 alone at worst-channel cosine ≥ 0.98: {verdict(ok8)} — "
              + "; ".join(f"{label} {_show(rows.get(label), 'worst-channel cosine', worst_channel, 'speed_vs_int8')}"
                          for label in labels8)
              + f"; int8 alone {_show(rows.get('int8'), 'worst-channel cosine', worst_channel)} vs FP32")
        frontier(yolo, "worst-channel cosine", worst_channel)
    half = by_model.get("resnet50_half")
    if half:
        rows, refitted = {r["label"]: r for r in half["rows"]}, half["refitted"]
        labels8 = stacked_on_int8(refitted)
        ok = meets(rows, labels8, 1.2, cosine, 0.999)
        print(f"- resnet50_half: decomposition + recover + INT8 ≥ 1.2× vs INT8 alone at mean cosine ≥ 0.999: "
              f"{verdict(ok)} — " + "; ".join(f"{label} {_show(rows.get(label), 'mean cosine', cosine, 'speed_vs_int8')}"
                                               for label in labels8)
              + f"; int8 alone {_show(rows.get('int8'), 'mean cosine', cosine)} vs FP32")
        frontier(half, "mean cosine", cosine)
    resnet = by_model.get("resnet56")
    if resnet:
        rows, refitted = {r["label"]: r for r in resnet["rows"]}, resnet["refitted"]
        recovered = int8_recovered(rows)
        ok = any(_ok(r) and not unchanged(r) and agreement(r) >= 0.97 and r["speed"] >= 2.0
                 for r in map(rows.get, recovered))
        print(f"- resnet56: INT8 + recover ≥ 0.97 agreement at ≥ 2×: {verdict(ok)} — "
              + "; ".join(f"{label} {_show(rows.get(label), 'agreement', agreement)}" for label in recovered)
              + f"; int8 alone {_show(rows.get('int8'), 'agreement', agreement)}")
        rec = rows.get(f"{refitted},recover")
        print(f"- resnet56: decomposition + recover agreement (the prototype reached 0.876): "
              f"{refitted},recover {_show(rec, 'agreement', agreement)}; refit only "
              f"{_show(rows.get(f'{refitted}'), 'agreement', agreement)}")
        frontier(resnet, "agreement", agreement)
    mobile = by_model.get("mobilenet_v2")
    if mobile:
        rows = {r["label"]: r for r in mobile["rows"]}
        fp32 = rows["FP32"]["metrics"]["top1"]

        def top1(r):
            return r["metrics"].get("top1")

        recovered = int8_recovered(rows)
        ok = any(_ok(r) and not unchanged(r) and top1(r) >= fp32 - 0.0025 for r in map(rows.get, recovered))
        print(f"- mobilenet_v2: INT8 + recover top-1 within 0.25 point of FP32 ({fp32:.4f}): {verdict(ok)} — "
              + "; ".join(f"{label} {_show(rows.get(label), 'top-1', top1)}" for label in recovered)
              + f"; int8 alone {_show(rows.get('int8'), 'top-1', top1)}")
        frontier(mobile, "top-1", top1)
    for result in results:  # every recover run: the rows whose last pass is recover
        runs = {r["label"]: r["recover"]["seconds"] for r in result["rows"]
                if not r["failed"] and r["label"].split(",")[-1].startswith("recover") and r["recover"]
                and r["recover"].get("seconds") is not None}
        if runs:
            print(f"- {result['model']}: recovery ≤ 5 minutes: {verdict(max(runs.values()) <= 300)} — "
                  + ", ".join(f"{label} {seconds:.0f} s" for label, seconds in runs.items()))
    print(f"- peak memory (ru_maxrss of this process): {peak_mib():.0f} MiB")


def unchanged(row: dict | None) -> str:
    """' (recover left it unchanged: why)' where recover kept the model as it was, else ''."""
    reason = row and not row["failed"] and (row["recover"] or {}).get("reason")
    return f" (recover left it unchanged: {reason})" if reason else ""


def frontier(result: dict, what: str, measure) -> None:
    """Speed against fidelity, every measured row, with and without recovery."""
    points = [r for r in result["rows"] if not r["failed"] and r["speed"] is not None]
    print(f"  {result['model']} frontier (speed vs FP32 → {what}; * = no faster row is at least as good):")
    for r in sorted(points, key=lambda r: -r["speed"]):
        best = all(measure(o) is None or measure(r) is None or measure(o) < measure(r)
                   for o in points if o is not r and o["speed"] >= r["speed"])
        value = measure(r)
        print(f"    {'*' if best else ' '} {r['speed']:5.2f}×  {'-' if value is None else format(value, '.5f')}  "
              f"{r['label']}")


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--decomposition", action="append", default=[], metavar="MODEL=SPEC",
                        help="another decomposition for a model, e.g. yolo_style_det=tucker:speedup=4")
    parser.add_argument("--int8-budget", type=float, metavar="SECONDS",
                        help="recover's time budget after int8, every model (default: per model, 120–240)")
    parser.add_argument("--keep-float", type=int, default=2, metavar="K",
                        help="resnet56 and mobilenet_v2 (the INT8 accuracy targets) also get int8:keep_float=K rows, "
                             "with and without recover (default 2; 0: none)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(MODELS)}")
    if not (SHARED / "models").exists() or not IMAGES.exists():
        print("skipped: needs ../shared/models and ../shared/images/imagenet", file=sys.stderr)
        return 0
    overrides = dict(item.split("=", 1) for item in args.decomposition)
    logging.basicConfig(level=logging.WARNING)
    import onnxruntime

    from onnxopt import recover
    from onnxopt.runtime.cpu import cpu_name, integer_kernels

    ready, engine = recover.available()
    if not ready:
        print(f"skipped: {engine}", file=sys.stderr)
        return 0
    print(f"{cpu_name()}: {integer_kernels().describe()}; onnxruntime {onnxruntime.__version__}, {engine}; "
          "latency on 1 intra-op thread, batch 1, interleaved (median); passes and evaluation on the default threads"
          + ("; QUICK smoke run: figures meaningless" if args.quick else ""))
    started = time.perf_counter()
    results = [bench_model(key, MODELS[key], args.quick, overrides.get(key), args.int8_budget, args.keep_float)
               for key in keys]
    targets(results)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
