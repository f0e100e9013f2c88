"""The search's time: its budget, the reserve kept for finishing, and where the seconds went.

Each phase stops adding measurements when the time left would not cover finishing: the
final builds, verifications and timing, estimated from the costs measured so far
(:class:`Costs`), and the share of the budget kept for recovering the final candidates.
Seconds are accounted to the innermost open phase (final timing, recovery and holdout
verification run inside the final choice); builds, scores and timed models are
counted per phase with their seconds. Every reading of the time goes through this
module's ``time`` (tests replace it with a fake clock).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from onnxopt.search.budget import BudgetFacts

logger = logging.getLogger(__name__)

# the phases of the report's time table, in order ("recovery", "final timing" and "holdout verification" run inside the
# final choice; each second is counted in the innermost phase)
PHASES = ("layer shapes", "original", "quantization baseline", "layer timing", "layer sensitivity", "search",
          "final candidates", "recovery", "final timing", "holdout verification")


class OutOfTime(Exception):
    """The time budget, less the reserve for finishing, is spent."""


@dataclass
class Costs:
    """Measured costs the reserve for finishing is estimated from (each written once known)."""

    whole_runs: int  # rounds per whole-model timing
    original_s: float | None = None  # the original's latency
    full_score_s: float = 0.0  # the slowest whole-split score so far
    quant_build_s: float = 0.0  # building the quantized final model (once layers are timed quantized)


class Clock:
    def __init__(self, budget_s: float | None, costs: Costs, facts: BudgetFacts):
        self.start = self.now()
        self.deadline = None if budget_s is None else self.start + float(budget_s)
        self.costs = costs
        self.facts = facts
        self.stopped: str | None = None  # why the search stopped early, once it did
        self.recovery_s = 0.0  # kept in reserve for recovering the final candidates (until they are)
        self.phase_seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.phase_counts: dict[str, dict[str, float]] = {}
        self._open: list[list] = []  # open phases: [name, seconds spent in nested phases]

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    def elapsed(self) -> float:
        return self.now() - self.start

    def time_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - self.now()

    def reserve(self) -> float:
        """Seconds to keep for finishing: final builds, recovery, verifications and timing."""
        if self.deadline is None:
            return 0.0
        costs = self.costs
        original = costs.original_s or 0.0
        final_latency = original * 4 * (costs.whole_runs + 4) + 2.0
        # before the first whole-split score, estimate one from the original's latency
        score = costs.full_score_s or 1.5 * original * (self.facts.search_samples or 100)
        return costs.quant_build_s + 3 * score + final_latency + self.recovery_s

    def spare(self) -> float:
        """Seconds left beyond the reserve."""
        return self.time_left() - self.reserve()

    def check(self, what: str) -> None:
        """Raise :class:`OutOfTime` when the time left does not cover the reserve."""
        if self.time_left() < self.reserve():
            if self.stopped is None:
                self.stopped = f"time budget reached during {what} after {self.elapsed():.0f}s"
                logger.info("auto: %s", self.stopped)
            raise OutOfTime(what)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Account the time spent inside to ``name``, less the time of phases nested in it."""
        self.phase_seconds.setdefault(name, 0.0)
        self._open.append([name, 0.0])
        started = self.now()
        try:
            yield
        finally:
            spent = self.now() - started
            _, nested = self._open.pop()
            self.phase_seconds[name] += spent - nested
            if self._open:
                self._open[-1][1] += spent

    def count(self, what: str, n: int, seconds: float) -> None:
        """Add ``n`` builds, scores or timed models and their seconds to the innermost phase."""
        name = self._open[-1][0] if self._open else "other"
        counts = self.phase_counts.setdefault(name, {})
        counts[what] = counts.get(what, 0) + n
        counts[f"{what}_s"] = counts.get(f"{what}_s", 0.0) + seconds

    def phase_table(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """{phase: seconds} and one row per phase: its seconds and share of the search, and how
        many models it built (passes run: calibration, decomposition, refit), scored and
        timed, with the seconds each took. Each second is counted once, in the innermost
        phase; "other" is the rest (cache, report)."""
        total = max(self.elapsed(), 1e-9)
        seconds = {name: round(value, 2) for name, value in self.phase_seconds.items()}
        seconds["other"] = round(max(0.0, total - sum(self.phase_seconds.values())), 2)
        rows = []
        for name, value in seconds.items():
            counts = self.phase_counts.get(name, {})
            row: dict[str, Any] = {"phase": name, "seconds": value, "share": round(value / total, 3)}
            for what in ("builds", "scores", "models_timed"):
                row[what] = counts.get(what, 0)
                row[f"{what}_s"] = round(counts.get(f"{what}_s", 0.0), 2)
            rows.append(row)
        return seconds, rows
