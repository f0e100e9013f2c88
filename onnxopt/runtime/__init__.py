"""The one place onnxopt talks to onnxruntime: sessions, providers and one-line errors.

- :func:`create_session`: every onnxruntime session in onnxopt is made here (providers,
  threads, graph-optimization level, session config entries such as the exact-int8 ones,
  TF32 on CUDA, IR version clamped so that onnxruntime loads what onnx writes).
- :func:`cuda_status` / :func:`resolve_providers`: which providers really load here.
  ``onnxruntime-gpu`` lists CUDA even where its libraries are missing; only a created
  session's ``get_providers()`` tells, and its failure is printed natively on fd 2, so the
  probe runs with fd 2 redirected (:func:`capture_fd2`) and reports one clean line.
- :func:`first_line` / :func:`one_line`: an error (onnxruntime's multi-line native text
  included) as one line: its first line, or all of it joined.

Provider names are the short ones, ``"cpu"`` and ``"cuda"``; :data:`ORT_PROVIDER` maps them
to onnxruntime's. onnxruntime is imported inside the functions, so importing this module
stays cheap.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from onnxopt.errors import InputError, UsageError

if TYPE_CHECKING:
    import onnx
    import onnxruntime

log = logging.getLogger(__name__)

ORT_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
"""Short provider name -> onnxruntime execution provider name."""

VALID_SPECS = ("cpu", "cuda", "cpu,cuda", "auto")
"""The provider specs that :func:`resolve_providers` accepts (shown in error messages)."""

# onnxruntime's onnx parser refuses IR versions above the one it was built for
# (onnx 1.23's make_model writes 14, onnxruntime 1.31 accepts up to 13); the probe model
# uses a version every supported onnxruntime reads.
_PROBE_IR_VERSION = 8
_PROBE_OPSET = 13

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MISSING_SO = re.compile(r"([\w.+-]+\.so(?:\.[\w.]+)?): cannot open shared object file")
_REQUIRE = re.compile(r"(Require .*?)\.(?:\s|$)")


@dataclass(frozen=True)
class ProviderChoice:
    """The providers to run on, in order, and one-line notes about what was left out.

    ``providers`` holds short names (``["cpu"]``, ``["cpu", "cuda"]``); ``notes`` holds
    lines for the report such as ``"CUDA requested but unavailable: libcublasLt.so.13 not
    found"``.
    """

    providers: list[str]
    notes: list[str] = field(default_factory=list)


def resolve_providers(spec: str) -> ProviderChoice:
    """Parse a provider spec ("cpu", "cuda", "cpu,cuda" or "auto") into a choice.

    "auto" means CPU plus CUDA where CUDA really loads (probed with :func:`cuda_status`);
    when it does not, the choice is CPU only with a note saying why. A provider named
    explicitly must work: "cuda" that does not load raises :class:`InputError` with the
    reason, rather than silently validating on CPU only.

    Raises:
        UsageError: the spec is empty or names an unknown provider.
        InputError: CUDA was requested explicitly and does not load here.
    """
    text = (spec or "").strip().lower()
    names = [part.strip() for part in text.split(",") if part.strip()]
    valid = ", ".join(VALID_SPECS)
    if not names:
        raise UsageError(f"empty provider spec; valid: {valid}")
    unknown = [n for n in names if n not in ORT_PROVIDER and n != "auto"]
    if unknown:
        raise UsageError(f"unknown provider {unknown[0]!r} in {spec!r}; valid: {valid}")
    if "auto" in names:
        if len(names) > 1:
            raise UsageError(f"'auto' cannot be combined with other providers; valid: {valid}")
        ok, reason = cuda_status()
        if ok:
            return ProviderChoice(["cpu", "cuda"])
        return ProviderChoice(["cpu"], [f"CUDA not used: {reason}"])

    providers = list(dict.fromkeys(names))  # de-duplicate, keep order
    if "cuda" in providers:
        ok, reason = cuda_status()
        if not ok:
            raise InputError(f"CUDA requested but unavailable: {reason}")
    return ProviderChoice(providers)


@contextlib.contextmanager
def capture_fd2() -> Iterator[list[str]]:
    """Redirect the OS-level stderr (fd 2) to a temp file; yield a list that gets its text.

    onnxruntime logs from C++ straight to fd 2, so ``contextlib.redirect_stderr`` (which only
    swaps ``sys.stderr``) would not catch it. The captured text is appended to the yielded
    list when the block exits. The redirect is process-wide for its (short) duration, so
    another thread's stderr output in that window lands in the temp file too. When fd 2
    is closed there is nothing to protect and the block runs without a redirect.
    """
    out: list[str] = []
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # fd 2 closed: nothing would be printed anyway
        yield out
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", errors="replace"))


def _reason_line(printed: str, in_build: bool) -> str:
    """Pick one clean line out of what onnxruntime printed when CUDA failed to load."""
    text = _ANSI.sub("", printed)
    missing = _MISSING_SO.search(text)
    if missing:
        return f"{missing.group(1)} not found"
    if not in_build:
        return "this onnxruntime build has no CUDAExecutionProvider"
    require = _REQUIRE.search(text)
    if require:
        return f"CUDAExecutionProvider failed to load ({require.group(1)})"
    for line in text.splitlines():
        line = line.strip()
        if "error" in line.lower() or "fail" in line.lower():
            # drop the "2026-... [E:onnxruntime:Default, file.cc:123 fn]" prefix
            line = re.sub(r"^.*?\]\s*", "", line, count=1) or line
            return line[:200]
    return "CUDAExecutionProvider did not load (session fell back to CPU)"


def _probe_model_bytes() -> bytes:
    """A one-node Identity model, small and valid for any onnxruntime we support."""
    from onnxopt.runtime.ir_version import probe_model

    return probe_model(_PROBE_IR_VERSION, _PROBE_OPSET)


@functools.cache
def cuda_status() -> tuple[bool, str]:
    """Whether the CUDA execution provider really loads here, and a one-line reason.

    Creates a session for a tiny in-memory model with CUDA first in the provider list and
    reads back ``get_providers()``. Nothing is printed: fd 2 is redirected during the
    probe and the output is reduced to one line (e.g. ``libcublasLt.so.13 not found``).
    Cached: the answer does not change within a process, and the probe costs ~100 ms.

    Returns:
        ``(True, "CUDA available")`` or ``(False, reason)``.
    """
    import onnxruntime as ort

    in_build = ORT_PROVIDER["cuda"] in ort.get_available_providers()
    if not in_build:
        return False, "this onnxruntime build has no CUDAExecutionProvider"
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    loaded: list[str] = []
    error = ""
    with capture_fd2() as printed, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _preload_cuda_libraries(ort)
        try:
            session = ort.InferenceSession(
                _probe_model_bytes(),
                sess_options=opts,
                providers=[ORT_PROVIDER["cuda"], ORT_PROVIDER["cpu"]],
            )
            loaded = session.get_providers()
        except Exception as exc:  # noqa: BLE001 - any failure means "no CUDA"
            error = first_line(exc)
    if ORT_PROVIDER["cuda"] in loaded:
        log.debug("CUDA execution provider loads")
        return True, "CUDA available"
    reason = _reason_line(printed[0] if printed else "", in_build)
    if error and reason.startswith("CUDAExecutionProvider did not load"):
        reason = error
    log.debug("CUDA execution provider does not load: %s", reason)
    return False, reason


def _preload_cuda_libraries(ort) -> None:
    """Load the CUDA and cuDNN libraries of pip's ``nvidia-*`` packages, where installed.

    ``pip install onnxruntime-gpu[cuda,cudnn]`` puts them beside onnxruntime, outside the
    loader's search path: without this, CUDA does not load although everything it needs
    is installed. onnxruntime's ``preload_dlls`` (1.21+) finds them; what it prints on
    stdout (which may carry a model, with ``-o -``) is discarded, and what fails shows up
    in the probe's reason anyway.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
        preload()


