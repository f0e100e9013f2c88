"""The rule set: rules register themselves, and the runner orders them from their declarations."""

from __future__ import annotations

import pytest

from onnxopt.check import RULES
from onnxopt.check.registry import Step, _topological, ordered_steps

# The order rules run and findings are listed in (and --list-rules prints).
RUN_ORDER = [
    "load-error", "size", "external-data", "ir-version", "opset-version", "checker", "shape-inference",
    "duplicate-names", "node-names", "input-shadowed", "unused-initializer", "non-finite-weights",
    "ort-session", "max-size", "max-params", "max-macs", "opset-range", "reference", "hints",
]


def test_the_rules_run_in_the_documented_order():
    assert list(RULES) == RUN_ORDER


def test_duplicate_node_names_are_judged_right_after_the_session():
    names = [step.name for step in ordered_steps()]
    assert names.index("duplicate-node-names") == names.index("ort-session") + 1
    assert names.index("reference") > names.index("duplicate-node-names")


def test_every_declared_dependency_runs_first():
    done: set[str] = set()
    for step in ordered_steps():
        assert set(step.requires) | set(step.after) <= done, step.name
        done.add(step.name)


def _step(name, requires=(), after=()):
    return Step(name, name, None, requires, after)


def test_dependencies_reorder_and_declaration_order_breaks_ties():
    steps = [_step("late", after=("b",)), _step("a"), _step("b", requires=("a",)), _step("c")]
    assert [s.name for s in _topological(steps)] == ["a", "b", "late", "c"]


@pytest.mark.parametrize(("steps", "message"), [
    ([_step("a", after=("missing",))], "unknown rule"),
    ([_step("a", after=("b",)), _step("b", requires=("a",))], "circle"),
])
def test_bad_declarations_are_refused(steps, message):
    with pytest.raises(ValueError, match=message):
        _topological(steps)
