"""Data for validation runs: a path opened as a :class:`~onnxopt.validate.sources.DataSource`.

:func:`open_data` reads ``.npz`` (one array per model input, keyed by input name) and
``.npy`` (a single-input model) files, first axis = samples, memory-mapping ``.npy`` and
uncompressed ``.npz`` members; a folder of images, decoded and preprocessed one batch of
files at a time (:mod:`onnxopt.validate.preprocess`); and a ``.txt`` file of texts, one per
line, tokenized (:mod:`onnxopt.validate.text`). :func:`load_labels` reads the class labels
of a data set (``--labels``).
"""

from __future__ import annotations

import csv
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from onnxopt.analysis.inputs import InputInfo
from onnxopt.errors import InputError, UsageError
from onnxopt.validate.sources import DataSource

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class _Member:
    """One array of an .npy/.npz file: header read eagerly, data mapped or loaded lazily."""

    def __init__(self, path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype, loader):
        self.path, self.key, self.shape, self.dtype = path, key, shape, dtype
        self._loader = loader
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self._loader()
        return self._array


def _read_npy_header(fp) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    return np.lib.format.read_array_header_2_0(fp)


def _npz_members(path: Path) -> dict[str, _Member]:
    members: dict[str, _Member] = {}
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                if info.compress_type == zipfile.ZIP_STORED:
                    # Local file header: 30 bytes, then the name and the extra field.
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                    data_start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
                    raw.seek(data_start)
                    shape, fortran, dtype = _read_npy_header(raw)
                    offset = raw.tell()
                    loader = _memmap_loader(path, dtype, shape, fortran, offset)
                else:
                    with archive.open(info) as fp:
                        shape, fortran, dtype = _read_npy_header(fp)
                    loader = _npz_loader(path, key)
                members[key] = _Member(path, key, tuple(shape), np.dtype(dtype), loader)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(f"cannot read '{path}': {error}") from error
    return members


def _memmap_loader(path: Path, dtype: np.dtype, shape, fortran: bool, offset: int):
    def load() -> np.ndarray:
        if dtype.hasobject:
            raise InputError(f"'{path.name}' holds Python objects; save plain numeric arrays")
        if int(np.prod(shape)) == 0:
            return np.empty(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order="F" if fortran else "C")

    return load


def _npz_loader(path: Path, key: str):
    def load() -> np.ndarray:
        logger.info("'%s' member '%s' is compressed: loading it whole (save with np.savez to stream it)", path.name, key)
        try:
            with np.load(path, allow_pickle=False) as archive:
                return archive[key]
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read '{key}' from '{path}': {error}") from error

    return load


def _npy_member(path: Path, key: str) -> _Member:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read '{path}': {error}") from error
    return _Member(path, key, tuple(array.shape), array.dtype, lambda: array)


def _expected_str(info: InputInfo) -> str:
    if info.shape is None:
        return "[S, ...]"
    if not info.shape:
        return "[S] (one scalar per sample)"
    rest = ["?" if d is None else str(d) for d in info.shape[1:]]
    return "[" + ", ".join(["S", *rest]) + "]"


class ArraySource(DataSource):
    """Samples from arrays in an .npz/.npy file, first axis = samples."""

    def __init__(self, inputs: Sequence[InputInfo], members: Mapping[str, _Member], path: Path):
        where = path.name
        for info in inputs:
            member = members[info.name]
            if member.dtype != info.dtype:
                raise InputError(
                    f"input '{info.name}': {where} has dtype {member.dtype} but the model expects {info.dtype}"
                )
            if info.shape is not None:
                want_rank = max(len(info.shape), 1)
                ok = len(member.shape) == want_rank and all(
                    not (isinstance(d, int) and d > 0) or d == got
                    for d, got in zip(info.shape[1:], member.shape[1:], strict=False)
                )
                if not ok:
                    raise InputError(
                        f"input '{info.name}': {where} has shape {member.shape} but the model expects "
                        f"{_expected_str(info)} (S = samples, model input {info.shape_str()})"
                    )
            elif not member.shape:
                raise InputError(f"input '{info.name}': {where} holds a scalar; the first axis must be samples")
        counts = {name: m.shape[0] for name, m in members.items()}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"'{n}'={c}" for n, c in counts.items())
            raise InputError(f"{where}: arrays have different sample counts ({detail})")
        size = next(iter(counts.values()))
        if size == 0:
            raise InputError(f"{where} has no samples")
        super().__init__(inputs, size, f"samples from {path}")
        self.members = dict(members)

    def _read(self, start: int, stop: int) -> tuple[dict[str, np.ndarray], list[str]]:
        feeds = {name: np.ascontiguousarray(m.array[start:stop]) for name, m in self.members.items()}
        return feeds, [str(i) for i in range(start, stop)]