_ORT_STATUS = re.compile(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_CPP_LOCATION = re.compile(r"/\S+\.(?:cc|h|cpp):\d+\s+[^()]*\([^)]*\)\s+")


def first_line(error: BaseException | str, limit: int = 300) -> str:
    """The first meaningful line of an error, for one-line messages.

    Strips what onnxruntime adds around its message: colour codes, the
    ``[ONNXRuntimeError] : 10 : INVALID_GRAPH :`` status prefix and the C++ source
    location. Whitespace is collapsed and the text cut at ``limit`` characters. An empty
    message gives the exception's type name.
    """
    text = _undecorated(error)
    return _cut(next((" ".join(part.split()) for part in text.splitlines() if part.strip()), ""), error, limit)


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """The whole message of an error on one line: as :func:`first_line`, with every line
    kept, for messages whose point follows a line break (the ONNX checker's "... of node:
    name: ...", onnxruntime's "invalid dimensions ... index: 1 Got: 3 Expected: 4")."""
    return _cut(" ".join(_undecorated(error).split()), error, limit)


def _undecorated(error: BaseException | str) -> str:
    return _CPP_LOCATION.sub("", _ORT_STATUS.sub("", _ANSI.sub("", str(error))))


def _cut(line: str, error: BaseException | str, limit: int) -> str:
    if not line:
        return type(error).__name__ if isinstance(error, BaseException) else "unknown error"
    return line if len(line) <= limit else line[: limit - 1] + "…"


OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                       "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
"""Short graph-optimization level names -> onnxruntime's ``GraphOptimizationLevel`` names."""


def create_session(
    model: bytes | str | os.PathLike | onnx.ModelProto,
    provider: str = "cpu",
    *,
    threads: int | None = None,
    optimization: str | None = None,
    enable_profiling: bool = False,
    profile_prefix: str | None = None,
    config: Mapping[str, str] | None = None,
    tf32: bool = False,
    log_level: int = 3,
    quiet: bool = False,
    built: bool = False,
) -> onnxruntime.InferenceSession:
    """Create an onnxruntime session for ``model`` (a ModelProto, serialized bytes or a path).

    ``provider`` is a short name ("cpu" or "cuda"); CUDA sessions also list the CPU
    provider so that nodes without a CUDA kernel still run. A ModelProto whose IR version
    is newer than onnxruntime reads is clamped on a copy. ``threads`` sets
    ``intra_op_num_threads`` (``None`` keeps onnxruntime's default, one per core).
    ``optimization``: a key of :data:`OPTIMIZATION_LEVELS` (``None`` keeps the default,
    all). ``enable_profiling`` turns on onnxruntime's profiler, writing its JSON trace to
    ``profile_prefix`` + timestamp. ``config``: session config entries
    (``add_session_config_entry``). ``tf32``: let CUDA run float32 matrix products and
    convolutions in TF32 (onnxruntime's default, 10-bit mantissa); off, so that a float32
    model computes float32 on CUDA as on the CPU; latency measurements turn it on, as the
    model runs when deployed. ``log_level``: onnxruntime's severity (3 = errors only).
    ``quiet``: also keep what onnxruntime prints natively on fd 2 off the terminal (it goes
    to the debug log). ``built``: the model is one onnxopt built (a pass's candidate, a copy
    with extra outputs): onnxruntime refusing it is onnxopt's failure, a RuntimeError with
    onnxruntime's first line, not the user's input's.

    Raises:
        UsageError: unknown provider or optimization level, or a thread count below 1.
        InputError: CUDA does not load here, or onnxruntime cannot load the model
            (one line, e.g. the unsupported IR version or the missing operator; the
            original exception is the ``__cause__``).
        RuntimeError: with ``built``, onnxruntime cannot load the model.
    """
    import onnxruntime as ort

    if provider not in ORT_PROVIDER:
        raise UsageError(f"unknown provider {provider!r}; valid: {', '.join(ORT_PROVIDER)}")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}")
    if optimization is not None and optimization not in OPTIMIZATION_LEVELS:
        raise UsageError(f"unknown optimization level {optimization!r}; valid: {', '.join(OPTIMIZATION_LEVELS)}")
    if provider == "cuda":
        ok, reason = cuda_status()
        if not ok:
            raise InputError(f"CUDA requested but unavailable: {reason}")
        providers = [(ORT_PROVIDER["cuda"], {"use_tf32": "1" if tf32 else "0"}), ORT_PROVIDER["cpu"]]
    else:
        providers = [ORT_PROVIDER["cpu"]]

    opts = ort.SessionOptions()
    opts.log_severity_level = log_level  # warnings go to fd 2 and clutter the CLI
    if threads is not None:
        opts.intra_op_num_threads = threads
    if optimization is not None:
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    if enable_profiling:
        opts.enable_profiling = True
        if profile_prefix:
            opts.profile_file_prefix = str(profile_prefix)
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)

    source = _session_source(model)
    printed: list[str] = []
    try:
        with capture_fd2() if quiet else contextlib.nullcontext(printed) as printed:
            session = ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated types
        if built:
            raise RuntimeError(first_line(exc)) from exc
        raise InputError(f"onnxruntime cannot load the model: {first_line(exc)}") from exc
    finally:
        if any(text.strip() for text in printed):
            log.debug("onnxruntime printed while creating the session: %s", one_line("".join(printed)))
    log.debug("session on %s: %s", provider, session.get_providers())
    return session


def _session_source(model) -> bytes | str:
    """What ``InferenceSession`` takes: bytes (a ModelProto serialized, IR clamped) or a path."""
    if isinstance(model, bytes | bytearray):
        return bytes(model)
    if isinstance(model, str | os.PathLike):
        return os.fspath(model)
    from onnxopt.runtime.ir_version import runnable_bytes

    return runnable_bytes(model)
