"""Run two models (or one model on two providers) on the same data and measure the gap.

``onnxopt compare`` calls it directly and ``onnxopt optimize`` as its gate (original =
reference, optimized = candidate). Sessions are created once per (model, provider) through
:mod:`onnxopt.runtime`; each batch of the :class:`~onnxopt.validate.sources.DataSource` is
fed to every session and the outputs go straight into streaming accumulators
(:mod:`onnxopt.validate.metrics`), so memory stays at one batch of outputs. Feeds are cast
to each session's declared input type where it differs (a float16 candidate), with a note.
With ``self_check`` the reference runs the first batch twice and
``CompareResult.reference_self_difference`` holds, per output, the relative L2 difference of
the two runs (:mod:`onnxopt.validate.nondeterminism`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxopt.errors import InputError, UsageError
from onnxopt.runtime import first_line
from onnxopt.validate.metrics import MetricsAccumulator
from onnxopt.validate.nondeterminism import self_check_provider
from onnxopt.validate.sources import DataSource
from onnxopt.validate.tolerances import OutputMetrics, Tolerances, check_gate

logger = logging.getLogger(__name__)

ORT_INPUT_TYPES = {  # onnxruntime input type -> numpy dtype the feeds are cast to

    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


@dataclass
class CompareRow:
    """Metrics of one output of the candidate on ``provider`` against the reference on
    ``reference_provider``."""

    provider: str
    reference_provider: str
    metrics: OutputMetrics

    def to_dict(self) -> dict[str, object]:
        values = self.metrics.to_dict()
        output = values.pop("name")
        return {"provider": self.provider, "reference_provider": self.reference_provider, "output": output, **values}


@dataclass
class CompareResult:
    """What :func:`compare_models` / :func:`compare_providers` measured."""

    mode: str  # "models" or "providers"
    reference: str
    candidate: str
    providers: list[str]
    reference_provider: str | None
    source: str
    samples: int
    batch_size: int
    rows: list[CompareRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reference_self_difference: dict[str, float] | None = None  # with self_check: two runs of the reference

    @property
    def metrics(self) -> list[OutputMetrics]:
        return [row.metrics for row in self.rows]

    def _label(self, row: CompareRow) -> str:
        if self.mode == "providers":
            return f"{row.provider} vs {row.reference_provider}: "
        if len(self.providers) > 1:
            return f"{row.provider}: "
        return ""

    def failures(self, tolerances: Tolerances) -> list[str]:
        """One line per failing (provider, output, check); see :func:`check_gate`."""
        lines: list[str] = []
        for provider in self.providers:
            rows = [row for row in self.rows if row.provider == provider]
            if rows:
                prefix = self._label(rows[0])
                lines.extend(prefix + line for line in check_gate([r.metrics for r in rows], tolerances))
        return lines

    def to_dict(self) -> dict[str, object]:
        """JSON-able, stable keys; non-finite floats are the strings "inf", "-inf", "nan"."""
        return {
            "mode": self.mode,
            "reference": self.reference,
            "candidate": self.candidate,
            "reference_provider": self.reference_provider,
            "providers": list(self.providers),
            "source": self.source,
            "samples": self.samples,
            "batch_size": self.batch_size,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            "results": [row.to_dict() for row in self.rows],
        }


def _model_arg(model) -> bytes | str:
    if isinstance(model, bytes | bytearray):
        return bytes(model)
    if isinstance(model, str | os.PathLike):
        return os.fspath(model)
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    raise TypeError(f"expected model bytes, a path or an onnx.ModelProto, got {type(model).__name__}")


def _default_name(model, fallback: str) -> str:
    return os.fspath(model) if isinstance(model, str | os.PathLike) else fallback


class _Runner:
    """Sessions (created on first use, once) and one batch's outputs, per (slot, provider)."""

    def __init__(self, models: Mapping[str, bytes | str], labels: Mapping[str, str], threads: int | None,
                 configs: Mapping[str, Mapping[str, str]] | None = None):
        self.models = models
        self.labels = labels
        self.threads = threads
        self.configs = configs or {}  # per slot: onnxruntime session config entries
        self.sessions: dict[tuple[str, str], object] = {}
        self.casts: dict[tuple[str, str], dict[str, type]] = {}
        self.notes: list[str] = []
        import onnxruntime

        # Run errors become one InputError line: keep onnxruntime from also printing them.
        self.run_options = onnxruntime.RunOptions()
        self.run_options.log_severity_level = 4

    def session(self, slot: str, provider: str):
        key = (slot, provider)
        if key not in self.sessions:
            from onnxopt.runtime import create_session  # looked up per call: tests count sessions

            logger.debug("creating the %s session on %s", self.labels[slot], provider)
            session = create_session(self.models[slot], provider, threads=self.threads, config=self.configs.get(slot))
            self.sessions[key] = session
            self.casts[key] = {i.name: ORT_INPUT_TYPES[i.type] for i in session.get_inputs() if i.type in ORT_INPUT_TYPES}
        return self.sessions[key]

    def run(self, slot: str, provider: str, feeds: Mapping[str, np.ndarray], ids: Sequence[str]) -> dict[str, np.ndarray]:
        session = self.session(slot, provider)
        casts = self.casts[(slot, provider)]
        ready = {}
        for name, value in feeds.items():
            want = casts.get(name)
            if want is not None and value.dtype != want:
                note = f"{self.labels[slot]} input '{name}' is {np.dtype(want)}: feeds cast from {value.dtype}"
                if note not in self.notes:
                    self.notes.append(note)
                value = value.astype(want)
            ready[name] = value
        names = [o.name for o in session.get_outputs()]
        try:
            values = session.run(names, ready, self.run_options)
        except Exception as error:  # onnxruntime raises several unrelated types
            first = ids[0] if ids else "?"
            raise InputError(
                f"the {self.labels[slot]} failed on {provider} (batch starting at sample {first}): {first_line(error)}"
            ) from error
        return dict(zip(names, values, strict=True))


