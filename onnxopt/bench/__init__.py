"""Latency, memory and per-node profiling of ONNX models on onnxruntime.

``latency`` measures whole-model latency (one model, or an A/B comparison interleaved in
one process); ``profile`` attributes time to the graph's nodes with onnxruntime's
profiler, whose trace ``trace`` maps back onto the graph. They depend on onnxruntime only
(through ``onnxopt.runtime``), never on the passes.
"""

from __future__ import annotations
