"""Tests for onnxopt.bench.latency: interleaving, statistics, comparisons, errors.

No assertion here depends on how fast anything runs (the machine is noisy): timings are
checked for consistency (ordering of percentiles, counts), and the interleaving and the
ratio arithmetic are checked with fake sessions and synthetic times.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.bench import latency
from onnxopt.bench.latency import BenchResult, LatencyStats, bench_models
from onnxopt.errors import InputError, UsageError
from onnxopt.runtime import cuda_status


def _model(scale: float = 2.0) -> bytes:
    """y = x * scale, [N, 4] float."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        "mul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("s", TensorProto.FLOAT, [1], [scale])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


FEEDS = {"x": np.ones((3, 4), dtype=np.float32)}


class _FakeInput:
    def __init__(self, name: str):
        self.name = name


class _FakeSession:
    """Records every run in a shared log, so the run order can be checked."""

    def __init__(self, label: str, log: list[str]):
        self.label = label
        self.log = log

    def get_inputs(self):
        return [_FakeInput("x")]

    def get_outputs(self):
        return [_FakeInput("y")]

    def run(self, output_names, feeds):
        self.log.append(self.label)
        return [feeds["x"]]


@pytest.fixture
def fake_sessions(monkeypatch):
    """create_session returns fake sessions labelled A, B, C ... in creation order."""
    log: list[str] = []
    created: list[str] = []

    def fake_create(model, provider="cpu", *, threads=None, **_):
        label = chr(ord("A") + len(created))
        created.append(label)
        return _FakeSession(label, log)

    monkeypatch.setattr(latency, "create_session", fake_create)
    return log


@pytest.fixture
def session_kwargs(monkeypatch):
    """Fake sessions; returns the keyword arguments each create_session call got."""
    calls: list[dict] = []

    def fake_create(model, provider="cpu", **kwargs):
        calls.append(kwargs)
        return _FakeSession(chr(ord("A") + len(calls) - 1), [])

    monkeypatch.setattr(latency, "create_session", fake_create)
    return calls


class _FakeClock:
    """perf_counter advances ``step`` seconds per reading; perf_counter_ns 1 µs per reading."""

    def __init__(self, step: float):
        self.ticks = 0
        self.step = step
        self.ns = 0

    def perf_counter(self) -> float:
        self.ticks += 1
        return self.ticks * self.step

    def perf_counter_ns(self) -> int:
        self.ns += 1000
        return self.ns


def test_single_model_result():
    model = _model()
    result = bench_models([model], FEEDS, warmup=1, runs=7, threads=1)
    assert isinstance(result, BenchResult)
    assert result.rounds == 7
    assert result.batch_size == 3
    assert result.comparisons == []
    assert result.speedup is None
    assert not result.interleaved
    (bench,) = result.models
    assert bench.size_bytes == len(model)
    assert len(bench.times_ms) == 7
    s = bench.stats
    assert s.runs == 7
    assert 0 < s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
    assert s.min_ms <= s.mean_ms <= s.max_ms
    assert s.throughput == pytest.approx(3 / (s.p50_ms / 1000))
    assert result.peak_rss_bytes is None or result.peak_rss_bytes > 0


def test_two_models_to_dict_is_json(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_model(3.0))
    result = bench_models([_model(), str(path)], FEEDS, warmup=1, runs=5)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["interleaved"] is True
    assert [m["runs"] for m in data["models"]] == [5, 5]
    assert data["models"][1]["label"] == str(path)
    assert data["models"][1]["size_bytes"] == path.stat().st_size
    (comparison,) = data["comparisons"]
    assert comparison["baseline"] == 0 and comparison["other"] == 1
    assert comparison["speedup"] == pytest.approx(data["models"][0]["p50_ms"] / data["models"][1]["p50_ms"])
    lo, hi = comparison["ci95"]
    assert lo <= hi
    assert comparison["ratio_p10"] <= comparison["ratio_p90"]
    assert "times_ms" not in data["models"][0]
    assert len(result.to_dict(include_times=True)["models"][0]["times_ms"]) == 5


def test_runs_are_interleaved_and_alternate(fake_sessions):
    bench_models([b"a", b"b"], FEEDS, warmup=2, runs=4)
    # warm-up: A twice, B twice, then one interleaved warm-up pass A B
    assert fake_sessions[:6] == ["A", "A", "B", "B", "A", "B"]
    # timed rounds alternate which model goes first
    assert fake_sessions[6:] == ["A", "B", "B", "A", "A", "B", "B", "A"]


