"""Progress when stderr is not a terminal (issue 12, item 5): plain, rate-limited lines.

``onnxopt optimize … > log 2>&1`` printed nothing for 25 minutes because progress was
only drawn on a terminal. The reporter is checked with a fake clock; the commands with
click's runner (stderr is not a terminal there) and with a real subprocess whose stderr
is a pipe.
"""

from __future__ import annotations

import io

import click
import pytest
from click.testing import CliRunner

from onnxopt.cli import progress as progress_mod
from onnxopt.cli.progress import ProgressReporter, format_duration, progress_mode
from tests.helpers import cli, tiny_conv_model


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _reporter(clock, interval=5.0, heartbeat=None):
    stream = io.StringIO()
    reporter = ProgressReporter("optimize", mode="plain", stream=stream, interval=interval,
                                heartbeat=heartbeat, clock=clock)
    return reporter, stream


class _Pass:
    name = "tucker"


def test_plain_lines_are_rate_limited_first_and_last_always():
    clock = FakeClock()
    reporter, stream = _reporter(clock)
    with reporter:
        reporter.on_pass_start(_Pass, 1, 3)  # t = 0: the first line, at once
        for step in range(1, 13):  # one update per second for 12 s
            clock.now += 1.0
            reporter.update(f"tucker: conv{step}", step, 20)
        clock.now += 0.5  # the last update (t = 12) was held back; close prints it
    lines = stream.getvalue().splitlines()
    assert lines[0] == "optimize: pass 2/3 tucker, elapsed 0.0s"
    # t = 5 and t = 10 within the 12 s, then the held-back last state, then "finished"
    assert lines[1].startswith("optimize: pass 2/3 tucker — tucker: conv5 5/20, elapsed 5.0s, about ")
    assert lines[2].startswith("optimize: pass 2/3 tucker — tucker: conv10 10/20, elapsed 10.0s")
    assert lines[3].startswith("optimize: pass 2/3 tucker — tucker: conv12 12/20, elapsed 12.5s")
    assert lines[4] == "optimize: finished after 12.5s"
    assert len(lines) == 5


def test_time_left_from_the_rate_of_the_current_task():
    clock = FakeClock()
    reporter, stream = _reporter(clock, interval=0.0)
    reporter.phase("validating: samples")
    reporter.steps(0, 100)
    clock.now += 10.0
    reporter.steps(25, 100)  # 25 samples in 10 s: 30 s for the other 75
    assert reporter.eta() == pytest.approx(30.0)
    assert stream.getvalue().splitlines()[-1] == (
        "optimize: validating: samples 25/100, elapsed 10.0s, about 30.0s left"
    )
    reporter.phase("next")  # a new task: no estimate until a step is done
    assert reporter.eta() is None
    reporter.update("unknown total", 3, 0)
    assert reporter.eta() is None and "left" not in reporter.line()


def test_heartbeat_repeats_the_state_when_a_phase_is_silent():
    clock = FakeClock()
    reporter, stream = _reporter(clock, heartbeat=30.0)
    reporter.on_pass_start(_Pass, 0, 1)
    clock.now += 29.0
    reporter.tick()
    assert len(stream.getvalue().splitlines()) == 1
    clock.now += 1.0
    reporter.tick()
    assert stream.getvalue().splitlines()[-1] == "optimize: pass 1/1 tucker, elapsed 30.0s"


def test_format_duration():
    assert format_duration(7.24) == "7.2s"
    assert format_duration(65) == "1m05s"
    assert format_duration(2 * 3600 + 3 * 60) == "2h03m"


def test_mode_follows_quiet_and_the_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    @click.command()
    @click.option("-q", is_flag=True)
    def probe(q):
        click.get_current_context().meta["onnxopt.quiet"] = q
        click.echo(f"{progress_mode(io.StringIO())} {progress_mode(Tty())}")

    assert CliRunner().invoke(probe, []).output.strip() == "plain rich"
    assert CliRunner().invoke(probe, ["-q"]).output.strip() == "off off"
    quiet = ProgressReporter("x", mode="off", stream=io.StringIO())
    with quiet:
        quiet.phase("a")
        quiet.update("b", 1, 2)
    assert quiet._stream.getvalue() == ""


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_conv_model().SerializeToString())
    return path


def test_optimize_prints_plain_progress_to_a_pipe(tmp_path, model_path):
    """A real process, stderr to a pipe: the pass and the validation are reported."""
    out = tmp_path / "out.onnx"
    result = cli("optimize", str(model_path), "--passes", "simplify,fold-constants", "-o", str(out))
    assert result.returncode == 0, result.stderr.decode()
    lines = [line for line in result.stderr.decode().splitlines() if line.startswith("optimize: ")]
    assert lines[0].startswith("optimize: pass 1/2 simplify, elapsed ")
    assert lines[-1].startswith("optimize: finished after ")
    assert any("validating: samples 8/8" in line for line in lines), lines
    quiet = cli("optimize", str(model_path), "--passes", "simplify", "-o", str(out), "-q")
    assert quiet.returncode == 0
    assert "optimize: " not in quiet.stderr.decode()


def test_optimize_progress_interval(monkeypatch, tmp_path, model_path):
    """In-process (click's runner): with no rate limit every pass start is a line."""
    from onnxopt.cli import optimize as optimize_cli

    monkeypatch.setattr(progress_mod, "PLAIN_INTERVAL_S", 0.0)
    out = tmp_path / "out.onnx"

    def run(*extra):
        return CliRunner().invoke(
            optimize_cli.command, [str(model_path), "--passes", "simplify,fold-constants", "-o", str(out), *extra]
        )

    result = run()
    assert result.exit_code == 0, result.output
    stderr = result.stderr
    assert "optimize: pass 1/2 simplify" in stderr
    assert "optimize: finished after" in stderr
    assert "optimize: " not in run("-q").stderr


def test_compare_prints_plain_progress(tmp_path, model_path):
    from onnxopt.cli import compare as compare_cli

    result = CliRunner().invoke(compare_cli.command, [str(model_path), str(model_path)])
    assert result.exit_code == 0, result.output
    assert "compare: samples 0/8, elapsed" in result.stderr
    assert "compare: finished after" in result.stderr
    quiet = CliRunner().invoke(compare_cli.command, [str(model_path), str(model_path), "-q"])
    assert "compare: " not in quiet.stderr
