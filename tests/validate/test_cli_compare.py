"""``onnxopt compare`` through click's CliRunner, on tiny models and on ../shared."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxopt.cli.compare import command
from onnxopt.errors import GateFailed, InputError, OnnxoptError, UsageError
from onnxopt.runtime import cuda_status
from tests.helpers import make_model

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
WEIGHT = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


def linear(weight=WEIGHT, x="x") -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", [x, "w"], ["y"])], "linear",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    return make_model(graph)


@pytest.fixture
def models(tmp_path):
    paths = {}
    for name, model in (("a", linear()), ("same", linear()), ("off", linear(WEIGHT * 1.01)),
                        ("renamed", linear(x="input"))):
        paths[name] = str(tmp_path / f"{name}.onnx")
        onnx.save(model, paths[name])
    return paths


def invoke(*args, input=None):
    """(exit code as the onnxopt entry point maps it, result). Library errors propagate
    from the command; the ``onnxopt`` group turns them into their exit code."""
    result = CliRunner().invoke(command, [str(a) for a in args], input=input)
    error = result.exception
    if isinstance(error, OnnxoptError):
        return error.exit_code, result
    if error is not None and not isinstance(error, SystemExit):
        raise error
    return result.exit_code, result


def test_identical_models_pass(models):
    code, result = invoke(models["a"], models["same"])
    assert code == 0, result.output
    assert "gate (max_rel_error=0.0001): passed" in result.stdout
    assert "rel L2" in result.stdout and "8 random samples (seed 0)" in result.stdout


def test_perturbed_model_fails_the_default_gate(models):
    code, result = invoke(models["a"], models["off"])
    assert code == 1
    assert isinstance(result.exception, GateFailed)
    assert "gate (max_rel_error=0.0001): FAILED" in result.stdout
    assert re.search(r"output 'y': relative L2 error 0\.01\d* > max 0\.0001", result.stdout), result.stdout


def test_explicit_tolerances_replace_the_default(models):
    assert invoke(models["a"], models["off"], "--max-rel-error", "0.02")[0] == 0
    assert invoke(models["a"], models["off"], "--min-cosine", "0.9999")[0] == 0
    code, result = invoke(models["a"], models["off"], "--atol", "1e-6")
    assert code == 1 and "max abs error" in result.stdout


def test_json_output(models):
    code, result = invoke(models["a"], models["off"], "--json", "--samples", "3", "--batch-size", "2", "--seed", "7")
    assert code == 1
    data = json.loads(result.stdout)
    assert data["samples"] == 3 and data["batch_size"] == 2 and data["source"] == "3 random samples (seed 7)"
    assert data["reference"] == models["a"] and data["candidate"] == models["off"]
    assert data["gate"]["passed"] is False
    assert data["gate"]["tolerances"]["max_rel_error"] == 1e-4
    assert data["gate"]["failures"][0].startswith("output 'y': relative L2 error")
    assert data["results"][0]["rel_l2_error"] == pytest.approx(0.01, rel=1e-3)
    code, result = invoke(models["a"], models["same"], "--json")
    assert code == 0 and json.loads(result.stdout)["gate"] == {
        "tolerances": {"atol": None, "rtol": None, "min_cosine": None, "min_agreement": None, "max_rel_error": 1e-4,
                       "min_cosine_p5": None, "min_channel_cosine": None, "min_pairwise_spearman": None},
        "passed": True, "failures": [],
    }


def test_model_from_stdin(models):
    data = Path(models["off"]).read_bytes()
    code, result = invoke(models["a"], "-", input=data)
    assert code == 1 and "relative L2 error" in result.stdout


def test_both_models_from_stdin_is_refused():
    code, result = invoke("-", "-")
    assert code == 2 and isinstance(result.exception, UsageError)
    assert str(result.exception) == "only one of the two models can be read from stdin ('-')"


def test_one_model_needs_two_providers(models):
    code, result = invoke(models["a"])
    assert code == 2
    assert str(result.exception).startswith("with one model, compare needs two providers, e.g. --providers cpu,cuda; got cpu")


def test_exact_int8_needs_a_second_model(models):
    code, result = invoke(models["a"], "--exact-int8", "--providers", "cpu")
    assert code == 2 and isinstance(result.exception, UsageError)
    assert "give two models" in str(result.exception)


def test_exact_int8_leaves_float_models_unchanged(models):
    code, result = invoke(models["a"], models["a"], "--exact-int8", "--json")
    assert code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["max_abs_error"] == 0.0


@pytest.mark.skipif(cuda_status()[0], reason="CUDA loads here")
def test_explicit_cuda_that_does_not_load(models):
    code, result = invoke(models["a"], "--providers", "cpu,cuda")
    assert code == 2 and isinstance(result.exception, InputError)
    assert str(result.exception).startswith("CUDA requested but unavailable: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preprocess", "imagenet"], "--preprocess needs --data (a folder of images, or a text file)"),
        (["--labels", "x.tsv"], "--labels needs --data: labels are matched to image file names"),
        (["--input-shape", "x:1xq"], "bad --input-shape 'x:1xq'"),
        (["--input-shape", "nope:1x4"], "--input-shape names 'nope', which is not an input of the model"),
        (["--providers", "tpu"], "unknown provider 'tpu'"),
    ],
)
def test_usage_errors(models, args, message):
    code, result = invoke(models["a"], models["same"], *args)
    assert code == 2 and isinstance(result.exception, UsageError)
    assert message in str(result.exception)


def test_input_errors(models, tmp_path):
    code, result = invoke(models["a"], models["renamed"])
    assert code == 2 and "the models have different inputs" in str(result.exception)
    code, result = invoke(models["a"], tmp_path / "missing.onnx")
    assert code == 2 and isinstance(result.exception, InputError)
    code, result = invoke(models["a"], models["same"], "--data", tmp_path / "none.npz")
    assert code == 2 and "data path not found" in str(result.exception)


def test_click_rejects_bad_numbers(models):
    code, result = invoke(models["a"], models["same"], "--samples", "0")
    assert code == 2 and "--samples" in result.output
    code, result = invoke(models["a"], models["same"], "--min-cosine", "2")
    assert code == 2


def test_npz_data_and_help(models, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((5, 4), np.float32))
    code, result = invoke(models["a"], models["same"], "--data", tmp_path / "d.npz", "--samples", "2")
    assert code == 0 and "2 samples from" in result.stdout and "(samples 0–1 of 5)" in result.stdout
    code, result = invoke("--help")
    assert code == 0 and "--max-rel-error 0.0001" in result.stdout


# --------------------------------------------------------------------------- ../shared


def _shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)} (real models and images beside the repo)")
    return path


@pytest.mark.shared
def test_resnet20_perturbed_conv_fails_and_copy_passes(tmp_path):
    source = _shared("models", "resnet20_cifar10.onnx")
    model = onnx.load(source)
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    array = numpy_helper.to_array(weight)
    noise = np.random.default_rng(0).standard_normal(array.shape).astype(np.float32)
    weight.CopyFrom(numpy_helper.from_array(array * (1 + 0.01 * noise), weight.name))
    onnx.save(model, tmp_path / "perturbed.onnx")
    onnx.save(onnx.load(source), tmp_path / "copy.onnx")

    code, result = invoke(source, tmp_path / "perturbed.onnx", "--json")
    assert code == 1, result.output
    data = json.loads(result.stdout)
    assert data["results"][0]["rel_l2_error"] > 1e-4
    print(f"resnet20, first conv weight x (1 + 0.01·N(0,1)): rel L2 {data['results'][0]['rel_l2_error']:.3g}, "
          f"min cosine {data['results'][0]['cosine_min']:.6f}")

    code, result = invoke(source, tmp_path / "copy.onnx")
    assert code == 0, result.output
    assert "passed" in result.stdout


@pytest.mark.shared
def test_mobilenet_against_itself_on_imagenet_images():
    model = _shared("models", "mobilenet_v2_imagenet.onnx")
    images = _shared("images", "imagenet")
    start = time.perf_counter()
    code, result = invoke(
        model, model, "--data", images, "--preprocess", "imagenet", "--labels", images / "labels.tsv",
        "--batch-size", "16", "--json",
    )
    seconds = time.perf_counter() - start
    assert code == 0, result.output
    row = json.loads(result.stdout)["results"][0]
    assert row["samples"] == 500 and row["labeled"] == 500
    assert row["top1_agreement"] == 1.0
    assert row["reference_top1"] == pytest.approx(0.8, abs=0.05)
    assert row["candidate_top1"] == row["reference_top1"]
    print(f"mobilenet_v2 on 500 images: top-1 {row['reference_top1']:.3f}, top-5 {row['reference_top5']:.3f}, "
          f"agreement {row['top1_agreement']}, {seconds:.1f} s")


def test_percentile_and_channel_bounds_are_flags_too():
    """The gate's own statistics can be set by hand (any tolerance flag replaces the whole
    default, so a user tightening one must be able to state the others)."""
    from onnxopt.cli.validation_options import build_tolerances
    from onnxopt.validate.tolerances import Tolerances

    tolerances = build_tolerances(min_cosine_p5=0.99, min_channel_cosine=0.995, default=Tolerances(max_rel_error=1e-4))
    assert tolerances == Tolerances(min_cosine_p5=0.99, min_channel_cosine=0.995)


def test_min_cosine_p5_flag_gates(tmp_path):
    noisy = WEIGHT + 0.05 * np.random.default_rng(1).standard_normal(WEIGHT.shape).astype(np.float32)
    onnx.save(linear(), tmp_path / "a.onnx")
    onnx.save(linear(noisy), tmp_path / "b.onnx")
    code, result = invoke(tmp_path / "a.onnx", tmp_path / "b.onnx", "--min-cosine-p5", "0.9")
    assert code == 0, result.output
    code, result = invoke(tmp_path / "a.onnx", tmp_path / "b.onnx", "--min-cosine-p5", "0.9999999")
    assert code == 1 and "5th-percentile" in result.output, result.output
