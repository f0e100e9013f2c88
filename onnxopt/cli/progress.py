"""Progress on stderr for long commands (``optimize``, ``compare``), terminal or not.

* stderr is a terminal: a transient rich line (spinner, phase, done/total, elapsed) that
  disappears when the work is done.
* stderr is a pipe or a file (``onnxopt optimize … > log 2>&1``, CI logs): plain lines,

      optimize: pass 2/3 tucker — tucker: layer3.0.conv1 12/19, elapsed 1m05s, about 41s left

  at most one every :data:`PLAIN_INTERVAL_S` seconds while updates come in, the first one
  at once, the last state when the work ends (and a closing "finished" line); a heartbeat
  repeats the current state every :data:`HEARTBEAT_S` seconds when a phase reports nothing.
* ``-q``: nothing.

Time left = ``elapsed_in_task / done · (total − done)`` for the current task (same phase
and total); left out when the total is unknown or nothing is done yet.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Literal

PLAIN_INTERVAL_S = 5.0  # plain lines: at most one per this many seconds
HEARTBEAT_S = 30.0  # plain lines: repeat the current state when nothing came for this long

Mode = Literal["off", "plain", "rich"]


def format_duration(seconds: float) -> str:
    """``7.2s``, ``1m05s``, ``2h03m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_mode(stream: IO[str] | None = None) -> Mode:
    """``off`` with ``-q``, ``rich`` when stderr is a terminal, else ``plain``."""
    from onnxopt.cli.common import is_quiet

    if is_quiet():
        return "off"
    stream = stream if stream is not None else sys.stderr
    try:
        return "rich" if stream.isatty() else "plain"
    except (AttributeError, ValueError):
        return "plain"


class ProgressReporter:
    """Phases (``phase``) with optional ``done/total`` steps (``update``), rendered by mode.

    Use as a context manager; ``update`` has the signature of
    :attr:`onnxopt.passbase.PassContext.progress` (``message, done, total``; ``total`` 0
    means unknown), ``steps(done, total)`` that of the compare/gate batch callbacks.
    Thread-safe (passes may report from worker threads).
    """

    def __init__(
        self,
        label: str,
        *,
        mode: Mode | None = None,
        stream: IO[str] | None = None,
        interval: float | None = None,  # None: PLAIN_INTERVAL_S
        heartbeat: float | None = HEARTBEAT_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label = label
        self.mode: Mode = mode if mode is not None else progress_mode(stream)
        self._stream = stream
        self.interval = PLAIN_INTERVAL_S if interval is None else interval
        self.heartbeat = heartbeat
        self.clock = clock
        self.started = clock()
        self._lock = threading.RLock()
        self._phase = ""
        self._message = ""
        self._done = 0
        self._total = 0
        self._task_key: tuple[str, int] | None = None
        self._task_started = self.started
        self._task_done0 = 0
        self._last_print: float | None = None
        self._pending = False  # a state change not printed yet
        self._closed = False
        self._rich = None
        self._rich_task = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> ProgressReporter:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)

    def start(self) -> None:
        if self.mode == "rich":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            from onnxopt.cli.common import stderr_console

            self._rich = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=stderr_console(), transient=True,
            )
            self._rich_task = self._rich.add_task(self.label, total=None)
            self._rich.start()
        elif self.mode == "plain" and self.heartbeat:
            self._thread = threading.Thread(target=self._beat, name="onnxopt-progress", daemon=True)
            self._thread.start()

    def close(self, ok: bool = True) -> None:
        """Stop; in plain mode print the last state if it was held back, and a final line."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._rich is not None:
            self._rich.stop()
        elif self.mode == "plain":
            with self._lock:
                if self._pending:
                    self._write(self.line())
                if ok:
                    self._write(f"{self.label}: finished after {format_duration(self.clock() - self.started)}")

    # --- updates ---------------------------------------------------------------------

    def phase(self, name: str, done: int = 0, total: int = 0) -> None:
        """A new phase (``pass 2/3 tucker``, ``validating``), at ``done`` of ``total`` steps."""
        with self._lock:
            self._phase = name
            self._message = ""
            self._set(int(done), int(total or 0))

    def update(self, message: str, done: int, total: int) -> None:
        """A step within the phase: ``done`` of ``total`` (0: unknown) with a message."""
        with self._lock:
            self._message = message
            self._set(int(done), int(total or 0))

    def steps(self, done: int, total: int) -> None:
        """``done`` of ``total`` without a message (compare and gate batch callbacks)."""
        with self._lock:
            self._set(int(done), int(total or 0))

    def in_phase(self, name: str, done: int, total: int) -> None:
        """``steps`` within phase ``name``, entered on the first call (validation batches)."""
        with self._lock:
            if self._phase != name:
                self.phase(name, done, total)
            else:
                self.steps(done, total)

    def on_pass_start(self, opt_pass, index: int, count: int) -> None:
        """The ``on_pass_start`` callback of :func:`onnxopt.api.optimize`."""
        self.phase(f"pass {index + 1}/{count} {opt_pass.name}")

    # --- rendering -------------------------------------------------------------------

    def eta(self) -> float | None:
        """Seconds left in the current task, from its rate so far (None when unknown)."""
        with self._lock:
            if self._total <= 0 or self._done >= self._total:
                return None
            steps = self._done - self._task_done0
            if steps <= 0:
                return None
            per_step = (self.clock() - self._task_started) / steps
            return per_step * (self._total - self._done)

    def line(self) -> str:
        """The current state as one plain line."""
        with self._lock:
            parts = [p for p in (self._phase, self._message) if p]
            text = " — ".join(parts) if parts else "working"
            if self._total > 0:
                text += f" {self._done}/{self._total}"
            elif self._done > 0:
                text += f" {self._done}"
            text += f", elapsed {format_duration(self.clock() - self.started)}"
            left = self.eta()
            if left is not None:
                text += f", about {format_duration(left)} left"
            return f"{self.label}: {text}"

    def _set(self, done: int, total: int) -> None:
        key = (self._phase, total)
        if key != self._task_key or done < self._done:
            self._task_key = key
            self._task_started = self.clock()
            self._task_done0 = done
        self._done, self._total = done, total
        if self._closed:
            return
        if self._rich is not None:
            description = " — ".join(p for p in (self._phase, self._message) if p) or self.label
            self._rich.update(self._rich_task, description=description, completed=done, total=total or None)
        elif self.mode == "plain":
            self._pending = True
            now = self.clock()
            if self._last_print is None or now - self._last_print >= self.interval:
                self._write(self.line())

    def tick(self) -> None:
        """Heartbeat: print the current state if nothing was printed for ``heartbeat`` s."""
        with self._lock:
            if self._closed or self.mode != "plain" or not self.heartbeat:
                return
            if self._last_print is None or self.clock() - self._last_print >= self.heartbeat:
                self._write(self.line())

    def _beat(self) -> None:
        step = min(self.heartbeat or 1.0, 1.0)
        while not self._stop.wait(step):
            self.tick()

    def _write(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):  # stderr closed: progress is not worth an error
            pass
        self._last_print = self.clock()
        self._pending = False
