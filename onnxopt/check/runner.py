"""Runs the registered rules on one file, in their declared order.

A rule runs unless it is disabled or a rule it ``requires`` reported an error (disabling a
rule therefore also lifts the skips it causes). An unexpected exception in a rule becomes a
finding of that rule, never a crash. Findings are listed in rule order (stable within a rule).
"""

from __future__ import annotations

import logging
import os
import time
from typing import BinaryIO

import onnxopt.check.rules  # noqa: F401  (the rules register themselves)
from onnxopt.check.config import CheckConfig
from onnxopt.check.context import CheckRun, StopChecking
from onnxopt.check.findings import Finding, display_name
from onnxopt.check.loading import load
from onnxopt.check.registry import Step, ordered_steps, rule_table
from onnxopt.check.text import error_text
from onnxopt.errors import UsageError

logger = logging.getLogger(__name__)


def check_model_file(source: str | os.PathLike, config: CheckConfig | None = None, *,
                     stdin: BinaryIO | None = None) -> list[Finding]:
    """All findings for one model file (``"-"`` reads ``stdin``, default the process's stdin).

    Never raises for a bad model: every problem is a :class:`Finding`. Raises
    :class:`UsageError` only for bad configuration (e.g. an unreadable reference file).
    """
    config = config or CheckConfig()
    run = CheckRun(display_name(source), config)
    start = time.perf_counter()
    try:
        run.loaded = load(run, str(source), stdin)
        for step in ordered_steps():
            _run_step(run, step)
    except StopChecking:
        pass
    order = {rule: i for i, rule in enumerate(rule_table())}
    run.findings.sort(key=lambda f: order[f.rule])  # stable: a rule's own order is kept
    logger.debug("%s: checked in %.3f s (%s)", run.display, time.perf_counter() - start,
                 ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in run.timings.items() if v >= 0.001))
    return run.findings


def _run_step(run: CheckRun, step: Step) -> None:
    if step.check is None or not run.config.enabled(step.rule) or run.failed_rules & set(step.requires):
        return
    start = time.perf_counter()
    try:
        step.check(run)
    except (StopChecking, UsageError):
        raise
    except Exception as exc:
        logger.debug("rule %s raised", step.name, exc_info=True)
        run.add(step.rule, f"could not be checked: {type(exc).__name__}: {error_text(exc, 200)}")
    finally:
        run.timings[step.name] = time.perf_counter() - start
