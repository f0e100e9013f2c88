"""Crash isolation (onnxopt.runtime.isolation): a model that crashes onnxruntime becomes one line, not a dead process."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxopt.errors import EXIT_PASS_FAILED, EXIT_USAGE, InputError, PassFailed
from onnxopt.report import PassReport
from onnxopt.runtime import isolation
from onnxopt.runtime.isolation import (
    CandidateFailed,
    IsolatedRun,
    Job,
    check_candidate,
    run_isolated,
    run_isolated_many,
)
from tests.helpers import REPO, make_model
from tests.quant.fp16_probes import PROBES
from tests.quant.models import conv_stack

FEEDS = {"x": np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)}


def crashing_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A float16 Transpose([1,0,2]) → MatMul: onnxruntime 1.31's CPU provider dies with SIGSEGV creating its session."""
    return PROBES["Transpose [1,0,2] -> MatMul"].build(np.float16)


def float32_twin() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    return PROBES["Transpose [1,0,2] -> MatMul"].build(np.float32)


@pytest.fixture(scope="module")
def crash_is_real():
    model, feeds = crashing_model()
    result = run_isolated(model.SerializeToString(), feeds)
    if result.ok:
        pytest.skip("this onnxruntime no longer crashes on a float16 Transpose([1,0,2]) → MatMul")
    return result


def _python(script: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd or REPO)


# ---------------------------------------------------------------- run_isolated


def test_a_model_that_runs_is_ok_and_the_child_costs_little():
    model = conv_stack().SerializeToString()
    result = run_isolated(model, FEEDS)
    assert result.ok and not result.crashed
    timings = [run_isolated(model, FEEDS).seconds for _ in range(3)]
    print(f"preflight of a small conv stack: {min(timings) * 1000:.0f} ms (best of 3)")
    assert min(timings) < 5.0  # an interpreter start and two imports; ~0.3 s on a busy 2-core machine


def test_a_native_crash_is_one_line_with_the_signal_and_where(crash_is_real):
    assert crash_is_real.crashed and crash_is_real.signal == "SIGSEGV" and crash_is_real.exitcode == -11
    assert (crash_is_real.provider, crash_is_real.stage) == ("cpu", "load")
    assert crash_is_real.describe("the optimized model") == (
        "the optimized model crashed onnxruntime (signal SIGSEGV) on cpu while creating the session")


def test_a_signal_is_named_whatever_kills_the_child(monkeypatch):
    """Independent of onnxruntime's bugs: a child that kills itself while running."""
    child = isolation._CHILD.replace("        session.run(None, ready)",
                                     "        import signal; os.kill(os.getpid(), signal.SIGABRT)")
    assert child != isolation._CHILD
    monkeypatch.setattr(isolation, "_CHILD", child)
    result = run_isolated(conv_stack().SerializeToString(), FEEDS)
    assert (result.signal, result.provider, result.stage) == ("SIGABRT", "cpu", "run")
    assert result.describe() == "the model crashed onnxruntime (signal SIGABRT) on cpu while running the first batch"


def test_load_and_run_errors_are_reported_not_crashes():
    model = conv_stack().SerializeToString()
    broken = run_isolated(model[: len(model) // 2], FEEDS)
    assert not broken.ok and not broken.crashed and broken.stage == "load"
    assert broken.describe().startswith("onnxruntime cannot load the model on cpu: ")
    wrong = run_isolated(model, {"x": np.zeros((1, 3, 9, 8), np.float32)})
    assert wrong.stage == "run" and "invalid dimensions" in wrong.error and "\n" not in wrong.error
    assert wrong.describe().startswith("onnxruntime cannot run the model on cpu: ")


def test_feeds_are_cast_to_float16_inputs():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2])])
    assert run_isolated(make_model(graph).SerializeToString(), {"x": np.ones(2, np.float32)}).ok


def test_many_models_share_a_child_and_a_crash_only_takes_its_own(crash_is_real):
    ok = conv_stack().SerializeToString()
    crash, feeds = crashing_model()
    results = run_isolated_many([Job(ok, FEEDS), Job(crash.SerializeToString(), feeds), Job(ok, FEEDS),
                                 Job(b"not a model")])
    assert [r.ok for r in results] == [True, False, True, False]
    assert results[1].signal == "SIGSEGV" and results[3].stage == "load" and not results[3].crashed


