"""Error classes and the exit codes they map to.

Exit codes (documented in the README and ``onnxopt --help``):

* 0 — success
* 1 — a validation gate or a check failed (the tool worked; the model did not pass)
* 2 — usage error, or unreadable / invalid input
* 3 — a pass failed unexpectedly (a bug, or a model the pass cannot handle); nothing written

Library code raises these; only the CLI turns them into one line on stderr and an exit code.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_PASS_FAILED = 3


class OnnxoptError(Exception):
    """Base class: ``str(error)`` is the one line shown to the user."""

    exit_code = EXIT_USAGE


class UsageError(OnnxoptError):
    """Bad command line, pass spec, option value or config file."""

    exit_code = EXIT_USAGE


class InputError(OnnxoptError):
    """An input (model, data file, image folder, output path) cannot be used."""

    exit_code = EXIT_USAGE


class GateFailed(OnnxoptError):
    """The tool ran, but the model failed a validation gate or a check."""

    exit_code = EXIT_GATE_FAILED


class PassFailed(OnnxoptError):
    """A pass raised; the run stops and nothing is written."""

    exit_code = EXIT_PASS_FAILED

    def __init__(self, pass_name: str, reason: str):
        super().__init__(f"pass '{pass_name}' failed: {reason}")
        self.pass_name = pass_name
        self.reason = reason
