"""The plain pass specs every model of the search is built with.

One decomposition pass per (method, level) with ``include=`` its layers (escaped names),
``energy=`` the level and ``round=`` the rank rounding (not for ``separable``), ``refit``
when asked; then the quantization pass with ``exclude=`` the layers it leaves in float (and
``keep_float=`` where the baseline needed it). The
pipeline config ``auto`` saves is exactly these specs, so re-running it rebuilds the result.
"""

from __future__ import annotations

from typing import Any

from onnxopt.passes.auto import ALL_METHODS, AutoOptions
from onnxopt.registry import PassSpec
from onnxopt.search.records import Candidate, Layer


def decomposition_options(options: AutoOptions, rounding: int, candidate: Candidate, layers: list[Layer],
                          tiny: bool = False) -> dict[str, Any]:
    """Options of ``candidate``'s decomposition pass applied to ``layers`` (``tiny``: a
    single-layer model, timed without refit)."""
    out: dict[str, Any] = {"include": tuple(layer.escaped for layer in layers), "energy": candidate.level}
    if candidate.method != "separable":
        out["round"] = rounding
    if options.refit and not tiny:
        out["refit"] = True
    return out


def decomposition_specs(options: AutoOptions, rounding: int, selection: list[Candidate]) -> list[PassSpec]:
    """One decomposition pass per (method, level), with include= its layers; sorted."""
    groups: dict[tuple[str, float], list[Candidate]] = {}
    for candidate in selection:
        groups.setdefault((candidate.method, candidate.level), []).append(candidate)
    specs = []
    for (method, level) in sorted(groups, key=lambda k: (ALL_METHODS.index(k[0]), k[1])):
        members = sorted(groups[(method, level)], key=lambda c: c.layer.name)
        specs.append(PassSpec(method, decomposition_options(options, rounding, members[0],
                                                            [c.layer for c in members])))
    return specs


def quantization_spec(quantize: str, exclude: tuple[str, ...] = (), options: dict | None = None) -> PassSpec:
    """The quantization pass (``int8`` or ``fp16``) with its defaults and ``options``, leaving
    ``exclude`` in float."""
    return PassSpec(quantize, {**(options or {}), **({"exclude": tuple(exclude)} if exclude else {})})
