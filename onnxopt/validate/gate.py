"""The validation gate of ``optimize``: the optimized model must match the original.

Default tolerances (:func:`default_tolerances`) depend on the pipeline and the inputs; any
``compare`` tolerance flag replaces the whole default:

* only lossless passes: relative L2 error ≤ 1e-4 per output;
* ``fp16`` the only lossy pass: worst-sample cosine ≥ 0.999, attribute channels ≥ 0.999;
* other lossy passes with ``--data``: 5th-percentile cosine ≥ 0.98, attribute channels of a
  detection-like output ≥ 0.99, embedding outputs' pairwise Spearman ≥ 0.99;
* other lossy passes on random inputs: the same statistics ≥ 0.95 and no Spearman bound
  (random inputs only catch gross breakage; a refusal says to add ``--data``).

An integer output that differs fails whatever the tolerances. The bounds come from
``benchmarks/gate_defaults.py`` and ``benchmarks/sequence_gate.py`` (``benchmarks/RESULTS.md``).
The original first runs twice on one batch: a model with random operators is judged with
them seeded, or refused (:mod:`onnxopt.validate.nondeterminism`). With ``--bench``, latency
is measured interleaved with one intra-op thread; ``min_speedup`` fails a lower ratio.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from onnxopt.validate.sources import DataSource
from onnxopt.validate.tolerances import Tolerances

logger = logging.getLogger(__name__)

LOSSLESS_TOLERANCES = Tolerances(max_rel_error=1e-4)
FP16_TOLERANCES = Tolerances(min_cosine=0.999, min_channel_cosine=0.999)
LOSSY_DATA_TOLERANCES = Tolerances(min_cosine_p5=0.98, min_channel_cosine=0.99, min_pairwise_spearman=0.99)
LOSSY_RANDOM_TOLERANCES = Tolerances(min_cosine_p5=0.95, min_channel_cosine=0.95)
#: The search budget of ``auto`` when none is given (``api.prepare_context``): a
#: worst-sample bound, which its subset shortcuts rely on. Not a default of the gate.
LOSSY_TOLERANCES = Tolerances(min_cosine=0.99)
RANDOM_HINT = "the inputs were random: add --data DIR with real inputs for a verdict on accuracy"


def default_tolerances(pass_classes: Sequence[type], has_data: bool = True) -> tuple[Tolerances, str]:
    """Tolerances for a pipeline, and a phrase saying why they were chosen.

    ``has_data``: the gate runs on real samples (``--data``) rather than random inputs;
    only the lossy default depends on it.
    """
    lossy = [cls for cls in pass_classes if not cls.lossless]
    if not lossy:
        return LOSSLESS_TOLERANCES, "lossless passes only"
    if all(cls.name == "fp16" for cls in lossy):
        return FP16_TOLERANCES, "fp16 is the only lossy pass"
    names = ", ".join(sorted({cls.name for cls in lossy}))
    if has_data:
        return LOSSY_DATA_TOLERANCES, f"lossy passes: {names}"
    return LOSSY_RANDOM_TOLERANCES, f"lossy passes: {names}; random inputs (catches gross breakage only)"


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
    has_data: bool = True  # real samples (--data), not random inputs: a refusal's hint depends on it


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

    def compare(reference: bytes, candidate: bytes, self_check: bool):
        return compare_models(
            reference, candidate, settings.source,
            providers=settings.providers, batch_size=settings.batch_size, labels=settings.labels,
            names=("original", "optimized"), progress=progress, candidate_config=optimized_config,
            self_check=self_check,
        )

    result = compare(original, optimized, self_check=True)
    refusal, seeded, random_note = _randomness(original, optimized, settings, result)
    if seeded is not None:
        result = compare(*seeded, self_check=False)
    failures = [refusal] if refusal else result.failures(settings.tolerances)
    notes = [*settings.notes, *result.notes, *([random_note] if random_note else [])]
    hint = _hint(failures, settings, refusal is not None)
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
    if hint and failures:
        report["hint"] = hint
    return GateResult(passed=not failures, failures=failures, report=report, benchmark=benchmark)


def _hint(failures: list[str], settings: GateSettings, refused: bool) -> str | None:
    """What would change a failed verdict, in one phrase (for the command's error line)."""
    if not failures or refused:
        return None
    lossless = settings.tolerances == LOSSLESS_TOLERANCES
    if not settings.has_data and not lossless:
        return RANDOM_HINT
    given = not settings.tolerance_reason.startswith("default")
    if given and settings.tolerances.min_cosine is not None and any("(worst sample;" in line for line in failures):
        return "--min-cosine bounds every sample; the report has the 5th-percentile and mean cosine"
    return "the report (--report FILE) has every metric"


def _randomness(
    original: bytes, optimized: bytes, settings: GateSettings, result
) -> tuple[str | None, tuple[bytes, bytes] | None, str | None]:
    """When the original disagrees with itself: (refusal, None, note) or (None, seeded
    copies of both models to judge instead, note); (None, None, None) when it agrees.

    Never a verdict on noise: the seeded copies are used only after two new sessions of
    the seeded original agreed on the first batch and a copy with another seed did not.
    """
    from onnxopt.validate import nondeterminism as nd

    differences = result.reference_self_difference or {}
    worst_name = max(differences, key=lambda name: differences[name], default=None)
    if worst_name is None or not differences[worst_name] > nd.SELF_TOLERANCE:
        return None, None, None
    import onnx

    from onnxopt.validate.compare import compare_models

    worst = differences[worst_name]
    check_on = nd.self_check_provider(settings.providers)
    said = f"the original model gives different outputs on two runs of the same inputs on {check_on} " \
           f"(relative difference {worst:.3g} on output '{worst_name}')"
    ops = nd.random_ops(onnx.load_from_string(original))
    if not ops:  # nondeterministic kernels, perhaps: the cause is unknown, a refusal could refuse a good model
        note = (f"{said} and has no known random operator: judged as usual, but the metrics include that "
                "difference (compare the outputs of the original with itself to find the cause)")
        logger.warning("%s", note)
        return None, None, note
    named = f"random ops: {nd.describe(ops)}"
    unseedable = [op for op in ops if not op.seedable]
    if unseedable:
        return (f"{said}; {named}; {nd.describe(unseedable)} cannot be seeded: no verdict on noise "
                "(give the ops a seed in the export, or use --no-validate)", None, f"{said}; {named}")
    proto = onnx.load_from_string(original)
    seeded_original = nd.seed_random_ops(proto).SerializeToString()
    seeded_optimized = nd.seed_random_ops(onnx.load_from_string(optimized)).SerializeToString()
    first = settings.source.subset(0, settings.source.effective_batch_size(settings.batch_size))

    def difference(a: bytes, b: bytes | bytearray) -> float:
        check = compare_models(a, b, first, providers=[check_on], batch_size=settings.batch_size)
        return max((math.inf if m.nonfinite_mismatch or m.rel_l2_error is None else m.rel_l2_error)
                   for m in check.metrics)

    # The seed must hold (two new sessions agree) and be honoured (another seed differs):
    # onnxruntime's default seeds can also agree between sessions by chance.
    # bytearray: a second object, so two sessions (bytes(x) is x, and compare_models runs one model given
    # twice as the same object in one session, which agrees with itself whatever the seed does)
    if not difference(seeded_original, bytearray(seeded_original)) <= nd.SELF_TOLERANCE:
        return (f"{said}; {named}; with seed={nd.SEED:g} it still does: no verdict on noise", None,
                f"{said}; {named}")
    other_seed = nd.seed_random_ops(proto, nd.OTHER_SEED).SerializeToString()
    if not difference(seeded_original, other_seed) > nd.SELF_TOLERANCE:
        return (f"{said}; {named}; its random ops ignore their seed attribute: no verdict on noise", None,
                f"{said}; {named}")
    note = (f"{said}; {named}: both models were judged with these ops seeded (seed={nd.SEED:g} on copies), "
            "so that they draw the same numbers")
    logger.warning("%s", note)
    return None, (seeded_original, seeded_optimized), note


def _bench(original: bytes, optimized: bytes, settings: GateSettings) -> dict[str, Any]:
    from onnxopt.bench.latency import bench_models

    batch = next(iter(settings.source.batches(settings.batch_size)))
    provider = settings.providers[0]
    # One intra-op thread: interleaved sessions with onnxruntime's default thread pools
    # disturb each other on a busy machine.
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