def test_a_hanging_child_is_killed_after_the_timeout(monkeypatch):
    child = isolation._CHILD.replace("        session.run(None, ready)", "        import time; time.sleep(60)")
    monkeypatch.setattr(isolation, "_CHILD", child)
    result = run_isolated(conv_stack().SerializeToString(), FEEDS, timeout=3)
    assert not result.ok and result.error == "still running after 3 s (killed)" and result.stage == "run"


def test_no_usable_child_is_not_blamed_on_the_model(monkeypatch, caplog):
    """An embedded interpreter without sys.executable, or a child that fails before the first model."""
    model = conv_stack().SerializeToString()
    monkeypatch.setattr(isolation, "_CHILD", "import sys; sys.exit(3)")
    with pytest.raises(isolation.IsolationUnavailable, match="exited with code 3 before it started"):
        run_isolated(model, FEEDS)
    monkeypatch.setattr(isolation.sys, "executable", "")
    with pytest.raises(isolation.IsolationUnavailable, match="sys.executable is empty"):
        run_isolated(model, FEEDS)
    # the CLI tests leave the "onnxopt" logger at ERROR (-q): this test's warning must not depend on them
    caplog.set_level(logging.WARNING, logger="onnxopt.runtime.isolation")
    assert check_candidate(model, model, FEEDS, ["cpu"], passes=[]) == []  # the gate runs them as before
    assert "not checked in a child process first" in caplog.text


