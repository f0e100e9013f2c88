"""Text data: one text per line, tokenized with a Hugging Face ``tokenizer.json``.

``--data sentences.txt --preprocess "tokenizer=tokenizer.json max_length=128"`` feeds a
sequence model (BERT, sentence-transformers, …) plain text: each non-blank line of the
UTF-8 file is one sample. The ``tokenizers`` library reads the tokenizer (normalizer,
pre-tokenizer, model, post-processor), then every text is truncated and padded to
``max_length`` tokens (:func:`parse_text_preprocess`); the model's integer inputs are
filled by name: token ids, attention mask, token type ids, position ids
(:func:`assign_roles`). Problems are one-line errors (exit 2): a model without a token-id
input, a missing or malformed tokenizer, a vocabulary larger than the model's embedding
table (:attr:`~onnxopt.analysis.inputs.InputInfo.index_high`), a ``max_length`` against a
fixed sequence dimension, an empty or non-UTF-8 file. Texts longer than ``max_length`` are
truncated and counted in :attr:`TextSource.description`. Streaming: only the byte offsets of
the lines are kept in memory; a batch reads and tokenizes its lines when iterated.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxopt.analysis.inputs import MASK_NAME, InputInfo, base_name
from onnxopt.errors import InputError, UsageError
from onnxopt.runtime import one_line
from onnxopt.validate.sources import DataSource

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt",)
TEXT_KEYS = ("tokenizer", "max_length")
DEFAULT_MAX_LENGTH = 128
#: Lines tokenized at once when only the truncation count is wanted.
_COUNT_CHUNK = 1024

#: Input names text data fills with token ids (output kinds read them too; the mask: analysis.inputs.MASK_NAME).
TOKEN_IDS_NAME = re.compile(r"(?:input_?)?ids|(?:input_?)?tokens?|token_?ids|input_?word_?ids|word_?ids|src_?tokens|input|text")
_TYPES = re.compile(r"(?:token_?)?type_?ids|segment_?ids|segments?|token_?types?|input_?type_?ids")
_POSITIONS = re.compile(r"position_?ids|positions?|pos_?ids")
#: Pad tokens looked up in the vocabulary when the tokenizer sets no padding of its own.
_PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<PAD>", "[pad]")


@dataclass(frozen=True)
class TextSpec:
    """A parsed text ``--preprocess`` SPEC."""

    tokenizer: Path
    max_length: int | None = None

    def describe(self) -> str:
        text = f"tokenizer={self.tokenizer}"
        return text if self.max_length is None else f"{text} max_length={self.max_length}"


def parse_text_preprocess(spec: str | None, data_name: str = "text data") -> TextSpec:
    """Parse ``tokenizer=PATH [max_length=N]``; UsageError naming the problem.

    ``tokenizer=PATH``: the tokenizer.json (or a folder holding one); required.
    ``max_length=N``: tokens per text; default the model's fixed sequence dimension, else
    ``--input-shape`` (e.g. ``input_ids:1x64``), else 128. A quoted value may hold spaces.
    """
    usage = '--preprocess "tokenizer=tokenizer.json max_length=128"'
    if spec is None or not spec.strip():
        raise UsageError(
            f"{data_name} is text (one sample per line) and needs a tokenizer: give {usage} "
            "(the Hugging Face tokenizer.json of the model)"
        )
    try:
        tokens = shlex.split(spec)
    except ValueError as error:
        raise UsageError(f"bad --preprocess '{spec}': {error}") from None
    values: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        key = key.lower()
        if not sep:
            raise UsageError(
                f"bad --preprocess token '{token}' for text data: expected key=value with keys "
                f"{', '.join(TEXT_KEYS)} (image presets do not apply to text), e.g. {usage}"
            )
        if key not in TEXT_KEYS:
            raise UsageError(f"unknown --preprocess key '{key}' for text data: valid keys are {', '.join(TEXT_KEYS)}")
        if key in values:
            raise UsageError(f"bad --preprocess '{spec}': {key} is given twice")
        values[key] = value
    if "tokenizer" not in values or not values["tokenizer"]:
        raise UsageError(f"--preprocess '{spec}' names no tokenizer: text data needs {usage}")
    max_length = None
    if "max_length" in values:
        try:
            max_length = int(values["max_length"])
        except ValueError:
            max_length = 0
        if max_length < 1:
            raise UsageError(f"bad --preprocess '{spec}': max_length must be a positive integer, got '{values['max_length']}'")
    return TextSpec(Path(values["tokenizer"]).expanduser(), max_length)


def load_tokenizer(path: Path):
    """A ``tokenizers.Tokenizer`` from a tokenizer.json (or a folder holding one)."""
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if not path.exists():
        raise InputError(f"tokenizer file not found: {path}")
    if not path.is_file():
        raise InputError(f"tokenizer '{path}' is a folder without a tokenizer.json")
    try:
        from tokenizers import Tokenizer
    except ImportError as error:  # a broken install: tokenizers is a dependency
        raise InputError(f"text data needs the 'tokenizers' package ({error}); pip install tokenizers") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises plain Exception for bad JSON or schema
        raise InputError(
            f"cannot read tokenizer '{path}': not a Hugging Face tokenizer.json ({one_line(error, 160)})"
        ) from None


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Roles:
    ids: InputInfo
    mask: InputInfo | None = None
    types: InputInfo | None = None
    positions: InputInfo | None = None

    def pairs(self) -> list[tuple[str, InputInfo]]:
        return [(role, info) for role, info in
                (("ids", self.ids), ("mask", self.mask), ("types", self.types), ("positions", self.positions))
                if info is not None]


def _inputs_str(inputs: Sequence[InputInfo]) -> str:
    return ", ".join(f"'{i.name}' {i.shape_str()} {i.dtype}" for i in inputs)


def assign_roles(inputs: Sequence[InputInfo]) -> _Roles:
    """Which model input gets the token ids, the mask, the type ids, the positions.

    By name (lower case, a TensorFlow ``:0`` suffix ignored): token ids (``input_ids``,
    ``ids``, ``tokens``, ``input``, …), the attention mask (``attention_mask``, ``mask``,
    ``*_mask``), token type ids (``token_type_ids``, ``segment_ids``, ``type_ids``, …) and
    position ids (``position_ids``: 0 … max_length − 1). A single integer input matching
    none of these is taken as the token ids. Token ids, type ids and positions must be
    integer inputs; the mask may also be bool or float (1 for tokens, 0 for padding, in
    the declared dtype). Each array is cast to the dtype the model declares."""
    if not any(i.dtype.kind in "iu" for i in inputs):
        raise InputError(
            f"text data needs a model that takes integer token ids; this model's inputs are {_inputs_str(inputs)} "
            "(feed images as a folder, arrays as .npz)"
        )
    roles: dict[str, InputInfo] = {}
    unmatched: list[InputInfo] = []
    for info in inputs:
        name = base_name(info.name)
        for role, pattern in (("mask", MASK_NAME), ("types", _TYPES), ("positions", _POSITIONS),
                                 ("ids", TOKEN_IDS_NAME)):
            allowed = "iubf" if role == "mask" else "iu"
            if pattern.fullmatch(name) and info.dtype.kind in allowed:
                if role in roles:
                    raise InputError(
                        f"text data: inputs '{roles[role].name}' and '{info.name}' both look like the {_ROLE_NAMES[role]}"
                    )
                roles[role] = info
                break
        else:
            unmatched.append(info)
    integers = [i for i in unmatched if i.dtype.kind in "iu"]
    if "ids" not in roles and len(integers) == 1:
        roles["ids"] = integers[0]
        unmatched.remove(integers[0])
    if unmatched:
        raise InputError(
            f"text data fills token ids, attention mask, token type ids and position ids by input name; "
            f"cannot tell what {_inputs_str(unmatched)} should hold (give an .npz keyed by input name)"
        )
    if "ids" not in roles:
        raise InputError(
            f"text data needs a token-id input (named like input_ids, ids or tokens); "
            f"this model's inputs are {_inputs_str(inputs)}"
        )
    for info in roles.values():
        if info.shape is not None and len(info.shape) != 2:
            raise InputError(
                f"text data feeds [batch, sequence] arrays, but input '{info.name}' is {info.shape_str()} "
                "(give an .npz keyed by input name)"
            )
    return _Roles(**roles)


_ROLE_NAMES = {"ids": "token ids", "mask": "attention mask", "types": "token type ids", "positions": "position ids"}


def _sequence_length(roles: _Roles, spec: TextSpec, shapes: Mapping[str, tuple[int, ...]] | None) -> int:
    fixed = {info.name: info.shape[1] for _, info in roles.pairs()
             if info.shape is not None and isinstance(info.shape[1], int) and info.shape[1] > 0}
    if len(set(fixed.values())) > 1:
        detail = ", ".join(f"'{n}'={v}" for n, v in fixed.items())
        raise InputError(f"text data: the model's inputs fix different sequence lengths ({detail})")
    if fixed:
        name, length = next(iter(fixed.items()))
        if spec.max_length is not None and spec.max_length != length:
            raise InputError(
                f"--preprocess max_length={spec.max_length} does not fit input '{name}': its sequence "
                f"dimension is fixed at {length}"
            )
        return length
    if spec.max_length is not None:
        return spec.max_length
    shape = (shapes or {}).get(roles.ids.name)
    return int(shape[1]) if shape is not None and len(shape) == 2 else DEFAULT_MAX_LENGTH


def _padding(tokenizer) -> dict:
    """enable_padding keywords: the tokenizer's own pad token where it sets one."""
    own = tokenizer.padding or {}
    if own.get("pad_token") is not None and own.get("pad_id") is not None:
        return {"pad_id": own["pad_id"], "pad_token": own["pad_token"], "pad_type_id": own.get("pad_type_id", 0),
                "direction": own.get("direction", "right")}
    for token in _PAD_TOKENS:
        index = tokenizer.token_to_id(token)
        if index is not None:
            return {"pad_id": index, "pad_token": token}
    return {"pad_id": 0, "pad_token": tokenizer.id_to_token(0) or "[PAD]"}


