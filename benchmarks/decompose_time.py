"""Time our Tucker-2 and CP against tensorly's defaults on the dense convs of real models.

    python benchmarks/decompose_time.py [--tl-cap 120] [--ablation] [--models resnet56_cifar10 ...]

For every dense Conv (group=1, kh·kw > 1) of each model (weights read from initializers
and Constant nodes):

* Tucker-2 ranks: energy 0.9 per unfolding, rounded up to 16 (``select_rank_pair``);
  ours = ``tucker2`` (HOSVD + default HOOI sweeps), tensorly = ``partial_tucker`` defaults;
  best of 3 runs each (the machine is shared).
* CP rank: the largest rank whose CP MACs fit the Tucker-2 MAC budget of that layer
  (``select_rank(speedup=dense/tucker)``), capped at the exact-CP bound kh·kw·min(F, C);
  ours = ``cp4`` defaults, tensorly = ``parafac`` defaults (init="svd", 100 iterations).
  tensorly's parafac runs in a child process with a per-model time cap; layers left
  when the cap is hit are skipped and the table says so (errors are then compared on
  the layers both finished).

Total wall time per model and mean relative reconstruction error ||W − Ŵ|| / ||W||.
Both libraries run with one BLAS thread by default (``--tl-threads``; see
onnxopt/decomp/_blas.py for why: a busy 2-core machine made 2-thread OpenBLAS 17× slower).
Paths are relative to the repository root (run from there).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import queue
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxopt.decomp import (  # noqa: E402
    blas_threads,
    conv_output_hw,
    cp4,
    cp_exact_rank_upper_bound,
    cp_macs,
    dense_conv_macs,
    select_rank,
    select_rank_pair,
    tucker2,
    tucker2_unfolding_singular_values,
    tucker_macs,
)
from onnxopt.decomp.tensorly_adapter import tensorly_version, tl_parafac, tl_partial_tucker  # noqa: E402

MODELS = ["resnet56_cifar10", "vgg_style_cifar10"]
MODEL_DIR = ROOT.parent / "shared" / "models"


@dataclass
class Layer:
    name: str
    W: np.ndarray
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    r_out: int = 0
    r_in: int = 0
    r_cp: int = 0


def _static_hw(vi) -> tuple[int, int] | None:
    dims = vi.type.tensor_type.shape.dim
    if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[2:]):
        return None
    return dims[2].dim_value, dims[3].dim_value


def load_dense_convs(path: Path) -> list[Layer]:
    model = onnx.load(str(path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shapes are only used for exact MAC counts
        pass
    g = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    weights[n.output[0]] = numpy_helper.to_array(a.t)
    shapes = {vi.name: _static_hw(vi) for vi in list(g.value_info) + list(g.input) + list(g.output)}
    layers = []
    for n in g.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in weights:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        W = weights[n.input[1]]
        if attrs.get("group", 1) != 1 or W.ndim != 4 or W.shape[2] * W.shape[3] <= 1:
            continue
        in_hw = shapes.get(n.input[0]) or (32, 32)
        out_hw = shapes.get(n.output[0]) or conv_output_hw(
            in_hw, W.shape[2:], attrs.get("strides", (1, 1)), attrs.get("pads", (0, 0, 0, 0)), attrs.get("dilations", (1, 1))
        )
        layers.append(Layer(n.name or n.output[0], W.astype(np.float64), in_hw, out_hw))
    return layers


def choose_ranks(layers: list[Layer]) -> None:
    for L in layers:
        F, C, kh, kw = L.W.shape
        s = tucker2_unfolding_singular_values(L.W)
        L.r_out, L.r_in = select_rank_pair(s, (F, C), energy=0.9, round_to=16)
        dense = dense_conv_macs(C, F, kh, kw, L.out_hw)
        budget = tucker_macs(C, F, kh, kw, L.r_out, L.r_in, L.out_hw, L.in_hw)
        L.r_cp = select_rank(
            None,
            cp_exact_rank_upper_bound(L.W),
            speedup=dense / budget,
            macs_for_rank=lambda r, C=C, F=F, kh=kh, kw=kw, L=L: cp_macs(C, F, kh, kw, r, L.out_hw, L.in_hw),
            original_macs=dense,
        )


def timed(fn, layers, repeat: int = 1):
    """(best total wall time of ``repeat`` runs, errors): the minimum filters out the
    noise of other processes on a shared machine."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        errs = [fn(L).rel_error for L in layers]
        best = min(best, time.perf_counter() - t0)
    return best, errs


def _parafac_child(weights_ranks, threads, out_q):
    tl_parafac(np.ones((2, 2, 2, 2)), 1, n_iter_max=1)  # import + warm-up, not timed
    with blas_threads(threads):
        for i, (W, r) in enumerate(weights_ranks):
            t0 = time.perf_counter()
            err = tl_parafac(W, r, random_state=0).rel_error
            out_q.put((i, time.perf_counter() - t0, err))
    out_q.put(None)


