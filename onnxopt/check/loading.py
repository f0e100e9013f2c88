"""Reading one file (or stdin) as an ONNX model, with its external data.

Every problem is a finding, never an exception: ``load-error`` (unreadable, empty,
truncated, not ONNX, a directory, a Git LFS pointer, stdin closed), ``size`` (the file is
over the 2 GiB protobuf limit) and ``external-data`` (missing, unreadable, an absolute
path or outside the model's folder). Nothing else can be checked after one of them, so
each ends the file's checks (:class:`StopChecking`), also when its rule is disabled: the
file is then skipped without a finding, and files outside the model's folder are never read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from onnxopt.check.context import CheckRun, Loaded, StopChecking
from onnxopt.check.text import error_text, human_bytes
from onnxopt.errors import InputError

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

_GIT_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def protobuf_limit() -> int:
    from onnxopt import io

    return io.PROTOBUF_LIMIT


def load(run: CheckRun, source: str, stdin: BinaryIO | None) -> Loaded:
    """The model of ``source`` (``"-"``: ``stdin``); raises StopChecking after a finding."""
    import onnx

    from onnxopt import io

    data, path = _read_source(run, source, stdin)
    if data.startswith(_GIT_LFS_POINTER):
        run.add("load-error", "a Git LFS pointer file, not the model: install git-lfs and run 'git lfs pull'")
        raise StopChecking
    try:
        model = io.parse_model_bytes(data, "the file" if path else "stdin")
    except InputError as exc:
        run.add("load-error", str(exc).removeprefix("the file: ").removeprefix("stdin: "))
        raise StopChecking from None

    external_files = _external_files(model)
    if external_files:
        try:
            io.check_external_data(model, path.parent if path else None, str(path) if path else "stdin")
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except InputError as exc:
            _external_data_problem(run, str(exc).removeprefix(f"{path}: ").removeprefix("stdin: "))
        except (OSError, ValueError) as exc:
            _external_data_problem(run, f"cannot read external data: {error_text(exc, 200)}")
    size_on_disk = len(data)
    if path is not None and external_files:
        size_on_disk += sum((path.parent / f).stat().st_size for f in external_files)
    return Loaded(run.display, path, data if path is None else None, model, size_on_disk, bool(external_files))


def _read_source(run: CheckRun, source: str, stdin: BinaryIO | None) -> tuple[bytes, Path | None]:
    from onnxopt import io

    if source == io.STDIO:
        try:
            return io.read_stdin(stdin), None
        except InputError as exc:
            run.add("load-error", str(exc))
            raise StopChecking from None
    path = Path(source)
    if not path.exists():
        run.add("load-error", "no such file")
        raise StopChecking
    if path.is_dir():
        run.add("load-error", "is a directory, not a model file")
        raise StopChecking
    try:
        size = path.stat().st_size
    except OSError as exc:
        run.add("load-error", f"cannot read: {exc.strerror or exc}")
        raise StopChecking from None
    if size > protobuf_limit():
        if run.config.enabled("size"):
            run.add("size", f"the file is {human_bytes(size)}, over the 2 GiB protobuf limit: no ONNX "
                            "reader can parse it; store the weights as external data")
        else:
            run.add("load-error", f"the file is {human_bytes(size)}, over the 2 GiB protobuf limit")
        raise StopChecking
    try:
        return path.read_bytes(), path
    except OSError as exc:
        run.add("load-error", f"cannot read: {exc.strerror or exc}")
        raise StopChecking from None


def _external_data_problem(run: CheckRun, message: str) -> None:
    """Without its weights a model cannot be checked further; with the rule disabled the
    file is skipped without a finding (the containment check itself is never skipped)."""
    if run.config.enabled("external-data"):
        run.add("external-data", message)
    else:
        logger.info("%s: not checked further: %s", run.display, message)
    raise StopChecking


def _external_files(model: onnx.ModelProto) -> list[str]:
    import onnx

    locations = []
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if onnx.external_data_helper.uses_external_data(tensor):
            location = onnx.external_data_helper.ExternalDataInfo(tensor).location
            if location not in locations:
                locations.append(location)
    return locations


def fits_in_protobuf(model: onnx.ModelProto) -> bool:
    """Whether the model can be handed to onnx in memory (else its rules read the file)."""
    try:
        return model.ByteSize() <= protobuf_limit()
    except Exception:
        return False
