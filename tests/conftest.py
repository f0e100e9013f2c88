"""Shared test set-up: every test leaves logging as it found it.

The CLI configures logging (a handler on the root logger writing to the stderr it was
given, the ``onnxopt`` logger's level from -q/-v); a test that runs a command must not
change what the next test's ``caplog`` sees.
"""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), logging.getLogger("onnxopt").level
    yield
    root.handlers[:] = handlers
    logging.getLogger("onnxopt").setLevel(level)