# --------------------------------------------------------------------------- images


class ImageSource(DataSource):
    """Images of a folder, sorted by name, decoded and preprocessed one batch at a time."""

    def __init__(self, info: InputInfo, files: Sequence[Path], pipeline, folder: Path):
        super().__init__([info], len(files), f"images from {folder} ({pipeline.describe()})")
        self.files = list(files)
        self.pipeline = pipeline
        self.info = info

    def _read(self, start: int, stop: int) -> tuple[dict[str, np.ndarray], list[str]]:
        files = self.files[start:stop]
        arrays = [self.pipeline.load(path) for path in files]
        batch = np.stack(arrays)
        if batch.dtype != self.info.dtype:
            if self.info.dtype.kind in "iu":
                limits = np.iinfo(self.info.dtype)
                batch = np.clip(np.rint(batch), limits.min, limits.max)
            batch = batch.astype(self.info.dtype)
        return {self.info.name: batch}, [path.name for path in files]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (case-insensitive suffixes), sorted by name."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def open_data(
    path: str | os.PathLike,
    inputs: Sequence[InputInfo],
    *,
    preprocess: str | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> DataSource:
    """Open ``path`` as a :class:`DataSource` for a model with ``inputs``.

    * ``.npz``: one array per model input, keyed by input name, first axis = samples;
    * ``.npy``: the samples of a single-input model;
    * a folder of images (jpg, jpeg, png, bmp, webp; sorted by name), turned into tensors
      by ``preprocess`` (see :mod:`onnxopt.validate.preprocess`); without it, the
      geometry comes from the model's input (``shapes`` fills its dynamic H×W) and pixels
      are scaled to 0..1, with a warning;
    * a ``.txt`` file: one text per line, tokenized by ``preprocess``'s
      ``tokenizer=tokenizer.json max_length=N`` (see :mod:`onnxopt.validate.text`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"data path not found: {path}")
    if path.is_file() and path.suffix.lower() == ".txt":
        from onnxopt.validate.text import open_text

        return open_text(path, inputs, preprocess, shapes)
    if preprocess is not None and not path.is_dir():
        raise UsageError(f"--preprocess applies to a folder of images, and '{path.name}' is a file")
    if path.is_dir():
        return _open_images(path, inputs, preprocess, shapes)
    suffix = path.suffix.lower()
    names = [info.name for info in inputs]
    if suffix == ".npz":
        members = _npz_members(path)
        if sorted(members) != sorted(names):
            raise InputError(
                f"{path.name} keys do not match the model's inputs: expected {sorted(names)}, got {sorted(members)}"
            )
        return ArraySource(inputs, members, path)
    if suffix == ".npy":
        if len(inputs) != 1:
            raise InputError(
                f"{path.name} holds one array but the model has {len(inputs)} inputs ({', '.join(names)}): "
                "use an .npz keyed by input name"
            )
        return ArraySource(inputs, {names[0]: _npy_member(path, names[0])}, path)
    raise InputError(f"unsupported data file '{path.name}': expected .npz, .npy, .txt (text) or a folder of images")


def _open_images(folder: Path, inputs: Sequence[InputInfo], preprocess: str | None, shapes) -> DataSource:
    from onnxopt.validate.preprocess import image_pipeline

    if len(inputs) != 1:
        names = ", ".join(info.name for info in inputs)
        raise InputError(f"a folder of images needs a model with one input; this one has {len(inputs)} ({names})")
    files = list_images(folder)
    if not files:
        raise InputError(f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) in folder '{folder}'")
    info = inputs[0]
    shape = None if shapes is None else shapes.get(info.name)
    pipeline = image_pipeline(preprocess, info, shape)
    return ImageSource(info, files, pipeline, folder)


def load_labels(path: str | os.PathLike) -> dict[str, int]:
    """Read a TSV whose header starts ``file<TAB>index`` into {file name: class index}.

    Further columns (wnid, name, …) are ignored. InputError naming the line on bad rows.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"labels file not found: {path}")
    labels: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = csv.reader(handle, delimiter="\t")
            header = next(rows, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["file", "index"]:
                raise InputError(f"{path.name}: the header must start with 'file<TAB>index', got {header!r}")
            for line, row in enumerate(rows, start=2):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 2:
                    raise InputError(f"{path.name} line {line}: expected file<TAB>index, got {row!r}")
                try:
                    labels[row[0].strip()] = int(row[1])
                except ValueError:
                    raise InputError(f"{path.name} line {line}: index '{row[1]}' is not an integer") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read labels file '{path}': {error}") from error
    if not labels:
        raise InputError(f"{path.name} has no labels")
    return labels