def _relative_difference(first: np.ndarray, second: np.ndarray) -> float:
    """Relative L2 difference of two runs' outputs (inf where NaN/Inf patterns or shapes differ)."""
    a = np.asarray(first)
    b = np.asarray(second)
    if a.shape != b.shape:
        return float("inf")
    if a.dtype.kind not in "fc":
        return 0.0 if np.array_equal(a, b) else float("inf")
    a, b = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)) or not np.array_equal(a[~finite], b[~finite], equal_nan=True):
        return float("inf")
    diff = float(np.linalg.norm(a[finite] - b[finite]))
    norm = float(np.linalg.norm(a[finite]))
    if diff == 0:
        return 0.0
    return diff / norm if norm > 0 else float("inf")


def _check_signatures(reference, candidate, source: DataSource) -> list[str]:
    """InputError when the two sessions' input or output names differ; the output names."""

    def names(items) -> list[str]:
        return [item.name for item in items]

    for kind, ref_names, cand_names in (
        ("inputs", names(reference.get_inputs()), names(candidate.get_inputs())),
        ("outputs", names(reference.get_outputs()), names(candidate.get_outputs())),
    ):
        if set(ref_names) != set(cand_names):
            only_ref = sorted(set(ref_names) - set(cand_names))
            only_cand = sorted(set(cand_names) - set(ref_names))
            raise InputError(
                f"the models have different {kind}: only in the reference {only_ref}, only in the candidate {only_cand}"
            )
    wanted = set(names(reference.get_inputs()))
    given = {info.name for info in source.inputs}
    if wanted != given:
        raise InputError(f"the data has inputs {sorted(given)} but the models take {sorted(wanted)}")
    return names(reference.get_outputs())


