"""CLI tests for ``onnxopt bench`` and ``onnxopt profile`` (CliRunner on the commands).

Tiny models and few runs keep these fast; nothing asserts on how long anything took.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxopt.cli import bench as bench_cli
from onnxopt.cli import profile as profile_cli
from onnxopt.errors import InputError, UsageError
from onnxopt.runtime import cuda_status

FAST = ["--runs", "3", "--warmup", "1"]
# Two models: also no time floor and no sampling past --runs (--max-time 0)
FAST_AB = [*FAST, "--max-time", "0"]


def _conv_model(scale: float = 1.0) -> onnx.ModelProto:
    """x [N, 8, 6, 6] -> Conv 3×3 (8→8) -> Relu -> y; dynamic batch."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((8, 8, 3, 3)) * scale).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"], "relu"),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6, 6])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save(_conv_model(), path)
    return path


@pytest.fixture
def model2_path(tmp_path):
    path = tmp_path / "conv2.onnx"
    onnx.save(_conv_model(0.5), path)
    return path


def _run(command, args, **kwargs):
    return CliRunner().invoke(command, [str(a) for a in args], **kwargs)


# --- bench -----------------------------------------------------------------------------


def test_bench_json_single_model(model_path):
    result = _run(bench_cli.command, [model_path, *FAST, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["providers"] == ["cpu"]
    (run,) = data["results"]
    assert run["provider"] == "cpu"
    assert run["rounds"] == 3
    assert run["batch_size"] == 1
    (model,) = run["models"]
    assert model["label"] == str(model_path)
    assert model["size_bytes"] > 0
    assert model["runs"] == 3
    assert run["comparisons"] == []


def test_bench_two_models_table(model_path, model2_path):
    result = _run(bench_cli.command, [model_path, model2_path, *FAST_AB, "--threads", "1"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "interleaved" in out
    assert "speedup of" in out and "95 % CI" in out
    assert str(model_path) in out and str(model2_path) in out
    assert "peak RSS" in out


def test_bench_same_model_twice_gets_distinct_labels(model_path):
    result = _run(bench_cli.command, [model_path, model_path, *FAST_AB, "--json"])
    assert result.exit_code == 0, result.output
    labels = [m["label"] for m in json.loads(result.stdout)["results"][0]["models"]]
    assert labels == [f"{model_path} (A)", f"{model_path} (B)"]


def test_bench_two_models_says_spinning_is_off(model_path, model2_path):
    """The A/B defaults (spinning off, sampling) are applied and said in the output."""
    result = _run(bench_cli.command, [model_path, model2_path, *FAST_AB])
    assert result.exit_code == 0, result.output
    assert "interleaved: thread spinning off" in result.stdout
    assert "sampling: " in result.stdout
    data = json.loads(_run(bench_cli.command, [model_path, model2_path, *FAST_AB, "--json"]).stdout)
    (run,) = data["results"]
    assert run["spinning"] is False
    assert run["stop_reason"] in ("max_time", "target_ci")
    assert run["target_ci"] == bench_cli.AB_TARGET_CI
    single = _run(bench_cli.command, [model_path, *FAST])
    assert "spinning" not in single.stdout and "sampling" not in single.stdout
    forced = _run(bench_cli.command, [model_path, model2_path, *FAST_AB, "--spinning", "on", "--json"])
    assert json.loads(forced.stdout)["results"][0]["spinning"] is True


def test_bench_sampling_defaults():
    assert bench_cli.sampling_settings(1, None, 0.03, 6.0) == {"min_time": None}
    assert bench_cli.sampling_settings(2, None, 0.03, 6.0) == {
        "min_time": bench_cli.AB_MIN_TIME, "target_ci": 0.03, "max_time": 6.0
    }
    # a default --max-time below an explicit --min-time follows it; --target-ci 0 is off
    assert bench_cli.sampling_settings(2, 20.0, 0.0, 6.0) == {"min_time": 20.0, "target_ci": None, "max_time": 20.0}
    assert bench_cli.sampling_settings(2, None, 0.03, 0.0)["min_time"] == 0.0


def test_bench_sampling_lines_say_why_sampling_stopped():
    from types import SimpleNamespace

    base = {"interleaved": True, "spinning": False, "rounds": 900, "timed_seconds": 6.0,
            "target_ci": 0.03, "max_time": 6.0}
    stopped = bench_cli.sampling_lines(SimpleNamespace(**base, stop_reason="max_time", ci_width=0.05))
    assert stopped[0].startswith("interleaved: thread spinning off")
    assert "stopped at --max-time 6 s" in stopped[1] and "5.0 % wide" in stopped[1]
    narrow = bench_cli.sampling_lines(SimpleNamespace(**base, stop_reason="target_ci", ci_width=0.02))
    assert "2.0 % wide (target 3 %)" in narrow[1]


def test_bench_batch_size_and_input_shape(model_path):
    result = _run(bench_cli.command, [model_path, *FAST, "--batch-size", "4", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["batch_size"] == 4
    result = _run(bench_cli.command, [model_path, *FAST, "--input-shape", "x:2x8x6x6", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["batch_size"] == 2
    args = [model_path, *FAST, "--input-shape", "x:2x8x6x6", "--batch-size", "2", "--json"]
    result = _run(bench_cli.command, args)
    assert result.exit_code == 0, result.output
    result = _run(bench_cli.command, [model_path, "--input-shape", "x:2x8x6x6", "--batch-size", "3"])
    assert isinstance(result.exception, UsageError)
    assert "disagree" in str(result.exception)


def test_bench_with_data_file(model_path, tmp_path):
    data = tmp_path / "data.npz"
    np.savez(data, x=np.ones((5, 8, 6, 6), np.float32))
    result = _run(bench_cli.command, [model_path, *FAST, "--data", data, "--batch-size", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["batch_size"] == 2
    result = _run(bench_cli.command, [model_path, *FAST, "--data", data, "--batch-size", "8"])
    assert isinstance(result.exception, UsageError)
    assert "fewer samples" in str(result.exception)


def test_bench_model_from_stdin(model_path):
    result = _run(bench_cli.command, ["-", *FAST, "--json"], input=model_path.read_bytes())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["models"][0]["label"] == "stdin"


def test_bench_errors(model_path, tmp_path):
    result = _run(bench_cli.command, ["-", "-"], input=b"")
    assert isinstance(result.exception, UsageError)
    result = _run(bench_cli.command, [model_path, "--providers", "gpu"])
    assert isinstance(result.exception, UsageError)
    assert "cpu" in str(result.exception)
    result = _run(bench_cli.command, [tmp_path / "missing.onnx"])
    assert isinstance(result.exception, InputError)
    result = _run(bench_cli.command, [model_path, "--runs", "0"])
    assert result.exit_code == 2  # click's range check
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    result = _run(bench_cli.command, [bad])
    assert isinstance(result.exception, InputError)


@pytest.mark.skipif(cuda_status()[0], reason="CUDA loads on this machine")
def test_bench_providers_without_cuda(model_path):
    result = _run(bench_cli.command, [model_path, "--providers", "cuda"])
    assert isinstance(result.exception, InputError)
    assert "CUDA requested but unavailable" in str(result.exception)
    result = _run(bench_cli.command, [model_path, *FAST, "--providers", "auto", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["providers"] == ["cpu"]
    assert data["notes"] and "CUDA" in data["notes"][0]
    assert "note: CUDA" in result.stderr


def test_bench_help_lists_input_options_only():
    result = _run(bench_cli.command, ["--help"])
    assert result.exit_code == 0
    for option in ("--providers", "--input-shape", "--batch-size", "--data", "--threads", "--json"):
        assert option in result.stdout
    assert "--labels" not in result.stdout
    assert "--samples" not in result.stdout


# --- profile ---------------------------------------------------------------------------


def test_profile_json(model_path):
    result = _run(profile_cli.command, [model_path, *FAST, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == str(model_path)
    assert data["runs"] == 3
    assert sum(n["share"] for n in data["nodes"]) == pytest.approx(1.0)
    assert sum(o["share"] for o in data["op_types"]) == pytest.approx(1.0)
    conv = next(n for n in data["nodes"] if n["name"] == "conv")
    assert conv["op_type"] == "Conv"
    assert conv["macs"] == 8 * 6 * 6 * 8 * 9
    assert conv["params"] == 8 * 8 * 9
    assert "decompose" in conv["target"]


def test_profile_table(model_path):
    result = _run(profile_cli.command, [model_path, *FAST, "--top", "1"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "op types by time" in out
    assert "pass target" in out
    assert "ms/run" in out
    assert "top 1 of" in out or "nodes by time" in out


def test_profile_stdin_and_batch(model_path):
    result = _run(
        profile_cli.command,
        ["-", *FAST, "--batch-size", "2", "--json"],
        input=model_path.read_bytes(),
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "stdin"
    conv = next(n for n in data["nodes"] if n["name"] == "conv")
    assert conv["macs"] == 2 * 8 * 6 * 6 * 8 * 9


def test_profile_errors(model_path, tmp_path):
    result = _run(profile_cli.command, [tmp_path / "missing.onnx"])
    assert isinstance(result.exception, InputError)
    result = _run(profile_cli.command, [model_path, "--input-shape", "nope:1x2"])
    assert isinstance(result.exception, UsageError)
    result = _run(profile_cli.command, [model_path, "--top", "-1"])
    assert result.exit_code == 2


def test_commands_are_registered():
    from onnxopt.cli.main import cli

    assert cli.commands["bench"] is bench_cli.command
    assert cli.commands["profile"] is profile_cli.command
