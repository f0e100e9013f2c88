"""Crash isolation: run models on onnxruntime in a child process before running them here.

onnxruntime is native code and some models crash it outright. :func:`run_isolated` creates
the sessions (with the gate's options: pip's CUDA libraries preloaded, TF32 off) and runs
one batch in a fresh interpreter, so a native crash kills only the child and becomes one
line (``the optimized model crashed onnxruntime (signal SIGSEGV) on cpu while creating the
session``). The child is started with :mod:`subprocess` (never a fork of this threaded
process), imports only numpy and onnxruntime, reads the models as files and reports each
stage before it starts it, so a crash is located; it is killed and waited for on every exit
path. CUDA that does not load there, or a SIGKILL (out of memory), says nothing about the
model: a warning, and the caller runs the models in-process.

:func:`check_candidate` is what ``optimize`` calls before its gate: a crash of the optimized
model is the passes' fault (:class:`CandidateFailed`, exit 3, nothing written); a crash of
the original is the input's (:class:`~onnxopt.errors.InputError`, exit 2).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxopt.errors import InputError, PassFailed
from onnxopt.runtime import one_line
from onnxopt.runtime.scratch import scratch_dir

if TYPE_CHECKING:
    import numpy as np

    from onnxopt.report import PassReport

logger = logging.getLogger(__name__)

STAGES = {"load": "while creating the session", "run": "while running the first batch"}
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

_PATH_VARIABLE = "ONNXOPT_ISOLATION_SYS_PATH"

# The child: no onnxopt import (its package __init__s pull in more than the child needs).
# Session options mirror onnxopt.runtime.create_session (the gate's sessions).
_CHILD = r"""
import contextlib, io, json, os, pickle, sys
sys.path[:] = json.loads(os.environ.pop("ONNXOPT_ISOLATION_SYS_PATH"))
out = os.fdopen(os.dup(1), "wb")
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
os.dup2(null, 2)

def send(*message):
    pickle.dump(message, out)
    out.flush()

jobs = pickle.load(sys.stdin.buffer)
import numpy as np
import onnxruntime as ort

TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
         "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32,
         "tensor(int64)": np.int64, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
         "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_}
LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}
CUDA = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]

if any("cuda" in job["providers"] for _, job in jobs):
    # pip's nvidia-* CUDA libraries lie outside the loader's path (as in runtime._preload_cuda_libraries)
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            preload()

class Unchecked(Exception):
    pass

def run(job):
    feeds = job["feeds"]
    for provider in job["providers"]:
        send("stage", provider, "load")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if job["optimization"] is not None:
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[job["optimization"]])
        for key, value in job["config"].items():
            options.add_session_config_entry(key, value)
        names = CUDA if provider == "cuda" else ["CPUExecutionProvider"]
        session = ort.InferenceSession(job["model"], options, providers=names)
        if provider == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise Unchecked("CUDA did not load there (its session fell back to the CPU)")
        if feeds is None:
            continue
        send("stage", provider, "run")
        wanted = {i.name: TYPES.get(i.type) for i in session.get_inputs()}
        ready = {}
        for name, value in feeds.items():
            want = wanted.get(name)
            ready[name] = value.astype(want) if want is not None and value.dtype != want else value
        session.run(None, ready)
        del session

for index, job in jobs:
    send("job", index)
    try:
        run(job)
    except Unchecked as exc:
        send("unchecked", str(exc))
    except Exception as exc:
        send("error", str(exc) or type(exc).__name__)
    else:
        send("ok")