def _compare(
    mode: str,
    reference,
    candidate,
    source: DataSource,
    *,
    providers: Sequence[str],
    batch_size: int,
    labels: Mapping[str, int] | None,
    reference_provider: str | None,
    names: tuple[str, str],
    threads: int | None,
    progress: Callable[[int, int], None] | None,
    candidate_config: Mapping[str, str] | None = None,
    self_check: bool = False,
) -> CompareResult:
    providers = list(dict.fromkeys(providers))
    if not providers:
        raise UsageError("no provider to compare on")
    if len(source) == 0:
        raise InputError("no samples to compare on")
    same = reference is candidate
    models = {"ref": _model_arg(reference)}
    models["cand"] = models["ref"] if same else _model_arg(candidate)
    cand_slot = "ref" if same and not candidate_config else "cand"  # one session when nothing differs
    runner = _Runner(models, {"ref": "reference model", "cand": "candidate model"}, threads,
                     {"cand": candidate_config or {}})

    def ref_on(provider: str) -> str:
        return reference_provider or provider

    start = time.perf_counter()
    output_names = _check_signatures(
        runner.session("ref", ref_on(providers[0])), runner.session(cand_slot, providers[0]), source
    )
    effective = source.effective_batch_size(batch_size)
    accumulators = {p: MetricsAccumulator(output_names) for p in providers}
    total = len(source) - len(source) % effective if source.fixed_batch else len(source)
    done = 0
    self_difference: dict[str, float] | None = None
    for batch in source.batches(batch_size):
        outputs: dict[tuple[str, str], dict[str, np.ndarray]] = {}

        def run(slot: str, provider: str, batch=batch, outputs=outputs) -> dict[str, np.ndarray]:
            if (slot, provider) not in outputs:
                outputs[(slot, provider)] = runner.run(slot, provider, batch.feeds, batch.ids)
            return outputs[(slot, provider)]

        for provider in providers:
            accumulators[provider].update(
                run("ref", ref_on(provider)), run(cand_slot, provider), batch.ids, labels, batch.feeds
            )
        if self_check and self_difference is None:  # after the candidate: both drew once
            check_on = ref_on(self_check_provider(providers))  # the CPU: CUDA kernels may vary run to run
            first = run("ref", check_on)
            again = runner.run("ref", check_on, batch.feeds, batch.ids)
            self_difference = {name: _relative_difference(first[name], again[name]) for name in output_names}
        done += len(batch)
        if progress is not None:
            progress(done, total)

    result = CompareResult(
        mode=mode,
        reference=names[0],
        candidate=names[1],
        providers=providers,
        reference_provider=reference_provider,
        source=source.description,
        samples=done,
        batch_size=effective,
        seconds=time.perf_counter() - start,
        reference_self_difference=self_difference,
    )
    for provider in providers:
        for metrics in accumulators[provider].result():
            result.rows.append(CompareRow(provider, ref_on(provider), metrics))
    result.notes.extend(runner.notes)
    if labels:
        classifiers = [m for m in result.metrics if m.classifier]
        if not classifiers:
            result.notes.append("labels given, but no output is shaped [N, classes]: accuracy not measured")
        elif not any(m.labeled for m in classifiers):
            result.notes.append("labels given, but no sample id matched them (ids are image file names)")
        else:
            labeled = max(m.labeled for m in classifiers)
            if labeled < done:
                result.notes.append(f"accuracy over the {labeled} of {done} samples that have a label")
            for m in classifiers:
                if m.labels_out_of_range:
                    note = (f"output '{m.name}': {m.labels_out_of_range} label(s) are not among its "
                            f"classes: do the labels belong to this model?")
                    if note not in result.notes:
                        result.notes.append(note)
    for note in result.notes:
        logger.info("%s", note)
    return result


def compare_models(
    reference,
    candidate,
    source: DataSource,
    *,
    providers: Sequence[str] = ("cpu",),
    batch_size: int = 1,
    labels: Mapping[str, int] | None = None,
    reference_provider: str | None = None,
    names: tuple[str, str] | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    candidate_config: Mapping[str, str] | None = None,
    self_check: bool = False,
) -> CompareResult:
    """Compare ``candidate`` against ``reference`` (bytes, a path, or an onnx.ModelProto).

    Both run on every provider in ``providers`` — or the reference always on
    ``reference_provider`` when given — on the same batches of ``source``. ``labels``
    ({sample id: class}) add top-1/top-5 accuracy for [N, classes] outputs. ``names`` label
    the models in the result (default: their paths, or "reference"/"candidate");
    ``progress(done, total)`` is called after each batch. ``candidate_config``: onnxruntime
    session config entries for the candidate's sessions only (e.g. exact integer kernels).
    ``self_check``: run the reference twice on the first batch and record how far the two
    runs differ (``reference_self_difference``), on the CPU when it is among ``providers``
    (:func:`~onnxopt.validate.nondeterminism.self_check_provider`).

    Raises:
        InputError: the models' input or output names differ, the data does not fit them,
            onnxruntime cannot load or run a model, or a provider does not load.
    """
    names = names or (_default_name(reference, "reference"), _default_name(candidate, "candidate"))
    return _compare(
        "models", reference, candidate, source,
        providers=providers, batch_size=batch_size, labels=labels, reference_provider=reference_provider,
        names=names, threads=threads, progress=progress, candidate_config=candidate_config,
        self_check=self_check,
    )


def compare_providers(
    model,
    source: DataSource,
    providers: Sequence[str] = ("cpu", "cuda"),
    *,
    batch_size: int = 1,
    labels: Mapping[str, int] | None = None,
    name: str | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompareResult:
    """Compare one model across providers: the first is the reference, each other one a
    candidate. UsageError with fewer than two distinct providers."""
    providers = list(dict.fromkeys(providers))
    if len(providers) < 2:
        raise UsageError(f"comparing providers needs at least two, got {', '.join(providers) or 'none'}")
    label = name or _default_name(model, "model")
    return _compare(
        "providers", model, model, source,
        providers=providers[1:], batch_size=batch_size, labels=labels, reference_provider=providers[0],
        names=(label, label), threads=threads, progress=progress,
    )
