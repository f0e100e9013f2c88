"""The validation gate of ``optimize``: the optimized model must match the original.

Default tolerances depend on what the pipeline contains (overridable with the same flags
as ``compare``):

* only lossless passes: relative L2 error ≤ 1e-4 per output;
* lossy passes, fp16 among them or not: cosine similarity ≥ 0.99 on every sample —
  ``fp16`` alone is held to cosine ≥ 0.999, since half precision alone loses about
  three decimal digits and no more. For classifiers, ``--min-agreement`` is usually the
  budget users mean; it is not a default because not every model is a classifier.

With ``--bench``, latency before/after is measured interleaved (A B A B …) in one process
on the first provider with one intra-op thread (a stable ratio), and ``min_speedup`` turns a ratio below it into a gate failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from onnxopt.validate.inputs import DataSource
from onnxopt.validate.metrics import Tolerances

logger = logging.getLogger(__name__)

LOSSLESS_TOLERANCES = Tolerances(max_rel_error=1e-4)
FP16_TOLERANCES = Tolerances(min_cosine=0.999)
LOSSY_TOLERANCES = Tolerances(min_cosine=0.99)


def default_tolerances(pass_classes: Sequence[type]) -> tuple[Tolerances, str]:
    """Tolerances for a pipeline, and a phrase saying why they were chosen."""
    lossy = [cls for cls in pass_classes if not cls.lossless]
    if not lossy:
        return LOSSLESS_TOLERANCES, "lossless passes only"
    if all(cls.name == "fp16" for cls in lossy):
        return FP16_TOLERANCES, "fp16 is the only lossy pass"
    return LOSSY_TOLERANCES, "lossy passes: " + ", ".join(sorted({cls.name for cls in lossy}))


@dataclass
class GateSettings:
    source: DataSource
    providers: list[str]
    tolerances: Tolerances
    tolerance_reason: str = "given on the command line"
    labels: Mapping[str, int] | None = None
    batch_size: int = 1
    bench: bool = False
    min_speedup: float | None = None
    bench_runs: int = 30
    notes: list[str] = field(default_factory=list)


@dataclass
class GateResult:
    passed: bool
    failures: list[str]
    report: dict[str, Any]
    benchmark: dict[str, Any] | None = None


def run_gate(
    original: bytes,
    optimized: bytes,
    settings: GateSettings,
    progress: Callable[[int, int], None] | None = None,
    optimized_config: Mapping[str, str] | None = None,
) -> GateResult:
    """Compare ``optimized`` with ``original`` (and time them with ``settings.bench``).

    ``optimized_config``: onnxruntime session config entries for the optimized model's
    accuracy runs — what its passes asked for (``PassReport.validate_with``); latency is
    always measured with the defaults, as the model runs here.
    """
    from onnxopt.validate.compare import compare_models

    result = compare_models(
        original, optimized, settings.source,
        providers=settings.providers, batch_size=settings.batch_size, labels=settings.labels,
        names=("original", "optimized"), progress=progress, candidate_config=optimized_config,
    )
    failures = result.failures(settings.tolerances)
    notes = [*settings.notes, *result.notes]
    if optimized_config:
        entries = ", ".join(f"{key}={value}" for key, value in sorted(optimized_config.items()))
        notes.append(f"the optimized model was validated with onnxruntime session config {entries}, "
                     "as its passes asked (its target computes so)")
    report = {
        "tolerances": settings.tolerances.to_dict(),
        "tolerance_reason": settings.tolerance_reason,
        **result.to_dict(),
        "notes": notes,
    }
    benchmark = None
    if settings.bench:
        benchmark = _bench(original, optimized, settings)
        speedup = benchmark["speedup"]
        if settings.min_speedup is not None and speedup < settings.min_speedup:
            failures.append(f"latency: speedup {speedup:.3f}× < min {settings.min_speedup:g}×")
    report["failures"] = failures
    report["passed"] = not failures
    return GateResult(passed=not failures, failures=failures, report=report, benchmark=benchmark)


def _bench(original: bytes, optimized: bytes, settings: GateSettings) -> dict[str, Any]:
    from onnxopt.bench.latency import bench_models

    batch = next(iter(settings.source.batches(settings.batch_size)))
    provider = settings.providers[0]
    # One intra-op thread: interleaved sessions with onnxruntime's default thread pools
    # disturb each other on a busy machine (identical models measured 2 ms vs 14 ms).
    result = bench_models(
        [original, optimized], batch.feeds, provider=provider, runs=settings.bench_runs,
        labels=["original", "optimized"], threads=1,
    )
    data = result.to_dict()
    speedup = result.speedup
    data["speedup"] = speedup
    data["provider"] = provider
    if speedup is not None and speedup < 1:
        data["warning"] = f"the optimized model is SLOWER than the original on {provider}: {speedup:.2f}×"
    return data