send("done")
"""

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_SOURCE_PREFIX = re.compile(r"^/\S+:\d+\s+\S.*?\)\s+")  # "/onnxruntime_src/...cc:123 onnxruntime::Fn(...) "


@dataclass(frozen=True)
class IsolatedRun:
    """What happened in the child.

    ``ok``: every session was created and ran the feeds. Otherwise ``provider`` and
    ``stage`` ("load" or "run") say where it stopped, and either ``signal`` names the
    signal that killed the child (``"SIGSEGV"``), or ``error`` holds onnxruntime's error
    as one line, or ``unchecked`` says why the child could not run the model as asked
    (CUDA did not load there: a setup problem, nothing known about the model).
    ``seconds``: wall time, the child's start included.
    """

    ok: bool
    provider: str | None = None
    stage: str | None = None
    signal: str | None = None
    exitcode: int | None = None
    error: str | None = None
    seconds: float = 0.0
    unchecked: str | None = None

    @property
    def crashed(self) -> bool:
        """The child died (a signal, or an exit without a word) rather than reporting an error."""
        return not self.ok and self.error is None and self.unchecked is None

    @property
    def killed(self) -> bool:
        """SIGKILL: what the kernel's out-of-memory killer sends (or a user's ``kill -9``),
        not something onnxruntime does to itself when it crashes."""
        return self.crashed and self.signal == "SIGKILL"

    @property
    def unknown(self) -> bool:
        """Nothing is known about the model: the child was killed, or could not run it as asked."""
        return self.killed or self.unchecked is not None

    def where(self, stage: bool = True) -> str:
        """" on cpu while creating the session" (empty when unknown)."""
        place = f" on {self.provider}" if self.provider else ""
        phrase = STAGES.get(self.stage or "") if stage else None
        return place + (f" {phrase}" if phrase else "")

    def describe(self, subject: str = "the model") -> str:
        """One line, e.g. "the model crashed onnxruntime (signal SIGSEGV) on cpu while creating the session"."""
        if self.ok:
            return f"{subject} ran on onnxruntime"
        if self.unchecked is not None:
            return f"{subject} not checked in a child process first{self.where(stage=False)}: {self.unchecked}"
        if self.killed:
            return (f"{subject} not checked in a child process first: unknown (possibly out of memory): "
                    f"the child was killed (signal SIGKILL){self.where()}")
        if self.crashed:
            how = f"signal {self.signal}" if self.signal else f"exit code {self.exitcode}"
            return f"{subject} crashed onnxruntime ({how}){self.where()}"
        verb = "cannot load" if self.stage == "load" else "cannot run"
        return f"onnxruntime {verb} {subject}{self.where(stage=False)}: {self.error}"


def error_line(text: str) -> str:
    """onnxruntime's error as one line: status and source-location prefixes dropped."""
    text = _SOURCE_PREFIX.sub("", _ORT_PREFIX.sub("", text.strip()))
    return one_line(text) if text else "unknown error"


@dataclass(frozen=True)
class Job:
    """One model to load and run in the child (see :func:`run_isolated` for the fields).

    ``model``: serialized bytes (written to a private temporary file for the child) or
    the path of a model file."""

    model: bytes | str | os.PathLike
    feeds: Mapping[str, np.ndarray] | None = None
    providers: Sequence[str] = ("cpu",)
    config: Mapping[str, str] | None = None
    optimization: str | None = None

    def request(self, folder: Path, index: int) -> dict[str, Any]:
        """What the child gets: the model as a path (bytes are written into ``folder``)."""
        if self.optimization is not None and self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}")
        if isinstance(self.model, bytes | bytearray | memoryview):
            path = folder / f"model-{index}.onnx"
            path.write_bytes(self.model)
        else:
            path = Path(self.model).absolute()
        return {"model": str(path), "feeds": dict(self.feeds) if self.feeds is not None else None,
                "providers": list(self.providers), "config": dict(self.config or {}),
                "optimization": self.optimization}


def run_isolated(
    model: bytes,
    feeds: Mapping[str, np.ndarray] | None = None,
    providers: Sequence[str] = ("cpu",),
    *,
    config: Mapping[str, str] | None = None,
    optimization: str | None = None,
    timeout: float | None = None,
) -> IsolatedRun:
    """Create a session for ``model`` on each provider ("cpu", "cuda") in a child process,
    and run ``feeds`` through it.

    Sessions get the gate's options (errors-only logging, default threads, ``config``
    session entries). ``optimization`` ("disable", "basic", "extended", "all") sets the
    graph optimization level; None keeps onnxruntime's default (all), as the gate and
    users run. Feeds are cast to each session's declared input types (a float16 input
    takes float32 data), as the gate does; with ``feeds`` None the sessions are only
    created. With ``timeout`` (seconds) a child still running is killed, and the result
    says so. Never raises for what the model does; :class:`IsolationUnavailable` when no
    child could run at all.
    """
    job = Job(model, feeds, tuple(providers), config, optimization)
    return run_isolated_many([job], timeout=timeout)[0]


