"""The rule set: rules register themselves here with their id, level and what they run after.

A rule is a function ``check(run)`` declared with :func:`rule`; it reports through
``run.add``. ``requires`` names rules whose *error* skips it (they run first: one root cause,
one finding, and onnxruntime is never handed a structurally broken graph); ``after`` names
steps that only have to run first. A rule without a function is reported while the file is
loaded (``load-error``, ``external-data``). :func:`follow_up` adds a later step to a rule
(duplicate node names are judged once onnxruntime has tried the model).

The run order is a topological order of these declarations; among steps that are ready,
the one declared first runs first, so the modules of :mod:`onnxopt.check.rules` declare
their rules in the order ``--list-rules`` shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from onnxopt.check.findings import ERROR, WARNING

Check = Callable[[Any], Any]


@dataclass(frozen=True)
class Step:
    """One function the runner calls; ``rule`` is the id its findings carry."""

    name: str
    rule: str
    check: Check | None
    requires: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """A rule as ``--list-rules`` shows it: id, default level, one-line summary."""

    id: str
    level: str
    summary: str


_RULES: dict[str, Rule] = {}
_STEPS: dict[str, Step] = {}
_derived: dict[str, Any] = {}  # the run order and the rule table, rebuilt after a registration


def _register(step: Step, new_rule: Rule | None = None) -> None:
    if step.name in _STEPS or (new_rule is not None and new_rule.id in _RULES):
        raise ValueError(f"check rule '{step.name}' is registered twice")
    if new_rule is not None:
        if new_rule.level not in (ERROR, WARNING):
            raise ValueError(f"check rule '{new_rule.id}': unknown level '{new_rule.level}'")
        _RULES[new_rule.id] = new_rule
    _STEPS[step.name] = step
    _derived.clear()


def rule(rule_id: str, level: str, summary: str, *, requires: tuple[str, ...] = (),
         after: tuple[str, ...] = ()) -> Callable[[Check], Check]:
    """Register the decorated ``check(run)`` as rule ``rule_id``."""

    def register(check: Check) -> Check:
        _register(Step(rule_id, rule_id, check, tuple(requires), tuple(after)), Rule(rule_id, level, summary))
        return check

    return register


def reported_while_loading(rule_id: str, level: str, summary: str) -> None:
    """Register a rule that loading reports (it has no function of its own)."""
    _register(Step(rule_id, rule_id, None), Rule(rule_id, level, summary))


def follow_up(name: str, rule_id: str, *, requires: tuple[str, ...] = (),
              after: tuple[str, ...] = ()) -> Callable[[Check], Check]:
    """Register the decorated ``check(run)`` as a later step of rule ``rule_id``."""

    def register(check: Check) -> Check:
        _register(Step(name, rule_id, check, tuple(requires), tuple(after)))
        return check

    return register


def ordered_steps() -> list[Step]:
    """Every step in run order: dependencies first, otherwise in declaration order."""
    if "order" not in _derived:
        _derived["order"] = _topological(list(_STEPS.values()))
    return _derived["order"]


def rule_table() -> dict[str, tuple[str, str]]:
    """id -> (level, summary), in run order (the caller must not change it)."""
    if "table" not in _derived:
        _derived["table"] = {s.name: (_RULES[s.name].level, _RULES[s.name].summary)
                             for s in ordered_steps() if s.name in _RULES}
    return _derived["table"]


def _topological(steps: list[Step]) -> list[Step]:
    position = {s.name: i for i, s in enumerate(steps)}
    waits_for: dict[str, set[str]] = {}
    for step in steps:
        needed = set(step.requires) | set(step.after)
        unknown = needed - position.keys()
        if unknown:
            raise ValueError(f"check rule '{step.name}' runs after unknown rule(s) {sorted(unknown)}")
        waits_for[step.name] = needed
    done: list[Step] = []
    pending = list(steps)
    while pending:
        ready = [s for s in pending if not waits_for[s.name] - {d.name for d in done}]
        if not ready:
            raise ValueError(f"check rules depend on each other in a circle: {[s.name for s in pending]}")
        step = min(ready, key=lambda s: position[s.name])
        done.append(step)
        pending.remove(step)
    return done
