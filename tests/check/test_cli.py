"""The command line: output format, JSON, exit codes, --strict/--disable, pyproject config."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxopt.cli.main import main
from tests.check.corpus import _add_model, nan_weight
from tests.helpers import cli, run_ort, tiny_conv_model


def _save(folder, model, name="m.onnx"):
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def run(capsys, *args):
    """The CLI in process (fast): (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def models(tmp_path):
    """good (no finding), warn (node-names warning), bad (NaN weight)."""
    bad = onnx.load(nan_weight(tmp_path))
    bad.graph.node[0].name = "conv"
    return {
        "good": _save(tmp_path, _add_model(), "good.onnx"),
        "warn": _save(tmp_path, tiny_conv_model(), "warn.onnx"),
        "bad": _save(tmp_path, bad, "nan_weight.onnx"),
    }


def test_lines_summary_and_exit_codes(models):
    result = cli("check", str(models["good"]), str(models["warn"]), str(models["bad"]))
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 1
    assert lines[0].startswith(f"{models['warn']}: warning: node-names: ")
    assert lines[1].startswith(f"{models['bad']}: error: non-finite-weights: initializer 'w' has 1 NaN")
    assert lines[2] == "3 files checked: 1 error, 1 warning"
    assert result.stderr == b""


def test_exit_0_with_warnings_1_with_strict(capsys, models):
    assert run(capsys, "check", models["good"], models["warn"])[0] == 0
    code, out, _ = run(capsys, "check", "--strict", models["good"], models["warn"])
    assert code == 1 and out.splitlines()[-1] == "2 files checked: 0 errors, 1 warning"
    assert run(capsys, "check", "--strict", "--disable", "node-names", models["warn"])[0] == 0


def test_disable_accepts_commas_and_repeats(capsys, models):
    code, out, _ = run(capsys, "check", "--disable", "node-names,checker", "--disable", "non-finite-weights",
                       models["warn"], models["bad"])
    assert code == 0 and out.strip() == "2 files checked: 0 errors, 0 warnings"


def test_json_document(models):
    result = cli("check", "--json", str(models["good"]), str(models["bad"]))
    assert result.returncode == 1
    document = json.loads(result.stdout)  # stdout holds only the JSON document
    assert document["summary"] == {"files": 2, "errors": 1, "warnings": 0, "strict": False, "failed": True}
    good, bad = document["files"]
    assert good["path"] == str(models["good"]) and good["findings"] == [] and good["seconds"] >= 0
    assert bad["findings"][0]["rule"] == "non-finite-weights" and bad["findings"][0]["level"] == "error"
    assert set(bad["findings"][0]) == {"path", "level", "rule", "message"}


def test_quiet_drops_the_summary(capsys, models):
    code, out, _ = run(capsys, "check", "-q", models["good"])
    assert code == 0 and out == ""


def test_folder_expands_to_its_models(capsys, tmp_path, models):
    code, out, _ = run(capsys, "check", tmp_path)
    assert code == 1 and out.splitlines()[-1].startswith("3 files checked")


def test_list_rules(capsys):
    from onnxopt.check import RULES

    code, out, _ = run(capsys, "check", "--list-rules")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == list(RULES)


@pytest.mark.parametrize("args, message", [
    (["--disable", "no-such-rule"], "unknown rule 'no-such-rule'"),
    (["--max-size", "12 parsecs"], "--max-size"),
    (["--max-macs", "lots"], "--max-macs"),
    (["--opset-min", "18", "--opset-max", "13"], "opset-min"),
    (["--reference", "missing.npz"], "not found"),
    (["--config", "missing.toml"], "not found"),
    (["-", "-"], "only once"),
])
def test_usage_errors_exit_2(capsys, tmp_path, monkeypatch, models, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "check", *args, *([models["good"]] if "-" not in args else []))
    assert code == 2, out + err
    assert message in err and "Traceback" not in err


def test_no_file_is_a_usage_error():
    result = cli("check")
    assert result.returncode == 2


def test_bad_reference_file_exit_2(capsys, tmp_path, models):
    bad = tmp_path / "bad.npz"
    bad.write_text("not an npz")
    code, _, err = run(capsys, "check", "--reference", bad, models["good"])
    assert code == 2 and "not a readable .npz" in err


def _reference(tmp_path, scale=1.0):
    model = tiny_conv_model()
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (y,) = run_ort(model, {"x": x})
    path = tmp_path / f"ref{scale}.npz"
    np.savez(path, **{"input:x": x, "output:y": y * scale})
    return path


def test_reference_pass_and_fail_on_the_cli(tmp_path, models):
    passing = cli("check", "--reference", str(_reference(tmp_path)), str(models["warn"]))
    assert passing.returncode == 0, passing.stdout.decode()
    failing = cli("check", "--reference", str(_reference(tmp_path, 1.01)), str(models["warn"]))
    assert failing.returncode == 1
    assert "error: reference: output 'y': relative L2 error" in failing.stdout.decode()


def test_reference_tolerance_flags(capsys, tmp_path, models):
    ref = _reference(tmp_path, 1.01)
    assert run(capsys, "check", "--reference", ref, "--max-rel-error", "0.02", models["warn"])[0] == 0
    assert run(capsys, "check", "--reference", ref, "--atol", "1e-6", models["warn"])[0] == 1
    assert run(capsys, "check", "--reference", ref, "--min-cosine", "0.999", models["warn"])[0] == 0


def test_budgets_on_the_cli(capsys, models):
    code, out, _ = run(capsys, "check", "--max-size", "100B", "--max-params", "100", "--max-macs", "6k",
                       "--opset-min", "18", models["warn"])
    assert code == 1
    rules = [line.split(": ")[2] for line in out.splitlines()[:-1]]
    assert rules == ["node-names", "max-size", "max-params", "max-macs", "opset-range"]


def test_hints_flag(capsys, models):
    code, out, _ = run(capsys, "check", "--hints", models["good"])
    assert code == 0 and ": warning: hints: INT8 quantization" not in out  # Add/Relu: nothing to quantize
    code, out, _ = run(capsys, "check", "--hints", models["warn"])
    assert code == 0 and ": warning: hints: INT8 quantization applies to 1 Conv" in out
    assert run(capsys, "check", "--hints", "--strict", "--disable", "node-names", models["warn"])[0] == 1


# --------------------------------------------------------------------------- pyproject


def _pyproject(folder, body: str):
    path = folder / "pyproject.toml"
    path.write_text("[project]\nname = 'demo'\n\n[tool.onnxopt.check]\n" + body)
    return path


def test_pyproject_found_by_walking_up(capsys, tmp_path, monkeypatch, models):
    _pyproject(tmp_path, 'max-params = 100\ndisable = ["node-names"]\n')
    sub = tmp_path / "deep" / "er"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    code, out, _ = run(capsys, "check", models["warn"])
    assert code == 1 and ": error: max-params: 108 parameters" in out and "node-names" not in out
    code, out, _ = run(capsys, "check", "--max-params", "1000", models["warn"])  # flags override
    assert code == 0, out


def test_pyproject_strict_and_override(capsys, tmp_path, monkeypatch, models):
    _pyproject(tmp_path, "strict = true\n")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "check", models["warn"])[0] == 1
    assert run(capsys, "check", "--no-strict", models["warn"])[0] == 0


