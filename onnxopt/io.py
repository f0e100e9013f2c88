"""Model input and output: files, stdin/stdout, external data, atomic writes.

Rules this module enforces for every command:

* The input file is only ever read. Writing onto it needs an explicit ``in_place=True``.
* External data is resolved relative to the model's folder, and a location that escapes
  that folder (``../x``, an absolute path, a symlink out of it) is refused: a model file
  must not make the tool read arbitrary files.
* Outputs are written to a temporary file in the target folder and renamed into place, so
  a failure never leaves a truncated or half-written output.
* Models larger than 2 GB (the protobuf limit) are saved with external data beside them.
* The input's IR version is kept; one the installed onnxruntime cannot load is clamped on
  save (:mod:`onnxopt.runtime.ir_version`).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxopt.errors import InputError, UsageError
from onnxopt.irutil import PROTOBUF_LIMIT  # bytes; larger models need external data
from onnxopt.runtime import one_line
from onnxopt.runtime.ir_version import clamp_ir_version

logger = logging.getLogger(__name__)

# the IR-version facts live in onnxopt.runtime.ir_version now

STDIO = "-"

# Leave headroom under the hard limit for the graph itself when deciding on external data.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def read_stdin(stream: BinaryIO | None = None) -> bytes:
    if stream is None:
        if sys.stdin is None:  # fd 0 closed altogether (`<&-`)
            raise InputError("cannot read the model from stdin: stdin is closed")
        stream = sys.stdin.buffer
    try:
        data = stream.read()
    except (OSError, ValueError) as exc:  # closed or unreadable stdin
        raise InputError(f"cannot read the model from stdin: {exc}") from None
    if data is None:
        raise InputError("cannot read the model from stdin: stdin is closed")
    return data


def parse_model_bytes(data: bytes, origin: str) -> onnx.ModelProto:
    if not data:
        raise InputError(f"{origin}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{origin}: not a valid ONNX protobuf ({reason})") from None
    # A protobuf of another kind often parses "successfully" into an empty ModelProto.
    if not model.HasField("graph") or model.ir_version == 0:
        raise InputError(f"{origin}: not an ONNX model (no graph or no IR version)")
    return model


def _external_tensors(model: onnx.ModelProto):
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if onnx.external_data_helper.uses_external_data(tensor):
            yield tensor


def check_external_data(model: onnx.ModelProto, base_dir: Path | None, origin: str) -> None:
    """Refuse external-data locations that are missing or escape the model's folder."""
    tensors = list(_external_tensors(model))
    if not tensors:
        return
    if base_dir is None:
        raise InputError(
            f"{origin}: the model refers to external data, which cannot be resolved "
            "when it is read from stdin; pass the file path instead"
        )
    root = base_dir.resolve()
    for tensor in tensors:
        info = onnx.external_data_helper.ExternalDataInfo(tensor)
        location = info.location
        if os.path.isabs(location) or Path(location).drive:
            raise InputError(
                f"{origin}: external data '{location}' of tensor '{tensor.name}' is an "
                "absolute path; only files inside the model's folder are allowed"
            )
        target = (root / location).resolve()
        if not target.is_relative_to(root):
            raise InputError(
                f"{origin}: external data '{location}' of tensor '{tensor.name}' escapes "
                "the model's folder; refusing to read it"
            )
        if not target.is_file():
            raise InputError(
                f"{origin}: external data file '{location}' of tensor '{tensor.name}' "
                "is missing"
            )


def load_proto(source: str | os.PathLike, *, stdin: BinaryIO | None = None) -> onnx.ModelProto:
    """Read a model (``"-"`` = stdin) with its external data, never modifying the file."""
    if str(source) == STDIO:
        model = parse_model_bytes(read_stdin(stdin), "stdin")
        check_external_data(model, None, "stdin")
        return model
    path = Path(source)
    origin = str(source)
    if not path.exists():
        raise InputError(f"{origin}: no such file")
    if path.is_dir():
        raise InputError(f"{origin}: is a directory, not a model file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{origin}: cannot read: {exc.strerror or exc}") from None
    model = parse_model_bytes(data, origin)
    check_external_data(model, path.parent, origin)
    if any(True for _ in _external_tensors(model)):
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as exc:
            raise InputError(f"{origin}: cannot read external data: {exc}") from None
    return model


def check_model(model: onnx.ModelProto, origin: str) -> None:
    """Run the ONNX checker (structure and types; shape inference is ``check``'s job); one line
    naming the problem on failure."""
    try:
        if model.ByteSize() > PROTOBUF_LIMIT:
            return  # the checker cannot serialise it; onnxruntime will catch real problems
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        # the checker's point often comes after a line break ("... of node:\nname: ... is not output of ...")
        raise InputError(f"{origin}: the model fails the ONNX checker: {one_line(exc)}") from None