def test_a_child_killed_by_sigkill_is_unknown_not_a_crash_of_the_model(monkeypatch, caplog):
    """SIGKILL is what the out-of-memory killer sends: nothing is known about the model."""
    child = isolation._CHILD.replace("        session.run(None, ready)",
                                     "        import signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert child != isolation._CHILD
    monkeypatch.setattr(isolation, "_CHILD", child)
    caplog.set_level(logging.WARNING, logger="onnxopt.runtime.isolation")
    model = conv_stack().SerializeToString()
    result = run_isolated(model, FEEDS)
    assert result.killed and result.unknown and result.signal == "SIGKILL"
    assert result.describe("the optimized model") == (
        "the optimized model not checked in a child process first: unknown (possibly out of memory): "
        "the child was killed (signal SIGKILL) on cpu while running the first batch")
    # not blamed on the passes (it was exit 3), nor on the input: the gate runs both in-process
    results = check_candidate(model, model, FEEDS, ["cpu"], passes=[_modified("simplify")])
    assert [r.killed for r in results] == [True, True]
    assert "the optimized model not checked in a child process first: unknown (possibly out of memory)" in caplog.text
    assert "the input model not checked in a child process first" in caplog.text


def test_a_real_crash_of_the_candidate_still_raises_when_the_original_was_killed(monkeypatch):
    """The original OOM-killed, the candidate crashing: running the candidate here would kill this process."""
    outcomes = [IsolatedRun(False, "cpu", "load", signal="SIGKILL", exitcode=-9),
                IsolatedRun(False, "cpu", "load", signal="SIGSEGV", exitcode=-11)]
    monkeypatch.setattr(isolation, "run_isolated_many", lambda jobs, timeout=None: outcomes)
    with pytest.raises(CandidateFailed, match=r"crashed onnxruntime \(signal SIGSEGV\)"):
        check_candidate(b"a", b"b", FEEDS, ["cpu"], passes=[_modified("fp16")])


def test_models_go_to_the_child_as_files_in_a_private_folder_removed_afterwards(monkeypatch):
    """Not pickled: the parent held a pickled copy of every model, and the child all of them at once."""
    seen = []
    real = isolation._run_child

    def spy(requests, timeout):
        for _, request in requests:
            path = request["model"]
            assert isinstance(path, str) and isolation.os.path.isfile(path)
            seen.append(path)
        return real(requests, timeout)

    monkeypatch.setattr(isolation, "_run_child", spy)
    model = conv_stack().SerializeToString()
    assert [r.ok for r in run_isolated_many([Job(model, FEEDS), Job(model, FEEDS)])] == [True, True]
    assert len(set(seen)) == 2
    assert not any(isolation.os.path.exists(path) for path in seen)
    folder = isolation.os.path.dirname(seen[0])
    assert not isolation.os.path.exists(folder) and "onnxopt-isolation-" in folder


def test_a_model_file_is_passed_as_its_path(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(conv_stack().SerializeToString())
    assert run_isolated(path, FEEDS).ok and run_isolated(str(path), FEEDS).ok


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_the_child_is_killed_and_reaped_when_the_parent_is_interrupted(monkeypatch, interruption):
    started = []

    class Interrupted(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

        def communicate(self, *args, **kwargs):
            raise interruption("Ctrl-C")

    monkeypatch.setattr(isolation.subprocess, "Popen", Interrupted)
    try:
        with pytest.raises(interruption):
            run_isolated(conv_stack().SerializeToString(), FEEDS)
        assert len(started) == 1
        assert started[0].returncode == -signal.SIGKILL  # killed, and waited for (no zombie)
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


FAKE_ONNXRUNTIME = """
import json, os

def _log(*entry):
    with open(os.environ["FAKE_ORT_LOG"], "a") as f:
        f.write(json.dumps(entry) + "\\n")

def preload_dlls():
    print("preloading: this must not reach the parent's stream")
    _log("preload_dlls")

def get_available_providers():
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]

class GraphOptimizationLevel:
    ORT_DISABLE_ALL = ORT_ENABLE_BASIC = ORT_ENABLE_EXTENDED = ORT_ENABLE_ALL = 0

class SessionOptions:
    def add_session_config_entry(self, key, value):
        pass

class _Info:
    name, type = "x", "tensor(float)"

class InferenceSession:
    def __init__(self, model, options, providers):
        _log("session", model if isinstance(model, str) else "bytes", providers)
        loads = os.environ.get("FAKE_ORT_CUDA_LOADS") == "1"
        self._providers = [p if isinstance(p, str) else p[0] for p in providers
                           if loads or (p if isinstance(p, str) else p[0]) != "CUDAExecutionProvider"]

    def get_providers(self):
        return self._providers

    def get_inputs(self):
        return [_Info()]

    def run(self, names, feeds):
        _log("run", self._providers)
        return []
"""


@pytest.fixture
def fake_onnxruntime(tmp_path, monkeypatch):
    """The child imports a stand-in onnxruntime (it gets the parent's sys.path): CUDA without a GPU."""
    package = tmp_path / "fake_ort"
    (package / "onnxruntime").mkdir(parents=True)
    (package / "onnxruntime" / "__init__.py").write_text(FAKE_ONNXRUNTIME)
    log = tmp_path / "ort.log"
    monkeypatch.setenv("FAKE_ORT_LOG", str(log))
    monkeypatch.setattr(isolation.sys, "path", [str(package), *sys.path])

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return calls


def test_cuda_in_the_child_preloads_libraries_and_computes_float32_without_tf32(fake_onnxruntime, monkeypatch):
    monkeypatch.setenv("FAKE_ORT_CUDA_LOADS", "1")
    result = run_isolated(conv_stack().SerializeToString(), FEEDS, ["cpu", "cuda"])
    assert result.ok, result
    calls = fake_onnxruntime()
    assert calls[0] == ["preload_dlls"]  # before any session, and its print did not corrupt the messages
    sessions = [call[2] for call in calls if call[0] == "session"]
    assert sessions == [["CPUExecutionProvider"],
                        [["CUDAExecutionProvider", {"use_tf32": "0"}], "CPUExecutionProvider"]]
    assert ["run", ["CUDAExecutionProvider", "CPUExecutionProvider"]] in calls


def test_cpu_only_children_do_not_preload_cuda(fake_onnxruntime):
    assert run_isolated(conv_stack().SerializeToString(), FEEDS, ["cpu"]).ok
    assert ["preload_dlls"] not in fake_onnxruntime()


def test_cuda_that_does_not_load_in_the_child_is_a_setup_problem_not_the_models(fake_onnxruntime, caplog):
    """CUDA fell back to the CPU in the child: the model was not checked on CUDA, and no one is blamed."""
    caplog.set_level(logging.WARNING, logger="onnxopt.runtime.isolation")
    model = conv_stack().SerializeToString()
    result = run_isolated(model, FEEDS, ["cuda"])
    assert not result.ok and not result.crashed and result.unknown and result.error is None
    assert (result.provider, result.stage) == ("cuda", "load")
    assert result.describe() == ("the model not checked in a child process first on cuda: "
                                 "CUDA did not load there (its session fell back to the CPU)")
    assert not any(call[0] == "run" for call in fake_onnxruntime())  # never run on the CPU instead
    results = check_candidate(model, model, FEEDS, ["cuda"], passes=[_modified("fp16")])  # no CandidateFailed
    assert [r.unknown for r in results] == [True, True]
    assert "the optimized model not checked in a child process first on cuda: CUDA did not load" in caplog.text


def test_cuda_with_this_onnxruntime_runs_on_cuda_or_says_it_did_not():
    """The real onnxruntime: where CUDA does not load (no GPU, no CUDA libraries) the child says so."""
    from onnxopt.runtime import cuda_status

    result = run_isolated(conv_stack().SerializeToString(), FEEDS, ["cuda"])
    if cuda_status()[0]:
        assert result.ok, result
    else:
        assert result.unknown and result.unchecked.startswith("CUDA did not load there"), result


def test_the_callers_main_module_is_not_run_again(tmp_path):
    """multiprocessing's spawn/forkserver re-import __main__: a script without a guard would run twice."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from onnxopt.runtime.isolation import run_isolated
        from tests.quant.models import conv_stack
        print("main ran")
        print(run_isolated(conv_stack().SerializeToString(), {{"x": np.zeros((1, 3, 8, 8), np.float32)}}).ok)
    """))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert run.stdout.split() == ["main", "ran", "True"], run.stderr


# ---------------------------------------------------------------- check_candidate (optimize's preflight)


def _modified(name: str) -> PassReport:
    report = PassReport(name)
    report.modified = True
    return report


def test_a_crashing_candidate_is_the_passes_fault(crash_is_real):
    original, feeds = float32_twin()
    candidate, _ = crashing_model()
    with pytest.raises(CandidateFailed) as caught:
        check_candidate(original.SerializeToString(), candidate.SerializeToString(), feeds, ["cpu"],
                        passes=[_modified("simplify"), PassReport("svd"), _modified("fp16")])
    assert isinstance(caught.value, PassFailed) and caught.value.exit_code == EXIT_PASS_FAILED
    assert caught.value.pass_name == "fp16"
    assert str(caught.value) == ("the optimized model crashed onnxruntime (signal SIGSEGV) on cpu while creating the "
                                 "session (passes 'simplify', 'fp16' changed it); nothing written")


def test_a_crashing_input_is_the_inputs_fault(crash_is_real):
    model, feeds = crashing_model()
    data = model.SerializeToString()
    with pytest.raises(InputError, match=r"^the input model crashed onnxruntime \(signal SIGSEGV\) on cpu") as caught:
        check_candidate(data, data, feeds, ["cpu"], passes=[])
    assert caught.value.exit_code == EXIT_USAGE


def test_a_candidate_that_does_not_load_names_the_pass():
    original = conv_stack().SerializeToString()
    with pytest.raises(CandidateFailed, match=r"^pass 'fp16' wrote a model onnxruntime cannot load on cpu: "):
        check_candidate(original, original[:100], FEEDS, ["cpu"], passes=[_modified("fp16")])
    results = check_candidate(original, original, FEEDS, ["cpu"], passes=[])
    assert [r.ok for r in results] == [True, True]
    # compare's models are the user's: errors are left to compare, which says more (different inputs, ...)
    results = check_candidate(original, original[:100], FEEDS, ["cpu"], subject="b.onnx")
    assert [r.ok for r in results] == [True, False]


def test_optimize_refuses_a_model_onnxruntime_cannot_load_as_a_pass_failure(monkeypatch):
    """fp16 made a model onnxruntime cannot load: exit 3 naming the pass (it was exit 2, a "usage error")."""
    import onnxopt
    from onnxopt import api
    from onnxopt.passes import fp16 as fp16_module

    graph = helper.make_graph(
        [helper.make_node("Relu", ["b"], ["boxes"]), helper.make_node("Relu", ["s"], ["scores"]),
         helper.make_node("NonMaxSuppression", ["boxes", "scores", "k"], ["selected"], name="nms")],
        "nms", [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 4]),
                helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, 4])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
        [helper.make_tensor("k", TensorProto.INT64, [1], [2])])
    model = make_model(graph)
    # A pass that converts NonMaxSuppression (which has no float16 form), and whose own checks miss it:
    monkeypatch.setattr(fp16_module, "default_block_ops", lambda: ())
    from onnxopt.passes import _fp16_convert

    monkeypatch.setattr(_fp16_convert, "unify_input_types", lambda model, blocked: None)
    monkeypatch.setattr(fp16_module.qc, "check_loads", lambda proto, feeds=None: None)
    monkeypatch.setattr(fp16_module.ConvertFloat16Pass, "_run_isolated", lambda self, base, converted: None)
    settings = api.gate_settings("fp16", api.data_source(model))
    with pytest.raises(CandidateFailed) as caught:
        onnxopt.optimize(model, "fp16", validation=settings)
    assert caught.value.exit_code == EXIT_PASS_FAILED
    message = str(caught.value)
    assert message.startswith("pass 'fp16' wrote a model onnxruntime cannot load on cpu: ")
    assert "NonMaxSuppression" in message and message.endswith("; nothing written")


