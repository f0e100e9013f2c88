"""Private temporary folders, and third-party code confined to one.

onnxruntime's symbolic shape inference saves ``sym_shape_infer_temp.onnx`` and a
``<uuid>.data`` holding every weight into the *working directory* when its inference is
incomplete, and never removes them. :func:`contained` runs such code with the working
directory set to a folder that :func:`scratch_dir` removes on every exit path (Ctrl-C
included), and :func:`symbolic_shape_inference` is the one way onnxopt calls that inference.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

_PROCESS_STATE = threading.RLock()  # the working directory, while contained


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A private temporary folder, removed with its contents on every exit path (an
    exception, Ctrl-C included)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def contained(folder: Path) -> Iterator[None]:
    """Run third-party code so that the files it writes beside itself land in ``folder``.

    Inside this block the working directory is ``folder`` (restored afterwards): keep the
    block around the call alone — user paths relative to the working directory (data
    files) must not be opened inside it. The working directory is process-wide: blocks
    are serialised by a lock, and other threads of the process must not rely on it
    meanwhile (``onnxopt.optimize`` is therefore not for concurrent use in one process).
    ``tempfile``'s folder is left alone: onnxruntime's own temporary folders are context
    managers that remove themselves, and changing it would move other threads' folders.
    """
    with _PROCESS_STATE:
        previous_cwd = os.getcwd()
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(previous_cwd)


def symbolic_shape_inference(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's symbolic shape inference (``auto_merge``), confined to a scratch
    folder; None when it fails (it is best effort everywhere onnxopt uses it)."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        with scratch_dir("onnxopt-shapes-") as tmp, contained(tmp):
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "no extra shapes"
        logger.debug("symbolic shape inference failed: %s", exc)
        return None
