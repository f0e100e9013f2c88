"""Where a benchmark keeps outputs it can reuse between runs (models built, metrics)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(arg: str | None, name: str) -> Path:
    """``arg`` when given, else ``$XDG_CACHE_HOME/onnxopt/NAME`` (``~/.cache`` by default)."""
    if arg:
        return Path(arg)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "onnxopt" / name
