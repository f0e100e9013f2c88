"""Moved: graph facts about inputs to :mod:`onnxopt.analysis.inputs`, sample streams to
:mod:`onnxopt.validate.sources`, data files and folders to :mod:`onnxopt.validate.data`."""

from __future__ import annotations

# TEMP-SHIM (lead removes): importers outside validate/bench still name this module.
from onnxopt.analysis.inputs import (  # noqa: F401  # TEMP-SHIM (lead removes)
    DEFAULT_SEQUENCE,
    InputInfo,
    detect_channels_last,
    model_inputs,
    parse_input_shapes,
    random_feeds,
    resolve_shapes,
)
from onnxopt.validate.data import IMAGE_SUFFIXES, list_images, open_data  # noqa: F401  # TEMP-SHIM (lead removes)
from onnxopt.validate.sources import (  # noqa: F401  # TEMP-SHIM (lead removes)
    Batch,
    DataSource,
    RandomSource,
    random_source,
)