def tl_parafac_capped(layers: list[Layer], cap_s: float, threads: int | None):
    """(time, errors for the finished layers) — layers after the cap are skipped."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_parafac_child, args=([(L.W, L.r_cp) for L in layers], threads, q), daemon=True)
    proc.start()
    results: list[tuple[int, float, float]] = []
    spent = 0.0
    started = None
    while True:
        timeout = 600.0 if started is None else max(0.0, cap_s - spent - (time.perf_counter() - started)) + 0.5
        try:
            item = q.get(timeout=timeout)
        except queue.Empty:
            break
        if item is None:
            break
        results.append(item)
        spent += item[1]
        started = time.perf_counter()
        if spent >= cap_s:
            break
    if proc.is_alive():
        proc.terminate()
    proc.join()
    return spent, [e for _, _, e in results]


def fmt_row(cols, widths):
    return "  ".join(str(c).ljust(w) for c, w in zip(cols, widths))


def ablation(layers: list[Layer]) -> None:
    print("\nAblation (ours): Tucker-2 HOOI sweeps and CP start, same ranks as above")
    for n_iter in (0, 1, 2, 3, 5):
        t, e = timed(lambda L, n=n_iter: tucker2(L.W, L.r_out, L.r_in, n_iter=n, tol=0.0), layers, 3)
        print(f"  tucker2 n_iter={n_iter} (fixed): {t:7.3f} s  mean err {np.mean(e):.5f}")
    t, e = timed(lambda L: tucker2(L.W, L.r_out, L.r_in), layers, 3)
    print(f"  tucker2 default (early stop): {t:7.3f} s  mean err {np.mean(e):.5f}")
    for init, ls in (("slices", True), ("slices", False), ("hosvd", True)):
        for max_iter in (0, 25, 50, 100):
            if (init == "hosvd" or not ls) and max_iter == 0:
                continue
            t, e = timed(lambda L, i=init, m=max_iter, ls=ls: cp4(L.W, L.r_cp, max_iter=m, init=i, linesearch=ls), layers)
            print(f"  cp4 init={init:6s} linesearch={ls!s:5s} max_iter={max_iter:3d}: {t:7.3f} s  mean err {np.mean(e):.5f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--tl-cap", type=float, default=120.0, help="seconds of tensorly parafac per model")
    ap.add_argument("--ablation", action="store_true", help="also sweep HOOI iterations and CP starts")
    ap.add_argument(
        "--tl-threads",
        type=int,
        default=1,
        help="BLAS threads for tensorly (ours uses 1 by default; 0 = leave BLAS alone)",
    )
    args = ap.parse_args(argv)
    args.tl_threads = args.tl_threads or None

    import logging

    logging.basicConfig(level=logging.WARNING)
    print(
        f"numpy {np.__version__}, tensorly {tensorly_version()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, BLAS threads: ours 1, tensorly {args.tl_threads or 'default'}"
    )
    # warm-up: BLAS threads and tensorly's import are not part of the timings
    w = np.random.default_rng(0).standard_normal((8, 8, 3, 3))
    tucker2(w, 4, 4)
    cp4(w, 8)
    tl_partial_tucker(w, (4, 4))

    widths = [20, 7, 16, 9, 10, 34]
    header = ["model", "layers", "method", "time s", "mean err", "note"]
    rows = []
    for name in args.models:
        path = MODEL_DIR / f"{name}.onnx"
        if not path.exists():
            print(f"skip {name}: {path} not found")
            continue
        layers = load_dense_convs(path)
        choose_ranks(layers)
        n = len(layers)
        ratio = np.mean([L.r_cp for L in layers])
        print(
            f"{name}: {n} dense convs; Tucker ranks (out,in) e.g. "
            + ", ".join(f"{L.W.shape[:2]}→({L.r_out},{L.r_in})" for L in layers[:: max(1, n // 4)])
            + f"; mean CP rank {ratio:.0f}"
        )
        t_ours, e_ours = timed(lambda L: tucker2(L.W, L.r_out, L.r_in), layers, 3)
        with blas_threads(args.tl_threads):
            t_tl, e_tl = timed(lambda L: tl_partial_tucker(L.W, (L.r_out, L.r_in)), layers, 3)
        rows.append([name, n, "tucker2 (ours)", f"{t_ours:.3f}", f"{np.mean(e_ours):.5f}", ""])
        rows.append(["", n, "partial_tucker", f"{t_tl:.3f}", f"{np.mean(e_tl):.5f}", f"ours {t_tl / t_ours:.1f}x faster"])

        t0 = time.perf_counter()
        cps = [cp4(L.W, L.r_cp) for L in layers]
        t_cp = time.perf_counter() - t0
        e_cp = [c.rel_error for c in cps]
        iters = sum(c.iterations for c in cps)
        t_tlcp, e_tlcp = tl_parafac_capped(layers, args.tl_cap, args.tl_threads)
        done = len(e_tlcp)
        rows.append([name, n, "cp4 (ours)", f"{t_cp:.3f}", f"{np.mean(e_cp):.5f}", f"{iters} ALS sweeps in total"])
        note = "" if done == n else f"cap {args.tl_cap:.0f} s: {n - done} layers skipped"
        rows.append(["", done, "parafac", f"{t_tlcp:.3f}", f"{np.mean(e_tlcp):.5f}" if done else "-", note])
        if 0 < done < n:
            t_sub = timed(lambda L: cp4(L.W, L.r_cp), layers[:done])[0]
            rows.append(["", done, "cp4 same layers", f"{t_sub:.3f}", f"{np.mean(e_cp[:done]):.5f}", ""])
        if args.ablation:
            ablation(layers)

    print()
    print(fmt_row(header, widths))
    print(fmt_row(["-" * w for w in widths], widths))
    for r in rows:
        print(fmt_row(r, widths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
