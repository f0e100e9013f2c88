"""Execution providers: which ones really load here, and sessions created on them.

Why this module exists: ``onnxruntime-gpu`` installs and runs on a machine without a GPU
(or without the CUDA libraries), and ``onnxruntime.get_available_providers()`` still lists
``CUDAExecutionProvider``. Only a created session's ``get_providers()`` tells whether CUDA
really loaded, and when it does not, onnxruntime's C++ code prints a long, coloured error
straight to the process's file descriptor 2. So we probe once, quietly (fd 2 redirected to
a temporary file), and turn what it printed into one clean line such as
``libcublasLt.so.13 not found``.

Provider names used throughout onnxopt are the short ones, ``"cpu"`` and ``"cuda"``;
:data:`ORT_PROVIDER` maps them to onnxruntime's names.

onnxruntime is imported inside the functions, so importing this module (e.g. from the
CLI on ``--help``) stays cheap.
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
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "onnxopt_cuda_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _PROBE_OPSET)],
        ir_version=_PROBE_IR_VERSION,
    )
    return model.SerializeToString()


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
            error = _first_line(str(exc))
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


def _first_line(message: str) -> str:
    """First non-empty line of an onnxruntime error, without its numeric status prefix."""
    for line in _ANSI.sub("", message).splitlines():
        line = line.strip()
        if line:
            # "[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model ..." -> "Load model ..."
            line = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", line)
            return line[:300]
    return message.strip()[:300] or "unknown error"


def create_session(
    model: bytes | str | os.PathLike,
    provider: str = "cpu",
    *,
    threads: int | None = None,
    enable_profiling: bool = False,
    profile_prefix: str | None = None,
    config: Mapping[str, str] | None = None,
    tf32: bool = False,
) -> onnxruntime.InferenceSession:
    """Create an onnxruntime session for ``model`` (serialized bytes or a file path).

    ``provider`` is a short name ("cpu" or "cuda"); CUDA sessions also list the CPU
    provider so that nodes without a CUDA kernel still run. ``threads`` sets
    ``intra_op_num_threads`` (``None`` keeps onnxruntime's default, one per core).
    ``enable_profiling`` turns on onnxruntime's profiler, writing its JSON trace to
    ``profile_prefix`` + timestamp (``session.end_profiling()`` returns the path).
    ``config``: onnxruntime session config entries (``add_session_config_entry``).
    ``tf32``: let CUDA run float32 matrix products and convolutions in TF32 (onnxruntime's
    default, 10-bit mantissa). Off by default, so that a float32 model computes float32
    on CUDA as on the CPU (TF32 alone moved MobileNetV2's logits by a relative L2 error of
    1.6e-3 on an H200, over the lossless gate's 1e-4); latency measurements turn it on, as
    the model runs when deployed.

    Raises:
        UsageError: unknown provider name or a thread count below 1.
        InputError: CUDA does not load here, or onnxruntime cannot load the model
            (one line, e.g. the unsupported IR version or the missing operator).
    """
    import onnxruntime as ort

    if provider not in ORT_PROVIDER:
        raise UsageError(f"unknown provider {provider!r}; valid: {', '.join(ORT_PROVIDER)}")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}")
    if provider == "cuda":
        ok, reason = cuda_status()
        if not ok:
            raise InputError(f"CUDA requested but unavailable: {reason}")
        providers = [(ORT_PROVIDER["cuda"], {"use_tf32": "1" if tf32 else "0"}), ORT_PROVIDER["cpu"]]
    else:
        providers = [ORT_PROVIDER["cpu"]]

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: warnings go to fd 2 and clutter the CLI
    if threads is not None:
        opts.intra_op_num_threads = threads
    if enable_profiling:
        opts.enable_profiling = True
        if profile_prefix:
            opts.profile_file_prefix = str(profile_prefix)
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)

    source: bytes | str = model if isinstance(model, bytes | bytearray) else os.fspath(model)
    if isinstance(source, bytearray):
        source = bytes(source)
    try:
        session = ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise InputError(f"onnxruntime cannot load the model: {_first_line(str(exc))}") from exc
    log.debug("session on %s: %s", provider, session.get_providers())
    return session
