"""Benchmark: activation-aware (whitened) ``svd`` against plain ``svd`` on a sentence-transformer
(issue 14 item 1, issue 15 item 3).

    python benchmarks/whiten.py [--energies 0.9,0.95,0.99] [--fractions 0.5]

``../shared/models/sequence/paraphrase_minilm_l3.onnx`` (3 BERT layers, width 384) on the
400 sentences of ``samples/sentences.txt``, tokenized by the model's ``tokenizer.json``
(padded and truncated to 128 tokens, through ``onnxopt.api.data_source``): sentences 0–99
calibrate (input statistics and refit, one sentence per batch, as ``onnxopt optimize
--data`` gives them), sentences 100–399 evaluate — disjoint. Per rank selector (``energy=E``,
and ``rank=F``, a fraction of each layer's full rank: the same MACs for every variant) three
variants: plain SVD + refit (``whiten=false:refit=true``), whitened without refit
(``whiten=true:refit=false``), whitened + refit (``whiten=true:refit=true``); ``round=16``
as by default. Columns: MatMuls decomposed, MACs vs FP32, mean and 1st-percentile cosine
of the sentence embedding (output ``461``) to FP32's, Spearman rank correlation of the
pairwise cosine similarities over the 300 evaluation sentences (44,850 pairs), the pass's
wall time. The same ``energy`` keeps output energy when whitened and weight energy when
not, so compare fidelity at equal MACs. onnxruntime on one thread for the evaluation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# the sequence benchmark's model, data and fidelity measures
from sequence import (  # noqa: E402
    CALIBRATION,
    EMBEDDING,
    EVAL_BATCH,
    MAX_LENGTH,
    MODEL,
    SENTENCES,
    TOKENIZER,
    pairwise_similarities,
    row_cosines,
    spearman,
)

from onnxopt import api, io  # noqa: E402
from onnxopt.passbase import PassContext  # noqa: E402
from onnxopt.runtime import create_session, first_line  # noqa: E402
from onnxopt.runtime.cpu import cpu_name  # noqa: E402

VARIANTS = (("plain + refit", "whiten=false:refit=true"),
            ("whitened", "whiten=true:refit=false"),
            ("whitened + refit", "whiten=true:refit=true"))


def embeddings(model, source) -> np.ndarray:
    session = create_session(model, "cpu", threads=1)
    rows = [session.run([EMBEDDING], batch.feeds)[0] for batch in source.batches(EVAL_BATCH)]
    return np.concatenate(rows).astype(np.float64)


def run_variant(proto, spec: str, calibration, evaluation, reference: np.ndarray, reference_pairs: np.ndarray) -> str:
    context = PassContext(calibration=lambda: (batch.feeds for batch in calibration.batches(1)),
                          calibration_description=calibration.description)
    started = time.perf_counter()
    try:
        model, report = api.optimize(proto, spec, context=context)
    except Exception as exc:  # noqa: BLE001 — a benchmark reports and goes on
        return f"FAILED: {type(exc).__name__}: {first_line(exc)}"
    seconds = time.perf_counter() - started
    svd = next(p for p in report.passes if p.name == "svd")
    before, after = report.before.get("macs"), report.after.get("macs")
    macs = f"{after / before:.3f}×" if before and after else "-"
    candidate = embeddings(model, evaluation)
    cosines = row_cosines(reference, candidate)
    rho = spearman(reference_pairs, pairwise_similarities(candidate))
    layers = f"{len(svd.applied)}/{len(svd.applied) + len(svd.skipped)}"
    return (f"{layers:>6} {macs:>7} {cosines.mean():>9.5f} {np.percentile(cosines, 1):>8.5f} {rho:>9.5f} "
            f"{seconds:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--energies", default="0.9,0.95,0.99")
    parser.add_argument("--fractions", default="0.5", help="rank=F selectors (fractions of the full rank)")
    args = parser.parse_args()
    selectors = [f"energy={e}" for e in args.energies.split(",") if e] + \
                [f"rank={f}" for f in args.fractions.split(",") if f]

    proto = io.load_proto(MODEL)
    data = api.data_source(proto, data=SENTENCES, preprocess=f"tokenizer={TOKENIZER} max_length={MAX_LENGTH}")
    calibration, evaluation = data.split(CALIBRATION)
    print(f"== whitened vs plain svd on paraphrase_minilm_l3 ({cpu_name()}; evaluation on 1 onnxruntime thread)")
    print(f"   calibration: {calibration.description}; evaluation: {evaluation.description} (disjoint)")
    reference = embeddings(proto, evaluation)
    reference_pairs = pairwise_similarities(reference)
    print(f"  {'selector':<12} {'variant':<17} {'layers':>6} {'MACs':>7} {'cos mean':>9} {'cos p1':>8} "
          f"{'spearman':>9} {'pass s':>7}")
    for selector in selectors:
        for label, options in VARIANTS:
            line = run_variant(proto, f"svd:{selector}:{options}", calibration, evaluation, reference, reference_pairs)
            print(f"  {selector:<12} {label:<17} {line}", flush=True)


if __name__ == "__main__":
    main()