def test_three_models_rotate(fake_sessions):
    bench_models([b"a", b"b", b"c"], FEEDS, warmup=0, runs=3)
    assert fake_sessions == ["A", "B", "C", "B", "C", "A", "C", "A", "B"]


def test_min_time_extends_rounds(fake_sessions, monkeypatch):
    """With a fake clock advancing 10 ms per reading, 0.1 s of min_time needs ~10 rounds."""
    ticks = iter(range(10**6))

    class FakeTime:
        @staticmethod
        def perf_counter() -> float:
            return next(ticks) * 0.01

        @staticmethod
        def perf_counter_ns() -> int:
            return 0

    monkeypatch.setattr(latency, "time", FakeTime)
    result = bench_models([b"a"], FEEDS, warmup=0, runs=2, min_time=0.1)
    assert 5 <= result.rounds <= 12
    assert len(result.models[0].times_ms) == result.rounds
    short = bench_models([b"a"], FEEDS, warmup=0, runs=2, min_time=None)
    assert short.rounds == 2


def test_labels(fake_sessions):
    result = bench_models([b"a", b"b"], FEEDS, warmup=0, runs=1, labels=["old", "new"])
    assert [m.label for m in result.models] == ["old", "new"]
    with pytest.raises(UsageError):
        bench_models([b"a", b"b"], FEEDS, runs=1, labels=["only one"])


def test_comparison_arithmetic():
    a = np.array([2.0, 4.0, 6.0, 8.0])
    b = a / 2.0
    c = latency._comparison([a, b], 0, 1)
    assert c.speedup == pytest.approx(2.0)
    assert c.ratio_p10 == pytest.approx(2.0) and c.ratio_p90 == pytest.approx(2.0)
    assert c.ratio_p50 == pytest.approx(2.0)
    assert latency._comparison([a, np.array([1.0, 1.0, 6.0, 4.0])], 0, 1).ratio_p50 == pytest.approx(2.0)
    assert c.ci95 == pytest.approx((2.0, 2.0))
    slower = latency._comparison([a, a * 4], 0, 1)
    assert slower.speedup == pytest.approx(0.25)


def test_comparison_spread_covers_the_ratio():
    rng = np.random.default_rng(1)
    a = 1.0 + rng.random(200)
    b = 1.0 + rng.random(200)
    c = latency._comparison([a, b], 0, 1)
    assert c.ratio_p10 < c.speedup < c.ratio_p90
    assert c.ci95[0] <= c.speedup <= c.ci95[1]


