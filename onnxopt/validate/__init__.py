"""Numerical validation on onnxruntime: data sources, preprocessing, metrics, comparison.

What a graph says about its inputs (shapes, random feeds) is in :mod:`onnxopt.analysis.inputs`.

Depends on onnxruntime (imported lazily, inside :mod:`onnxopt.runtime`) and is
never imported by passes. Importing this package is cheap: no onnxruntime, no Pillow.
"""

from __future__ import annotations

from onnxopt.validate.compare import CompareResult, CompareRow, compare_models, compare_providers
from onnxopt.validate.data import load_labels, open_data
from onnxopt.validate.metrics import MetricsAccumulator, OutputAccumulator, compute_metrics
from onnxopt.validate.preprocess import (
    PRESETS,
    ImagePipeline,
    PreprocessSpec,
    image_pipeline,
    parse_preprocess,
)
from onnxopt.validate.sources import Batch, DataSource, random_source
from onnxopt.validate.tolerances import OutputMetrics, Tolerances, check_gate

__all__ = [
    "PRESETS",
    "Batch",
    "CompareResult",
    "CompareRow",
    "DataSource",
    "ImagePipeline",
    "MetricsAccumulator",
    "OutputAccumulator",
    "OutputMetrics",
    "PreprocessSpec",
    "Tolerances",
    "check_gate",
    "compare_models",
    "compare_providers",
    "compute_metrics",
    "image_pipeline",
    "load_labels",
    "open_data",
    "parse_preprocess",
    "random_source",
]
