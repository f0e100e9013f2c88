"""The search's measurement cache on disk, and the hashes its keys are made of.

Two JSON tables in the cache folder: ``latency.json`` (per-layer and whole-model latencies,
keyed by weight or model hash, method, level, rounding, input shape, domain, target,
threads, onnxruntime version and CPU) and ``<model hash>.json`` (sensitivities and scores of
combined models, keyed by model hash and the evaluator's data fingerprint). Tables are read
once, and on save merged with what is on disk and written atomically; a problem writing is
a warning, never an error. The folder defaults to ``$XDG_CACHE_HOME/onnxopt/auto``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.errors import OnnxoptError

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxopt" / "auto"


def digest(*parts: Any) -> str:
    """A short stable hash of bytes, arrays (dtype, shape and data) and JSON-able values."""
    hasher = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes | bytearray):
            hasher.update(part)
        elif isinstance(part, np.ndarray):
            hasher.update(str(part.dtype).encode() + str(part.shape).encode())
            hasher.update(np.ascontiguousarray(part).tobytes())
        else:
            hasher.update(json.dumps(part, sort_keys=True, default=str).encode())
        hasher.update(b"\x00")
    return hasher.hexdigest()[:32]


def jsonable(options: dict[str, Any]) -> dict[str, Any]:
    """Pass options as JSON values (tuples as lists), sorted: part of cache keys."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(options.items())}


class MeasurementCache:
    """JSON tables on disk (``latency`` and ``model``), merged on write; ``folder=None`` disables it."""

    def __init__(self, folder: Path | None, model_hash: str):
        self.folder = folder
        self.files = {} if folder is None else {
            "latency": folder / "latency.json",
            "model": folder / f"{model_hash[:24]}.json",
        }
        self.tables: dict[str, dict[str, Any]] = {"latency": {}, "model": {}}
        self.dirty: dict[str, dict[str, Any]] = {"latency": {}, "model": {}}
        self.hits = 0
        self.misses = 0
        for table, path in self.files.items():
            self.tables[table] = self._read(path)

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, table: str, key: str | None) -> Any:
        if self.folder is None or key is None:
            return None
        value = self.tables[table].get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, table: str, key: str | None, value: Any) -> None:
        if self.folder is None or key is None:
            return
        self.tables[table][key] = value
        self.dirty[table][key] = value

    def save(self) -> str | None:
        """Write what changed; a problem is returned as a warning, never raised."""
        if self.folder is None:
            return None
        from onnxopt.io import write_text_atomic

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for table, path in self.files.items():
                if not self.dirty[table]:
                    continue
                entries = self._read(path)
                entries.update(self.dirty[table])
                write_text_atomic(path, json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1))
                self.dirty[table] = {}
        except (OSError, OnnxoptError) as exc:
            return f"cache not written: {exc}"
        return None