def run_isolated_many(jobs: Sequence[Job], *, timeout: float | None = None) -> list[IsolatedRun]:
    """:func:`run_isolated` for several models, one child for all of them (a new one after a crash).

    ``timeout`` bounds each child. Each result's ``seconds`` is its share of the child's time.

    Raises:
        IsolationUnavailable: no child could be started, or it failed before the first model.
    """
    with scratch_dir("onnxopt-isolation-") as folder:
        requests = [(index, job.request(folder, index)) for index, job in enumerate(jobs)]
        return _run_requests(requests, len(jobs), timeout)


def _run_requests(requests: list[tuple[int, dict[str, Any]]], count: int, timeout: float | None) -> list[IsolatedRun]:
    results: dict[int, IsolatedRun] = {}
    while requests:
        start = time.perf_counter()
        messages, code, timed_out = _run_child(requests, timeout)
        seconds = time.perf_counter() - start
        current: int | None = None
        provider = stage = None
        finished: list[int] = []
        for message in messages:
            kind = message[0]
            if kind == "job":
                current, provider, stage = message[1], None, None
            elif kind == "stage":
                provider, stage = message[1], message[2]
            elif kind == "ok" and current is not None:
                results[current] = IsolatedRun(True)
                finished.append(current)
                current = None
            elif kind == "error" and current is not None:
                results[current] = IsolatedRun(False, provider, stage, exitcode=code, error=error_line(message[1]))
                finished.append(current)
                current = None
            elif kind == "unchecked" and current is not None:
                results[current] = IsolatedRun(False, provider, stage, exitcode=code, unchecked=message[1])
                finished.append(current)
                current = None
        if current is None and len(finished) < len(requests):  # died between jobs, or before the first
            current = next(index for index, _ in requests if index not in results)
        if current is not None:
            if timed_out:
                results[current] = IsolatedRun(False, provider, stage, exitcode=code,
                                               error=f"still running after {timeout:g} s (killed)")
            else:
                results[current] = IsolatedRun(False, provider, stage, signal=_signal_name(code), exitcode=code)
            finished.append(current)
        share = seconds / max(1, len(finished))
        for index in finished:
            results[index] = dataclasses.replace(results[index], seconds=share)
        requests = [(index, request) for index, request in requests if index not in results]
    return [results[index] for index in range(count)]


class IsolationUnavailable(RuntimeError):
    """The child could not start, or died before it took the first model (e.g. no usable
    ``sys.executable`` in an embedded interpreter): nothing is known about the models."""


def _signal_name(code: int | None) -> str | None:
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return str(-code)


def _run_child(requests: list[tuple[int, dict[str, Any]]], timeout: float | None) -> tuple[list[tuple], int | None, bool]:
    """Start the child on ``requests``; its messages, exit code, and whether it was killed for time."""
    data = pickle.dumps(requests, protocol=pickle.HIGHEST_PROTOCOL)
    env = dict(os.environ)
    env[_PATH_VARIABLE] = json.dumps([p if p else os.getcwd() for p in sys.path])
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # the child's numpy only casts feeds
    if not sys.executable:
        raise IsolationUnavailable("no Python executable to start a child process with (sys.executable is empty)")
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env,
        )
    except OSError as exc:
        raise IsolationUnavailable(f"cannot start a child process: {one_line(exc)}") from exc
    timed_out = False
    with process:  # closes the pipes and waits for the child on every exit path
        try:
            output, _ = process.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            timed_out = True
        except BrokenPipeError:  # the child died before it read the request
            output = process.stdout.read() if process.stdout else b""
            process.wait()
        finally:  # Ctrl-C or an unexpected error here: the child must not outlive this call
            if process.poll() is None:
                process.kill()
    messages = []
    stream = io.BytesIO(output)
    while True:
        try:
            messages.append(pickle.load(stream))
        except Exception:  # EOF, or a message cut short by the crash
            break
    if not messages and not timed_out:  # before the first model: the child itself failed
        raise IsolationUnavailable(f"the child process exited with code {process.returncode} before it started")
    return messages, process.returncode, timed_out


