"""``onnxopt.search``: the ``auto`` search — enumerate, measure, select, verify, report.

Given a model, the ``auto`` pass's options, a :class:`~onnxopt.passbase.PassContext` whose
``evaluator`` scores and times candidate models, and the pass's report, :func:`run_search`
finds the fastest model within the evaluator's accuracy budget and returns it as a
``PassResult`` (the original, unchanged, when nothing beats it). It lives above the passes:
it builds every candidate with the plain passes through the pipeline, keeps a disk cache and
writes the pipeline config it found; ``passes/auto.py`` only states the options and hands
its model here (through ``context.search``, which the API sets).

Modules: ``engine`` (the phases in order), ``layers``, ``timing``, ``quant``,
``sensitivity``, ``select``, ``final``, ``recovery``, ``report``; shared by them: ``run`` (inputs and
journal), ``measure``, ``budget``, ``clock``, ``cache``, ``records``, ``specs``.
"""

from onnxopt.search.cache import default_cache_dir
from onnxopt.search.engine import run_search

__all__ = ["default_cache_dir", "run_search"]
