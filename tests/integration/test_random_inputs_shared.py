"""Random inputs on the sequence models in ../shared/models/sequence (issue 12): a
transformer with token ids and a mask, and two voice-activity detectors with recurrent
state. ``onnxopt compare`` of each model against itself must run and pass."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxopt.analysis.inputs import model_inputs, resolve_shapes
from onnxopt.cli.compare import command
from onnxopt.validate.sources import random_source
from tests.helpers import SHARED_MODELS, run_ort

pytestmark = pytest.mark.shared

SEQUENCE_MODELS = ["silero_vad_16k_sequence.onnx", "akiki_vad.onnx", "paraphrase_minilm_l3.onnx"]


def _model(name: str):
    path = SHARED_MODELS / "sequence" / name
    if not path.exists():
        pytest.skip(f"needs ../shared/models/sequence/{name} (real models beside the repo)")
    return path


@pytest.mark.parametrize("name", SEQUENCE_MODELS, ids=lambda n: n.removesuffix(".onnx"))
def test_compare_against_itself_on_random_inputs(name):
    path = _model(name)
    result = CliRunner().invoke(command, [str(path), str(path), "--batch-size", "4", "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert rows and all(row["samples"] == 8 for row in rows)


def test_paraphrase_minilm_random_inputs_are_tokens_and_a_full_mask():
    path = _model("paraphrase_minilm_l3.onnx")
    model = onnx.load(path)
    inputs = model_inputs(model)
    shapes = resolve_shapes(inputs, {}, batch_size=2)
    assert shapes == {"input_ids": (2, 128), "attention_mask": (2, 128)}
    batches = list(random_source(inputs, shapes, num_samples=4).batches(2))
    ids = np.concatenate([b.feeds["input_ids"] for b in batches])
    mask = np.concatenate([b.feeds["attention_mask"] for b in batches])
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 30522 and ids.max() > 1000
    assert mask.dtype == np.int64 and (mask == 1).all()
    outputs = run_ort(model, batches[0].feeds)
    assert all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f")


def test_vad_state_inputs_are_zeros():
    model = onnx.load(_model("silero_vad_16k_sequence.onnx"))
    inputs = model_inputs(model)
    batch = next(random_source(inputs, resolve_shapes(inputs, {}, 4), num_samples=2).batches(4))
    assert batch.feeds["input"].shape == (1, 576)
    assert {k: v.shape for k, v in batch.feeds.items() if k != "input"} == {"h": (1, 1, 128), "c": (1, 1, 128)}
    assert not batch.feeds["h"].any() and not batch.feeds["c"].any()
    run_ort(model, batch.feeds)
