"""A pipeline as data, and running it: passes in order, each timed, then the cleanup.

:class:`Pipeline` is the spec parsed once: a tuple of steps (pass class, typed options,
the spec it came from), built by :meth:`Pipeline.parse` from a spec string, a list of
:class:`~onnxopt.registry.PassSpec` or a config file, and validated whole before any
model is read. The API carries it from start to end instead of the spec text.

Cleanup (always, after the user's passes): remove unused nodes and initializers, then
sort topologically. The ONNX checker runs on the final protobuf (see ``onnxopt.api``)
because that is what gets written. A pass that raises stops the run with
:class:`~onnxopt.errors.PassFailed` naming the pass; the caller then writes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

from onnxopt.errors import OnnxoptError, PassFailed, UsageError
from onnxopt.passbase import OptimizerPass, PassContext
from onnxopt.registry import PassSpec, build_options, get, load_config, parse_spec
from onnxopt.report import PassReport
from onnxopt.runtime import one_line

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One pass of a pipeline: its class, its typed options and the spec it was built from."""

    spec: PassSpec
    pass_class: type[OptimizerPass]
    options: Any  # an instance of pass_class.Options

    @classmethod
    def from_spec(cls, spec: PassSpec) -> Step:
        pass_class = get(spec.name)
        return cls(spec, pass_class, build_options(pass_class, spec.options))

    def has_option(self, name: str) -> bool:
        options_cls = self.pass_class.Options
        return dataclasses.is_dataclass(options_cls) and name in {f.name for f in dataclasses.fields(options_cls)}

    def with_option(self, name: str, value: Any) -> Step:
        """The same step with one more option set (typed and checked like the spec's own)."""
        return Step.from_spec(PassSpec(self.spec.name, {**self.spec.options, name: value}))

    def uses_data(self) -> bool:
        return self.pass_class.uses_data(self.options)


@dataclass(frozen=True)
class Pipeline:
    """The passes to run, in order; every name and option already checked."""

    steps: tuple[Step, ...]

    @classmethod
    def from_specs(cls, specs: Sequence[PassSpec]) -> Pipeline:
        """All specs are validated (names, option names and values) before the pipeline exists."""
        return cls(tuple(Step.from_spec(spec) for spec in specs))

    @classmethod
    def parse(
        cls,
        passes: str | Sequence[PassSpec] | Pipeline | None = None,
        config: str | os.PathLike | None = None,
    ) -> Pipeline:
        """The pipeline from a spec string, a list of specs, or a config file (exactly one)."""
        if isinstance(passes, Pipeline) and config is None:
            return passes
        if passes is not None and config is not None:
            raise UsageError("give either --passes or --config, not both")
        if config is not None:
            return cls.from_specs(load_config(config))
        if passes is None or (isinstance(passes, str) and not passes.strip()):
            raise UsageError("give --passes or --config ('onnxopt passes' lists the passes)")
        return cls.from_specs(parse_spec(passes) if isinstance(passes, str) else list(passes))

    @property
    def specs(self) -> list[PassSpec]:
        return [step.spec for step in self.steps]

    @property
    def pass_classes(self) -> list[type[OptimizerPass]]:
        return [step.pass_class for step in self.steps]

    def uses_data(self) -> bool:
        """Whether any pass, as configured, reads calibration data."""
        return any(step.uses_data() for step in self.steps)

    def needs_evaluator(self) -> bool:
        """Whether a search pass (``auto``) is in it: it measures candidates."""
        return any(step.pass_class.needs_evaluator for step in self.steps)

    def instantiate(self, context: PassContext | None = None) -> list[OptimizerPass]:
        """Fresh pass objects (a pass keeps its report), sharing ``context``."""
        return [step.pass_class(step.options, context) for step in self.steps]

    def __str__(self) -> str:
        return ",".join(str(spec) for spec in self.specs)


def _reason(exc: BaseException) -> str:
    text = one_line(exc)
    return type(exc).__name__ if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"


def cleanup(model: ir.Model) -> ir.Model:
    for cleanup_pass in (RemoveUnusedNodesPass(), TopologicalSortPass()):
        try:
            model = cleanup_pass(model).model
        except Exception as exc:
            raise PassFailed(f"cleanup ({type(cleanup_pass).__name__})", _reason(exc)) from exc
    return model


def run_passes(
    model: ir.Model,
    passes: list[OptimizerPass],
    *,
    on_start: Callable[[OptimizerPass, int, int], None] | None = None,
) -> tuple[ir.Model, list[PassReport]]:
    """Apply ``passes`` in order, then cleanup. Returns the model and one report per pass.

    A pass that learns from the original (``needs_teacher``) gets the model as it entered
    here in ``context.teacher``, unless its caller set one.
    """
    handed = _hand_teacher(model, passes)
    reports = []
    try:
        for index, opt_pass in enumerate(passes):
            if on_start is not None:
                on_start(opt_pass, index, len(passes))
            logger.info("running pass %s", opt_pass.name)
            start = time.perf_counter()
            try:
                result = opt_pass(model)
            except OnnxoptError:
                raise
            except Exception as exc:
                raise PassFailed(opt_pass.name, _reason(exc)) from exc
            opt_pass.report.seconds = time.perf_counter() - start
            opt_pass.report.modified = bool(result.modified)
            model = result.model
            reports.append(opt_pass.report)
    finally:
        for context in handed:  # a context reused for another model must not keep this one's
            context.teacher = None
    return cleanup(model), reports


def _hand_teacher(model: ir.Model, passes: list[OptimizerPass]) -> list:
    """Set ``context.teacher`` of the passes that learn from the original; the contexts set."""
    teacher, handed = None, []
    for opt_pass in passes:
        if opt_pass.needs_teacher and opt_pass.context.teacher is None:
            teacher = teacher or ir.to_proto(model)  # serialized now: later passes change the model in place
            opt_pass.context.teacher = teacher
            handed.append(opt_pass.context)
    return handed
