"""Numerical validation on onnxruntime: inputs and data, preprocessing, metrics, comparison.

Depends on onnxruntime (imported lazily, inside :mod:`onnxopt.runtime`) and is
never imported by passes. Importing this package is cheap: no onnxruntime, no Pillow.
"""

from __future__ import annotations

from onnxopt.validate.compare import CompareResult, CompareRow, compare_models, compare_providers
from onnxopt.validate.inputs import (
    Batch,
    DataSource,
    InputInfo,
    model_inputs,
    open_data,
    parse_input_shapes,
    random_source,
    resolve_shapes,
)
from onnxopt.validate.metrics import (
    MetricsAccumulator,
    OutputAccumulator,
    OutputMetrics,
    Tolerances,
    check_gate,
    compute_metrics,
    load_labels,
)
from onnxopt.validate.preprocess import (
    PRESETS,
    ImagePipeline,
    PreprocessSpec,
    image_pipeline,
    parse_preprocess,
)

__all__ = [
    "PRESETS",
    "Batch",
    "CompareResult",
    "CompareRow",
    "DataSource",
    "ImagePipeline",
    "InputInfo",
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
    "model_inputs",
    "open_data",
    "parse_input_shapes",
    "parse_preprocess",
    "random_source",
    "resolve_shapes",
]
