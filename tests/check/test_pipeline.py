"""A real shell pipeline: cat | optimize - -o - | check -; the bytes that reach check are the model."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import cli, tiny_conv_model


def test_optimize_to_check_pipeline(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_conv_model().SerializeToString())
    captured = tmp_path / "captured.onnx"
    onnxopt = f"{sys.executable} -m onnxopt"
    command = (f"set -o pipefail; cat {model} | {onnxopt} optimize - --passes simplify -o - "
               f"| tee {captured} | {onnxopt} check -")
    result = subprocess.run(command, shell=True, capture_output=True, executable="/bin/bash", timeout=300)
    stdout = result.stdout.decode()
    assert result.returncode == 0, stdout + result.stderr.decode()
    assert stdout.splitlines()[-1].startswith("1 file checked: 0 errors"), stdout

    direct = tmp_path / "direct.onnx"
    assert cli("optimize", str(model), "--passes", "simplify", "-o", str(direct)).returncode == 0
    assert captured.read_bytes() == direct.read_bytes()


def test_check_reads_the_same_bytes_as_a_file(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_conv_model().SerializeToString())
    from_file = cli("check", "--json", str(model))
    from_stdin = cli("check", "--json", "-", input=model.read_bytes())
    import json

    strip = lambda doc: [(f["rule"], f["message"]) for f in json.loads(doc)["files"][0]["findings"]]  # noqa: E731
    assert strip(from_file.stdout) == strip(from_stdin.stdout)