# --------------------------------------------------------------------------- source


def _line_offsets(path: Path) -> np.ndarray:
    """Byte offsets of the non-blank lines of a UTF-8 file; InputError when it is not UTF-8."""
    offsets: list[int] = []
    position = 0
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise InputError(f"'{path.name}' line {number} is not UTF-8 text ({error.reason})") from None
                if number == 1:
                    line = line.removeprefix("\ufeff")
                if line.strip():
                    offsets.append(position)
                position += len(raw)
    except OSError as error:
        raise InputError(f"cannot read '{path}': {error.strerror or error}") from None
    return np.asarray(offsets, dtype=np.int64)


class TextSource(DataSource):
    """Lines of a text file, tokenized one batch at a time (module docstring)."""

    def __init__(self, inputs: Sequence[InputInfo], path: Path, tokenizer, roles: _Roles, length: int,
                 tokenizer_path: Path):
        offsets = _line_offsets(path)
        if len(offsets) == 0:
            raise InputError(f"'{path}' holds no text: one sample per line, blank lines are skipped")
        super().__init__(inputs, len(offsets), f"texts from {path}")
        self.path = path
        self.offsets = offsets
        self.tokenizer = tokenizer
        self.roles = roles
        self.length = length
        self.tokenizer_path = tokenizer_path
        # Shared by subset views (copy.copy): which samples were tokenized, which were cut.
        self._known = np.zeros(len(offsets), dtype=bool)
        self._cut = np.zeros(len(offsets), dtype=bool)

    # -- reading

    def texts(self, start: int, stop: int) -> list[str]:
        """The texts of samples ``start:stop`` (absolute indices), newline and BOM removed."""
        result = []
        with open(self.path, "rb") as handle:
            for offset in self.offsets[start:stop]:
                handle.seek(int(offset))
                line = handle.readline().decode("utf-8").rstrip("\r\n")
                result.append(line.removeprefix("\ufeff") if offset == 0 else line)
        return result

    def _encode(self, start: int, stop: int):
        try:
            encodings = self.tokenizer.encode_batch(self.texts(start, stop))
        except Exception as error:  # tokenizers raises plain Exception
            raise InputError(f"tokenizer '{self.tokenizer_path.name}' failed on {self.path.name}: "
                             f"{one_line(error, 160)}") from None
        self._known[start:stop] = True
        self._cut[start:stop] = [bool(e.overflowing) for e in encodings]
        return encodings

    def _read(self, start: int, stop: int) -> tuple[dict[str, np.ndarray], list[str]]:
        encodings = self._encode(start, stop)
        columns = {
            "ids": [e.ids for e in encodings],
            "mask": [e.attention_mask for e in encodings],
            "types": [e.type_ids for e in encodings],
        }
        feeds: dict[str, np.ndarray] = {}
        for role, info in self.roles.pairs():
            if role == "positions":
                array = np.broadcast_to(np.arange(self.length), (len(encodings), self.length))
            else:
                array = np.asarray(columns[role], dtype=np.int64)
            if array.shape[1:] != (self.length,):  # the tokenizer ignored its padding settings
                raise InputError(f"tokenizer '{self.tokenizer_path.name}' returned {array.shape[1]} tokens per "
                                 f"text, not max_length {self.length}")
            feeds[info.name] = np.ascontiguousarray(array, dtype=info.dtype)
        return feeds, [str(i) for i in range(start, stop)]

    # -- truncation

    def truncated(self) -> int:
        """How many samples of this view are longer than ``max_length`` tokens (and were cut)."""
        unknown = np.flatnonzero(~self._known[self._start:self._stop]) + self._start
        for first in range(0, len(unknown), _COUNT_CHUNK):
            chunk = unknown[first:first + _COUNT_CHUNK]
            self._encode(int(chunk[0]), int(chunk[-1]) + 1)
        return int(self._cut[self._start:self._stop].sum())

    @property
    def description(self) -> str:
        """E.g. "400 texts from s.txt, tokenized by t.json to 128 tokens; 3 truncated to 128 tokens"."""
        text = f"{len(self)} {self.what}, tokenized by {self.tokenizer_path.name} to {self.length} tokens"
        if len(self) != self._total:
            text += f" (samples {self._start}–{self._stop - 1} of {self._total})"
        cut = self.truncated()
        if cut:
            text += f"; {cut} longer than {self.length} tokens, truncated"
        return text

    @property
    def notes(self) -> list[str]:
        """Lines for a report: the truncation count, if any."""
        cut = self.truncated()
        return [f"{cut} of {len(self)} texts are longer than {self.length} tokens and were truncated"] if cut else []