def load(source: str | os.PathLike, *, stdin: BinaryIO | None = None) -> ir.Model:
    """Read, check and convert a model to the onnx_ir representation used by passes."""
    proto = load_proto(source, stdin=stdin)
    origin = "stdin" if str(source) == STDIO else str(source)
    check_model(proto, origin)
    try:
        return ir.from_proto(proto)
    except Exception as exc:  # onnx_ir rejects some malformed graphs the checker allows
        raise InputError(f"{origin}: cannot read the graph: {exc}") from None


def _list_initializers_as_inputs(model: onnx.ModelProto) -> None:
    """IR < 4 requires every initializer to be a graph input too (new ones included)."""
    listed = {value.name for value in model.graph.input}
    for tensor in model.graph.initializer:
        if tensor.name not in listed:
            model.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))


def to_proto(model: ir.Model, original_ir_version: int | None = None) -> onnx.ModelProto:
    proto = ir.to_proto(model)
    clamp_ir_version(proto, original_ir_version)
    if proto.ir_version < 4:
        _list_initializers_as_inputs(proto)
    return proto


def _external_data_files(source: str) -> set[Path]:
    """Resolved external-data files a model file refers to (they are part of the input)."""
    try:
        model = onnx.load_model(source, load_external_data=False)
    except Exception:
        return set()  # unreadable inputs are reported when they are loaded
    root = Path(source).resolve().parent
    return {(root / onnx.external_data_helper.ExternalDataInfo(t).location).resolve() for t in _external_tensors(model)}


def check_output_targets(outputs: list[str | os.PathLike | None], inputs: list[str], in_place: bool) -> None:
    """Refuse unusable outputs before any work is done.

    An output may not be an input file or one of its external-data files (unless
    ``in_place`` for the model file itself), and no two outputs may be the same file.
    """
    files = [Path(o) for o in outputs if o is not None and str(o) != STDIO]
    resolved = [f.resolve() for f in files]
    for index, target in enumerate(resolved):
        if target in resolved[:index]:
            raise UsageError(f"'{files[index]}' is given as two different outputs")
    for source in inputs:
        if source == STDIO or not Path(source).is_file():
            continue
        model_file = Path(source).resolve()
        data_files = _external_data_files(source)
        for index, (path, target) in enumerate(zip(files, resolved)):
            if target in data_files:
                raise UsageError(f"output '{path}' is an external-data file of the input model")
            if target == model_file and not (in_place and index == 0):
                hint = "; pass --in-place to overwrite it" if index == 0 else ""
                raise UsageError(f"output '{path}' is the input model{hint}")
    for path in files:
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"{path}: output folder '{parent}' does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"{path}: output folder '{parent}' is not writable")
        if path.is_dir():
            raise InputError(f"{path}: is a directory")


def _file_mode(path: Path) -> int:
    """Keep an existing file's permissions; new files get the usual umask-based mode."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(output: str | os.PathLike, text: str) -> None:
    try:
        _atomic_write_bytes(Path(output), text.encode())
    except OSError as exc:
        raise InputError(f"{output}: cannot write: {exc.strerror or exc}") from None


def save_proto(model: onnx.ModelProto, output: str | os.PathLike, *, stdout: BinaryIO | None = None) -> None:
    """Write atomically to a path, or to stdout for ``"-"``; external data above 2 GB."""
    large = not _fits(model) or model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    if str(output) == STDIO:
        if large:
            raise UsageError("the model is over 2 GB and needs external data; write it to a file")
        stream = stdout if stdout is not None else sys.stdout.buffer
        try:
            stream.write(model.SerializeToString(deterministic=True))
            stream.flush()
        except BrokenPipeError:
            raise InputError("stdout was closed before the whole model was written") from None
        return
    path = Path(output)
    try:
        if large:
            _save_with_external_data(model, path)
        else:
            _atomic_write_bytes(path, model.SerializeToString(deterministic=True))
    except OSError as exc:
        raise InputError(f"{output}: cannot write: {exc.strerror or exc}") from None


def fits_in_protobuf(model: onnx.ModelProto) -> bool:
    """Whether the model serialises as one protobuf (under 2 GB)."""
    return _fits(model)


def _fits(model: onnx.ModelProto) -> bool:
    try:
        return model.ByteSize() <= PROTOBUF_LIMIT
    except Exception:
        return False


def _save_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Save graph and weights beside each other, each written completely before it is renamed
    into place (the data file first, so the model never refers to a partial data file)."""
    data_name = f"{path.name}.data"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # save_model(save_as_external_data=True) rewrites the proto it is given
    model = copy
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        tmp_model = Path(tmp) / path.name
        onnx.save_model(
            model,
            str(tmp_model),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        os.replace(Path(tmp) / data_name, path.parent / data_name)
        os.replace(tmp_model, path)


def model_size_bytes(model: onnx.ModelProto) -> int:
    """Serialized size (graph plus weights), without serialising models over 2 GB."""
    if _fits(model):
        return model.ByteSize()
    return sum(len(t.raw_data) for t in onnx.external_data_helper._get_all_tensors(model))
