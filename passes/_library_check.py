"""``library_check``: the ``int8`` pass is never worse than the library it wraps.

Plain ``quantize_static``'s model (per-channel MinMax, QDQ, the same op types, activation and
weight types, 8-bit weights, outputs quantized, no bias correction) is built from the MinMax
ranges of the pass's own calibration run and the same pre-processed model. Both models
and the float one run on the first 8 calibration samples; per output (a token output's real
positions only), the mean per-sample Pearson r and the worst per-channel Pearson r against
the float model (:mod:`._output_similarity`) decide, with a margin of 0.002 (:func:`library_is_better`), which
model the pass returns.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import onnx

from onnxopt.errors import OnnxoptError
from onnxopt.runtime import first_line

from . import _quant_common as qc
from ._output_similarity import Similarity, similarity

#: The library check compares on this many calibration samples ...
CHECK_SAMPLES = 8
#: ... and keeps plain quantize_static's model only when its score is higher by more than this.
CHECK_MARGIN = 0.002


def library_check(prepared: onnx.ModelProto, quantized: onnx.ModelProto,
                  build_library: Callable[[], onnx.ModelProto], probe: qc.Feeds,
                  samples: Callable[[], Iterable[qc.Feeds]], report) -> tuple[onnx.ModelProto, bool]:
    """(the model to keep, whether it is the library's): this pass's ``quantized``, or plain
    ``quantize_static``'s (``build_library()``) where that is closer to ``prepared``'s outputs."""
    figures = report.figures
    try:
        library = build_library()
        problem = qc.check_loads(library, probe)
    except OnnxoptError:
        raise
    except Exception as exc:  # the quantizer fails in many ways on unusual graphs
        problem = first_line(exc)
    if problem is not None:
        figures["library_check"] = f"not run: plain quantize_static's model failed ({problem})"
        return quantized, False

    feeds = list(itertools.islice(samples(), CHECK_SAMPLES))
    try:
        ours, theirs = similarity(prepared, [quantized, library], feeds, report.validate_with)
    except OnnxoptError:
        raise
    except Exception as exc:  # onnxruntime cannot run one of them
        figures["library_check"] = f"not run: {first_line(exc)}"
        return quantized, False
    keep_library = library_is_better(ours, theirs)
    figures["library_check"] = (
        f"{len(feeds)} calibration samples, mean r / worst channel r against FP32: this pass "
        f"{ours.describe()}, plain quantize_static (per-channel MinMax) {theirs.describe()}; kept "
        + ("plain quantize_static's model" if keep_library else "this pass's model"))
    figures["result"] = "plain quantize_static (per-channel MinMax)" if keep_library else "this pass"
    if not keep_library:
        return quantized, False
    report.warn(
        f"plain quantize_static's model was closer to FP32 on {len(feeds)} calibration samples "
        f"({theirs.describe()} against {ours.describe()}): kept it — this pass's settings (method, "
        "bias correction, reduce_range, float outputs) are not in the result")
    figures["float_outputs"] = 0
    figures.pop("quantized_outputs", None)
    if "bias_correction" in figures:
        figures["bias_correction"] = f"{figures['bias_correction']} (not in the kept model)"
    return library, True


def library_is_better(ours: Similarity, theirs: Similarity, margin: float = CHECK_MARGIN) -> bool:
    """Keep plain quantize_static's model? Not where this pass's is within ``margin`` of it on
    both figures (mean r, worst channel r); yes where the library's is within ``margin`` of
    this pass's on both (so better on one); where each wins one, the higher mean of the two."""
    pairs = ((ours.mean_r, theirs.mean_r), (ours.worst_channel_r, theirs.worst_channel_r))
    if all(a >= b - margin for a, b in pairs):
        return False
    if all(b >= a - margin for a, b in pairs):
        return True
    return theirs.score > ours.score