def test_latency_stats_from_times():
    s = LatencyStats.from_times([1.0, 2.0, 3.0, 4.0, 100.0], batch_size=2)
    assert s.p50_ms == 3.0
    assert s.min_ms == 1.0 and s.max_ms == 100.0
    assert s.mean_ms == pytest.approx(22.0)
    assert s.throughput == pytest.approx(2 / 0.003)
    with pytest.raises(ValueError):
        LatencyStats.from_times([], batch_size=1)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"runs": 0}, UsageError),
        ({"warmup": -1}, UsageError),
        ({"min_time": -1.0}, UsageError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        bench_models([_model()], FEEDS, **kwargs)


def test_no_models():
    with pytest.raises(UsageError):
        bench_models([], FEEDS)


def test_missing_input_is_input_error():
    with pytest.raises(InputError, match="x"):
        bench_models([_model()], {"other": np.ones((1, 4), np.float32)}, runs=1)


def test_extra_feeds_are_ignored():
    feeds = {**FEEDS, "unused": np.zeros(2, np.float32)}
    result = bench_models([_model()], feeds, warmup=0, runs=2)
    assert result.models[0].stats.runs == 2


def test_bad_model_is_input_error():
    with pytest.raises(InputError, match="onnxruntime cannot load the model"):
        bench_models([b"not a model"], FEEDS, runs=1)


def test_model_size_with_external_data(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        "mul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4096])],
        [numpy_helper.from_array(np.ones(4096, np.float32), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="ext.data")
    size = latency.model_size_bytes(str(path))
    assert size == path.stat().st_size + (tmp_path / "ext.data").stat().st_size
    assert size > 4096 * 4
    assert latency.model_size_bytes(str(tmp_path / "missing.onnx")) is None


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_status()[0], reason=f"CUDA does not load: {cuda_status()[1]}")
def test_cuda_io_binding():
    result = bench_models([_model()], FEEDS, provider="cuda", warmup=1, runs=3)
    assert result.provider == "cuda"
    assert result.models[0].stats.runs == 3


# --- thread spinning and sampling until the interval is narrow (issue 12, item 4) -------


SPIN_OFF = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def test_interleaved_sessions_do_not_spin(session_kwargs):
    """Two models: every session is created with intra- and inter-op spinning off."""
    result = bench_models([b"a", b"b"], FEEDS, warmup=0, runs=2)
    assert [call.get("config") for call in session_kwargs] == [SPIN_OFF, SPIN_OFF]
    assert result.spinning is False
    assert result.to_dict()["spinning"] is False


def test_single_model_keeps_onnxruntime_spinning(session_kwargs):
    result = bench_models([b"a"], FEEDS, warmup=0, runs=2)
    assert session_kwargs[0].get("config") is None
    assert result.spinning is None


def test_spinning_can_be_forced(session_kwargs):
    on = bench_models([b"a", b"b"], FEEDS, warmup=0, runs=1, spinning=True)
    assert [call.get("config") for call in session_kwargs] == [None, None]
    assert on.spinning is True
    session_kwargs.clear()
    bench_models([b"a"], FEEDS, warmup=0, runs=1, spinning=False)
    assert session_kwargs[0]["config"] == SPIN_OFF


def test_no_spinning_with_real_sessions():
    """The config entries are ones onnxruntime accepts (a session is really created)."""
    result = bench_models([_model(), _model()], FEEDS, warmup=1, runs=3)
    assert result.spinning is False
    assert result.speedup > 0


def test_target_ci_keeps_sampling_until_narrow(fake_sessions, monkeypatch):
    """Rounds continue past ``runs`` until the interim interval is narrow enough."""
    monkeypatch.setattr(latency, "time", _FakeClock(0.01))
    widths = iter([0.5, 0.2, 0.05, 0.01])
    checks = []

    def fake_width(times):
        checks.append(len(times[0]))
        return next(widths)

    monkeypatch.setattr(latency, "_interim_ci_width", fake_width)
    result = bench_models([b"a", b"b"], FEEDS, warmup=0, runs=4, target_ci=0.02, max_time=100.0)
    assert result.stop_reason == "target_ci"
    assert len(checks) == 4
    assert checks[0] == 4  # first check once `runs` rounds are done
    assert checks == sorted(checks) and checks[-1] > 4
    assert result.rounds == checks[-1]
    # checks are STOP_CHECK_EVERY_S apart (0.5 s at 10 ms per clock reading: ~50 rounds)
    assert checks[1] - checks[0] >= 0.5 / 0.01 * 0.5
    data = result.to_dict()
    assert data["stop_reason"] == "target_ci" and data["target_ci"] == 0.02 and data["max_time"] == 100.0


def test_target_ci_is_bounded_by_max_time(fake_sessions, monkeypatch):
    monkeypatch.setattr(latency, "time", _FakeClock(0.01))
    monkeypatch.setattr(latency, "_interim_ci_width", lambda times: 1.0)
    result = bench_models([b"a", b"b"], FEEDS, warmup=0, runs=2, target_ci=0.02, max_time=2.0)
    assert result.stop_reason == "max_time"
    assert 2.0 <= result.timed_seconds < 2.2
    assert result.rounds > 2


def test_target_ci_off_or_single_model_stops_at_runs(fake_sessions, monkeypatch):
    monkeypatch.setattr(latency, "time", _FakeClock(0.01))
    monkeypatch.setattr(latency, "_interim_ci_width", lambda times: 1.0)
    assert bench_models([b"a", b"b"], FEEDS, warmup=0, runs=3).rounds == 3
    one = bench_models([b"a"], FEEDS, warmup=0, runs=3, target_ci=0.02, max_time=5.0)
    assert one.rounds == 3 and one.stop_reason == "runs" and one.target_ci is None


def test_interim_ci_width():
    rng = np.random.default_rng(0)
    noisy = [list(1 + rng.random(400)), list(1 + rng.random(400))]
    exact = [[1.0, 2.0, 3.0] * 20, [0.5, 1.0, 1.5] * 20]
    assert latency._interim_ci_width(exact) == pytest.approx(0.0)
    width = latency._interim_ci_width(noisy)
    assert 0.0 < width < 0.5
    full = latency._comparison([np.asarray(t) for t in noisy], 0, 1)
    assert width == pytest.approx(latency._relative_width(full.ci95, full.speedup), rel=0.3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_ci": -0.1, "max_time": 1.0},
        {"target_ci": 0.02},  # unbounded
        {"max_time": -1.0},
        {"min_time": 2.0, "max_time": 1.0},
    ],
)
def test_bad_sampling_arguments(fake_sessions, kwargs):
    with pytest.raises(UsageError):
        bench_models([b"a", b"b"], FEEDS, **kwargs)