def test_pyproject_reference_relative_to_the_file(capsys, tmp_path, monkeypatch, models):
    data = tmp_path / "data"
    data.mkdir()
    ref = _reference(data, 1.01)
    _pyproject(tmp_path, f'reference = "data/{ref.name}"\nmax-rel-error = 0.001\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out, _ = run(capsys, "check", "--config", tmp_path / "pyproject.toml", models["warn"])
    assert code == 1 and "relative L2 error" in out
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "check", "--max-rel-error", "0.05", models["warn"])[0] == 0


def test_pyproject_without_the_table_is_skipped(capsys, tmp_path, monkeypatch, models):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "check", models["warn"])[0] == 0


@pytest.mark.parametrize("body, message", [
    ("max-sise = '5MB'\n", "did you mean 'max-size'"),
    ("strict = 'yes'\n", "true or false"),
    ("disable = ['nope']\n", "unknown rule 'nope'"),
    ("max-size = 'big'\n", "bad size"),
    ("opset-min = 1.5\n", "integer"),
    ("max-size = \n", "not valid TOML"),
])
def test_bad_pyproject_is_a_usage_error(capsys, tmp_path, monkeypatch, models, body, message):
    path = _pyproject(tmp_path, body)
    code, _, err = run(capsys, "check", "--config", path, models["good"])
    assert code == 2 and message in err, err


def test_snake_case_keys_are_accepted(capsys, tmp_path, models):
    path = _pyproject(tmp_path, "max_params = 100\n")
    assert run(capsys, "check", "--config", path, models["warn"])[0] == 1


def test_empty_folder_is_reported(capsys, tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    code, out, _ = run(capsys, "check", empty)
    assert code == 1 and f"{empty}: error: load-error: is a directory" in out