# ---------------------------------------------------------------- the gate's preflight


class CandidateFailed(PassFailed):
    """The optimized model crashes onnxruntime, or onnxruntime cannot load or run it,
    while the original runs: the passes' fault (exit 3, nothing written)."""

    def __init__(self, pass_name: str, reason: str, message: str):
        super().__init__(pass_name, reason)
        self.args = (message,)

    def __str__(self) -> str:
        return self.args[0]


def blame(passes: Sequence[PassReport]) -> tuple[str, str]:
    """(a pass name, "pass 'fp16'" / "passes 'simplify', 'fp16'"): the passes that changed the model."""
    changed = [p.name for p in passes if p.status == "modified"]
    if not changed:
        return "cleanup", "onnxopt's cleanup"
    quoted = ", ".join(f"'{name}'" for name in changed)
    return changed[-1], ("pass " if len(changed) == 1 else "passes ") + quoted


def first_batch(source: Any, batch_size: int) -> dict[str, np.ndarray] | None:
    """The first batch a :class:`~onnxopt.validate.sources.DataSource` yields (what the gate runs first)."""
    for batch in source.batches(batch_size):
        return dict(batch.feeds)
    return None


def check_candidate(
    original: bytes | None,
    candidate: bytes,
    feeds: Mapping[str, np.ndarray] | None,
    providers: Sequence[str],
    *,
    passes: Sequence[PassReport] | None = None,
    config: Mapping[str, str] | None = None,
    subject: str = "the optimized model",
    reference: str = "the input model",
) -> list[IsolatedRun]:
    """Preflight ``original`` and ``candidate`` as the gate will run them, in one child.

    ``feeds``: the gate's first batch; ``config``: the candidate's session config entries.
    ``passes``: the reports of the passes that made the candidate, named in the error;
    None when the candidate is a user's model (``compare``).

    A crash always raises. An error (onnxruntime cannot load or run a model) raises only
    when the candidate of a pipeline fails where the original runs — the passes' fault;
    other errors are left to the caller's in-process run, which says more (different
    inputs, data that does not fit, ...) and cannot crash where the child did not.
    What the child cannot tell is no one's fault, and only a warning: a child killed by
    SIGKILL (the out-of-memory killer, most likely: the child holds a second copy of the
    sessions), or CUDA that did not load in the child; the caller then runs that model
    in-process as it would without a child. Returns the child's results (original first,
    when given) otherwise.

    Raises:
        InputError: the original crashes onnxruntime, or the candidate does and ``passes``
            is None.
        CandidateFailed: the candidate crashes onnxruntime, or does not load or run while
            the original does (exit 3).
    """
    jobs = [Job(original, feeds, tuple(providers))] if original is not None else []
    jobs.append(Job(candidate, feeds, tuple(providers), config))
    try:
        results = run_isolated_many(jobs)
    except IsolationUnavailable as exc:  # the models run in-process as before, unprotected
        logger.warning("models not checked in a child process first: %s", exc)
        return []
    seconds = sum(r.seconds for r in results)
    logger.debug("preflight in a child process: %s in %.0f ms",
                 "; ".join("ok" if r.ok else r.describe() for r in results), seconds * 1000)
    subjects = [reference, subject] if original is not None else [subject]
    for name, run in zip(subjects, results, strict=True):
        if run.unknown:
            logger.warning("%s", run.describe(name))
    suffix = "; nothing written" if passes is not None else ""
    if original is not None and results[0].crashed and not results[0].unknown:
        raise InputError(results[0].describe(reference) + suffix)
    result = results[-1]
    if result.unknown:  # the caller runs it in-process, as without a child
        return results
    original_runs = original is None or results[0].ok
    if result.ok or (not result.crashed and (passes is None or not original_runs)):
        return results
    if passes is None:
        raise InputError(result.describe(subject))
    name, who = blame(passes)
    if result.crashed:
        message = f"{result.describe(subject)} ({who} changed it){suffix}"
    else:
        verb = "load" if result.stage == "load" else "run"
        message = f"{who} wrote a model onnxruntime cannot {verb}{result.where(stage=False)}: {result.error}{suffix}"
    raise CandidateFailed(name, result.describe(subject), message)