def open_text(
    path: Path,
    inputs: Sequence[InputInfo],
    preprocess: str | None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> TextSource:
    """A :class:`TextSource` for ``path`` and a model with ``inputs`` (module docstring)."""
    spec = parse_text_preprocess(preprocess, f"'{path.name}'")
    roles = assign_roles(inputs)
    tokenizer = load_tokenizer(spec.tokenizer)
    vocabulary = tokenizer.get_vocab_size(with_added_tokens=True)
    rows = roles.ids.index_high
    if rows is not None and vocabulary > rows:
        raise InputError(
            f"tokenizer '{spec.tokenizer.name}' has {vocabulary} token ids but the model's embedding table for "
            f"input '{roles.ids.name}' has {rows} rows: it is not this model's tokenizer"
        )
    length = _sequence_length(roles, spec, shapes)
    resolved = (shapes or {}).get(roles.ids.name)
    if resolved is not None and len(resolved) == 2 and resolved[1] != length:
        logger.warning("text data: input '%s' gets %d tokens per text (max_length), not the %d of its shape above",
                       roles.ids.name, length, resolved[1])
    special = tokenizer.num_special_tokens_to_add(False)
    if length <= special:
        raise InputError(
            f"max_length {length} leaves no room for text: tokenizer '{spec.tokenizer.name}' adds {special} "
            "special tokens to every text"
        )
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length, **_padding(tokenizer))
    source = TextSource(inputs, path, tokenizer, roles, length, spec.tokenizer)
    filled = ", ".join(f"'{info.name}' ({_ROLE_NAMES[role]})" for role, info in roles.pairs())
    logger.info("text data: %d texts from %s fill %s, %d tokens each", len(source), path.name, filled, length)
    return source
