"""Every real model in ../shared/models and every light_*.onnx graph of the onnx package:
no error-level finding; and the check is fast."""

from __future__ import annotations

import json
import time
from pathlib import Path

import onnx
import pytest

from onnxopt.check import check_model_file
from tests.helpers import SHARED_MODELS, cli, requires_shared, tiny_conv_model

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _no_errors(paths: list[Path]):
    result = cli("check", "--json", *map(str, paths))
    document = json.loads(result.stdout)
    errors = [f for entry in document["files"] for f in entry["findings"] if f["level"] == "error"]
    assert errors == [], errors
    assert result.returncode == 0, result.stderr.decode()
    assert document["summary"]["files"] == len(paths)
    return document


@requires_shared("models")
@pytest.mark.shared
def test_shared_models_have_no_error():
    paths = sorted(SHARED_MODELS.glob("*.onnx"))
    assert len(paths) >= 10
    document = _no_errors(paths)
    # a bound that catches check running inference or benchmarking (tens of seconds), not
    # machine noise: typical times are 0.01-0.5 s, EasyOCR's took 2.07 s once on a busy 2-core box
    slow = {e["path"]: e["seconds"] for e in document["files"] if e["seconds"] > 10.0}
    assert not slow, f"check took over 10 s on {slow}"


@pytest.mark.skipif(not LIGHT.is_dir(), reason=f"the onnx package ships no light models here ({LIGHT})")
def test_onnx_light_models_have_no_error():
    paths = sorted(LIGHT.glob("light_*.onnx"))
    assert len(paths) >= 5
    _no_errors(paths)


def test_a_small_model_checks_well_under_a_second(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(tiny_conv_model().SerializeToString())
    check_model_file(path)  # first call pays the imports and onnxruntime's probes
    start = time.perf_counter()
    check_model_file(path)
    assert time.perf_counter() - start < 0.5
