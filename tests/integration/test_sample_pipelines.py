"""End to end on the bundled sample (no ../shared needed): the CLI with real passes and data."""

from __future__ import annotations

import json

from tests.helpers import SAMPLES, cli

MODEL = SAMPLES / "digits_cnn.onnx"
DATA = SAMPLES / "digits_test.npz"


def _optimize(tmp_path, passes: str, *extra: str) -> dict:
    out = tmp_path / "out.onnx"
    result = cli("optimize", str(MODEL), "--passes", passes, "--data", str(DATA), "-o", str(out), "--json",
                 "--force", *extra)
    assert result.returncode in (0, 1), result.stderr.decode()
    return json.loads(result.stdout)


def _cosine(report: dict) -> float:
    (row,) = report["validation"]["results"]
    return row["cosine_min"]


def test_refit_option_receives_calibration_and_raises_fidelity(tmp_path):
    plain = _optimize(tmp_path, "simplify,tucker:energy=0.9:refit=false")  # --data turns refit on by default
    refit = _optimize(tmp_path, "simplify,tucker:energy=0.9:refit")
    assert not any("no calibration data" in w for w in refit["warnings"]), refit["warnings"]
    assert any("calibration: 32 samples" in note for note in refit["notes"])
    # Same ranks, so the same speed; the refit restores fidelity.
    assert [p["ranks"] for p in plain["passes"][1]["applied"]] == [p["ranks"] for p in refit["passes"][1]["applied"]]
    assert _cosine(refit) > _cosine(plain)
    assert refit["validation"]["passed"] is True


def test_int8_on_sample_passes_the_gate(tmp_path):
    report = _optimize(tmp_path, "simplify,int8", "--min-agreement", "0.95")
    assert report["validation"]["passed"] is True
    assert report["written"] is True
    assert report["passes"][1]["status"] == "modified"


def test_config_files_give_the_same_model(tmp_path):
    outputs = []
    for name in ("pipeline.yaml", "pipeline.toml", "pipeline.json"):
        out = tmp_path / f"{name}.onnx"
        result = cli("optimize", str(MODEL), "--config", str(SAMPLES / name), "--data", str(DATA), "-o", str(out))
        assert result.returncode == 0, result.stderr.decode()
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
