"""Shared CLI plumbing: logging flags, consoles, stdout protection, JSON output.

Output discipline (shell pipelines depend on it): results go to stdout — a model's bytes
with ``-o -``, or JSON with ``--json``, or tables — and everything else (logs, progress,
warnings, the report table when stdout carries data) goes to stderr.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from onnxopt.report import json_text

EXIT_CODES_HELP = """
\b
Exit codes:
  0  success
  1  a validation gate or a check failed (nothing written unless --force)
  2  usage error, or unreadable / invalid input
  3  a pass failed unexpectedly, or an internal error (nothing written)
"""


def _configure_logging(verbose: int, quiet: bool, debug: bool) -> None:
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif debug or verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("onnxopt").setLevel(level)


def verbosity_options(func):
    """``-v``, ``-q`` and ``--debug`` on every command (``--debug`` also shows tracebacks)."""

    @click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
    @click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no tables or progress.")
    @click.option("--debug", is_flag=True, help="Debug logs, and full tracebacks on errors.")
    @functools.wraps(func)
    def wrapper(*args, verbose: int, quiet: bool, debug: bool, **kwargs):
        _configure_logging(verbose, quiet, debug)
        ctx = click.get_current_context()
        ctx.meta["onnxopt.quiet"] = quiet
        return func(*args, **kwargs)

    return wrapper


def is_quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get("onnxopt.quiet"))


@functools.cache
def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def stdout_console():
    from rich.console import Console

    return Console(file=sys.stdout)


def note(message: str) -> None:
    """A one-line note on stderr (not with --quiet)."""
    if not is_quiet():
        stderr_console().print(f"note: {message}", markup=False, highlight=False)


def table_console():
    """The stdout console for result tables; wide when stdout is not a terminal.

    rich sizes tables to 80 columns when writing to a pipe or a file, which cuts long
    model paths and node names; a file should hold whole rows instead.
    """
    console = stdout_console()
    if not console.is_terminal:
        console.width = max(console.width, 200)
    return console


def emit_json(data: Any, stream=None) -> None:
    stream = stream if stream is not None else sys.stdout
    stream.write(json_text(data))
    stream.flush()


@contextlib.contextmanager
def reserved_stdout() -> Iterator[Any]:
    """Keep stdout for the model bytes: while inside, fd 1 and ``sys.stdout`` go to stderr.

    Native libraries (onnxruntime, onnxsim) can print to fd 1 directly, so the redirect is
    done at the file-descriptor level. Yields a binary stream writing to the real stdout.
    """
    sys.stdout.flush()
    saved_fd = os.dup(1)
    saved_sys_stdout = sys.stdout
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    real_stdout = os.fdopen(os.dup(saved_fd), "wb")
    try:
        yield real_stdout
    finally:
        try:
            real_stdout.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass
        real_stdout.close()
        sys.stdout = saved_sys_stdout
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
