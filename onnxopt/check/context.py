"""What a rule sees: the loaded file, the config, the findings so far and shared facts.

Facts that several rules use are computed once per file: the onnxruntime session
(``ort-session`` creates it, ``reference`` runs it) and the MAC counts (``max-macs`` and
``hints``), which are counted only when one of them asks.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxopt.check.findings import ERROR, WARNING, Finding
from onnxopt.check.registry import rule_table
from onnxopt.check.text import error_text

if TYPE_CHECKING:
    import onnx

    from onnxopt.check.config import CheckConfig

logger = logging.getLogger(__name__)

# Rules whose error means the graph is not one onnxruntime (or MAC counting) should see.
STRUCTURE = ("ir-version", "opset-version", "checker")


class StopChecking(Exception):
    """A finding after which nothing else can be checked in this file."""


@dataclass
class Loaded:
    """The model of one file, with its external data loaded."""

    path: str  # as displayed
    source: Path | None  # None for stdin
    data: bytes | None  # the raw bytes (kept for stdin: onnxruntime gets them directly)
    model: onnx.ModelProto
    size_on_disk: int
    external: bool


@functools.cache
def ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


class CheckRun:
    """The checks of one file: findings, failed rules and the facts rules share."""

    def __init__(self, display: str, config: CheckConfig):
        self.display = display
        self.config = config
        self.findings: list[Finding] = []
        self.failed_rules: set[str] = set()
        self.timings: dict[str, float] = {}
        self.loaded: Loaded | None = None
        self.session: Any = None  # the onnxruntime session ort-session created, if any
        self.session_tried = False  # ort-session ran (whether or not the session loaded)
        self.node_name_duplicates: list[Any] = []  # found by duplicate-names, judged after ort-session
        self._costs: Any = None
        self._costs_counted = False

    @property
    def model(self) -> onnx.ModelProto:
        assert self.loaded is not None
        return self.loaded.model

    def add(self, rule: str, message: str, level: str | None = None) -> None:
        """Record a finding; a disabled rule's findings are dropped (a blocking one, such as
        ``load-error``, still ends the checks of the file)."""
        if not self.config.enabled(rule):
            logger.info("%s: %s (rule %s disabled)", self.display, message, rule)
            return
        level = level or rule_table()[rule][0]
        self.findings.append(Finding(self.display, level, rule, " ".join(message.split())))
        if level == ERROR:
            self.failed_rules.add(rule)

    def structure_failed(self) -> bool:
        return bool(self.failed_rules & set(STRUCTURE))

    def costs(self):
        """MACs and parameters per node (:func:`onnxopt.analysis.node_costs`), counted once;
        None where the structure rules failed or counting failed (reported as a warning)."""
        if not self._costs_counted:
            self._costs_counted = True
            self._costs = None if self.structure_failed() else self._count_costs()
        return self._costs

    def _count_costs(self):
        from onnxopt.analysis import node_costs

        start = time.perf_counter()
        try:
            return node_costs(self.model)
        except Exception as exc:
            logger.debug("node costs failed", exc_info=True)
            rule = "max-macs" if self.config.max_macs is not None else "hints"
            self.add(rule, f"cannot count MACs: {type(exc).__name__}: {error_text(exc, 200)}", WARNING)
            return None
        finally:
            self.timings["mac-count"] = time.perf_counter() - start
