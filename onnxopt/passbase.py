"""The contract every onnxopt pass follows, on top of onnx_ir's pass infrastructure.

A pass is an ``onnx_ir`` pass (``InPlacePass`` for graph surgery, ``FunctionalPass`` for
passes that round-trip through protobuf tools such as onnxsim or onnxruntime.quantization)
mixed with :class:`OptimizerPass`, which adds:

* ``name`` (short CLI name), ``aliases``, a one-line ``summary``;
* ``Options``: a frozen dataclass whose fields carry their help text in
  ``metadata["help"]`` (use :func:`option`); the same dataclass types the CLI spec,
  config files and ``onnxopt passes``;
* a capability line: ``lossless``, ``needs_data`` (calibration data), ``providers``;
* ``self.report``: a :class:`~onnxopt.report.PassReport` the pass fills while it works.

Passes get calibration data and progress callbacks through :class:`PassContext`; they
never import ``onnxopt.validate`` or ``onnxopt.bench``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    import onnx

from onnxopt.report import PassReport

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with help text, for pass ``Options``."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class NoOptions:
    """For passes without options."""


@dataclass
class CandidateScore:
    """How a candidate model did against the original on one data split."""

    passed: bool  # within the budget (the tolerances of the validation gate)
    value: float  # the budgeted metric, larger is better (agreement, cosine, or −rel. error)
    metric: str  # its name, e.g. "top1_agreement"
    failures: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class CandidateEvaluator(Protocol):
    """Measurement services for search passes (``auto``), provided by the caller.

    Passes never import ``onnxopt.validate``/``onnxopt.bench``; the API builds an
    implementation (``onnxopt.validate.evaluator``) and hands it over in the context.
    ``search`` data is the calibration part of ``--data``; ``holdout`` is the disjoint
    evaluation part the final answer is checked on.

    Optional extras a search pass uses when present (``SplitEvaluator`` has them all):
    ``score(..., limit=N)`` (first N samples only, for quick sensitivities),
    ``latency(..., statistic="min")``, ``describe_splits()`` (for the report),
    ``data_fingerprint`` (part of cache keys), ``tolerances`` and ``threads``.
    """

    target: str  # provider the latency is measured on: "cpu" or "cuda"

    def score(self, model: onnx.ModelProto, split: Literal["search", "holdout"] = "search") -> CandidateScore: ...

    def latency(self, models: list[onnx.ModelProto], runs: int | None = None) -> list[float]:
        """Median seconds per run of each model, measured interleaved in one process."""
        ...


@dataclass
class PassContext:
    """What the caller provides to passes beyond the model.

    ``calibration`` returns a fresh iterator of input batches each time it is called, so
    a pass can stream the data several times without holding it in memory.
    ``progress(message, done, total)`` reports long work (no-op by default).
    """

    calibration: Callable[[], Iterator[Feeds]] | None = None
    calibration_description: str | None = None
    progress: Callable[[str, int, int], None] = lambda message, done, total: None
    jobs: int = 1
    providers: tuple[str, ...] = ("cpu",)
    evaluator: CandidateEvaluator | None = None
    # search(model, options, context, report) -> PassResult: the engine behind a search pass (``auto``);
    # set by the API (onnxopt.search lives above the passes, which never import it)
    search: Callable[..., Any] | None = None
    # teacher: the model as it entered the pipeline (onnx.ModelProto), for passes that learn from it
    # (recover); set by the pipeline when such a pass runs
    teacher: Any = None
    time_budget: float | None = None  # seconds a search pass may spend
    save_config: str | None = None  # where a search pass writes the plain pipeline it found
    input_shapes: dict[str, tuple[int, ...]] | None = None  # --input-shape: concrete shapes the user gave
    # random_inputs(count): seeded one-sample feeds the model can take, derived from its graph (token ids
    # inside their embedding table, masks of ones, recurrent state zeros); set by the API
    random_inputs: Callable[[int], Iterator[Feeds]] | None = None

    def calibration_batches(self) -> Iterable[Feeds]:
        if self.calibration is None:
            return iter(())
        return self.calibration()


class OptimizerPass:
    """Mixin giving an ``onnx_ir`` pass a name, typed options, a capability line and a report."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    lossless: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False
    optional_data: ClassVar[bool] = False  # uses calibration data when given (e.g. refit)
    needs_teacher: ClassVar[bool] = False  # learns from the model as it entered the pipeline (context.teacher)
    needs_evaluator: ClassVar[bool] = False  # a search pass: measures candidates (see CandidateEvaluator)
    providers: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(self, options: Any = None, context: PassContext | None = None):
        self.options = options if options is not None else self.Options()
        self.context = context if context is not None else PassContext()
        self.report = PassReport(self.name, options=dataclasses.asdict(self.options))

    @classmethod
    def uses_data(cls, options: Any) -> bool:
        """Whether this configuration reads calibration data (e.g. ``refit=true``)."""
        return cls.needs_data

    @classmethod
    def capability(cls) -> str:
        parts = ["lossless" if cls.lossless else "lossy"]
        if cls.needs_data:
            parts.append("needs calibration data")
        else:
            parts.append("calibration data optional" if cls.optional_data else "no data needed")
        parts.append("targets " + "/".join(cls.providers))
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"