# ---------------------------------------------------------------- the CLI never dies by a signal


def test_cli_optimize_a_crashing_candidate_exits_3_with_one_line(tmp_path, crash_is_real):
    """The fp16 pass with its Transpose rule and its own check switched off writes the crashing model."""
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(float32_twin()[0], str(path))
    run = _python("""
        import sys
        from onnxopt.passes.fp16 import ConvertFloat16Pass
        ConvertFloat16Pass._block_crashing_transposes = lambda self, model: {}
        ConvertFloat16Pass._run_isolated = lambda self, base, converted: None
        from onnxopt.cli.main import main
        main(["optimize", sys.argv[1], "--passes", "fp16", "-o", sys.argv[2], "--input-shape", "x:2x3x4", "-q"])
    """, str(path), str(out))
    assert run.returncode == EXIT_PASS_FAILED, (run.returncode, run.stderr)
    assert run.stderr.strip() == ("onnxopt: error: the optimized model crashed onnxruntime (signal SIGSEGV) on cpu "
                                  "while creating the session (pass 'fp16' changed it); nothing written")
    assert not out.exists()


def test_cli_optimize_an_input_that_crashes_onnxruntime_exits_2(tmp_path, crash_is_real):
    path, out = tmp_path / "m16.onnx", tmp_path / "out.onnx"
    onnx.save(crashing_model()[0], str(path))
    run = subprocess.run([sys.executable, "-m", "onnxopt", "optimize", str(path), "--passes", "fold-constants",
                          "-o", str(out), "--input-shape", "x:2x3x4", "-q"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == EXIT_USAGE, (run.returncode, run.stderr)
    assert run.stderr.strip() == ("onnxopt: error: the input model crashed onnxruntime (signal SIGSEGV) on cpu "
                                  "while creating the session; nothing written")
    assert not out.exists()


def test_cli_compare_with_a_model_that_crashes_onnxruntime_exits_2(tmp_path, crash_is_real):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(float32_twin()[0], str(a))
    onnx.save(crashing_model()[0], str(b))
    run = subprocess.run([sys.executable, "-m", "onnxopt", "compare", str(a), str(b), "--input-shape", "x:2x3x4", "-q"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == EXIT_USAGE, (run.returncode, run.stderr)
    assert run.stderr.strip() == (f"onnxopt: error: {b} crashed onnxruntime (signal SIGSEGV) on cpu while creating "
                                  "the session")


def test_isolated_run_describes_success():
    assert IsolatedRun(True).describe() == "the model ran on onnxruntime"
