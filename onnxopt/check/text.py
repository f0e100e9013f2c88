"""How findings word numbers, names and errors (one line each)."""

from __future__ import annotations

import re

from onnxopt.runtime import one_line

# onnxruntime wraps a load failure as "Load model from <path> failed: <reason>"; the path is
# already the finding's path.
_LOAD_MODEL_FAILED = re.compile(r"Load model from \S+ failed:\s*")


def error_text(error: BaseException | str, limit: int = 300) -> str:
    """An error as one line for a finding, every line kept (a checker's context line names
    the node at fault)."""
    return one_line(_LOAD_MODEL_FAILED.sub("", str(error)), limit)


def human_bytes(value: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value} B"


def human_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def quoted_names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
