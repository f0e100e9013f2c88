"""Text data (``--data sentences.txt --preprocess "tokenizer=… max_length=…"``): a tiny
WordLevel tokenizer built here, tiny Gather-on-an-embedding models, and the real
sentence-transformer of ../shared through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.analysis.inputs import model_inputs
from onnxopt.cli.main import main
from onnxopt.errors import InputError, UsageError
from onnxopt.validate.data import open_data
from onnxopt.validate.preprocess import parse_preprocess
from onnxopt.validate.text import TextSource, parse_text_preprocess
from tests.helpers import SAMPLES, SHARED_MODELS, make_model, run_ort

tokenizers = pytest.importorskip("tokenizers")

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "and", "back", "again"]
VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
TEXT = "the cat sat on the mat\n\na dog ran\n   \nthe dog ran far away and back again and again\n"


def make_tokenizer(path: Path, vocab: dict[str, int] = VOCAB) -> Path:
    """A BERT-like WordLevel tokenizer: whitespace words, ``[CLS] text [SEP]``, no padding set."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer.save(str(path))
    return path


def embedding_model(rows: int = len(VOCAB), *, ids: str = "input_ids", dtype: int = TensorProto.INT64,
                    mask: str | None = "attention_mask", types: str | None = None,
                    seq: str | int = "sequence", mask_dtype: int | None = None) -> onnx.ModelProto:
    """ids → Gather(table[rows, 4]) → (masked) sum over tokens → [batch, 4]."""
    table = np.random.default_rng(0).standard_normal((rows, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", ids], ["emb"])]
    inputs = [helper.make_tensor_value_info(ids, dtype, ["batch", seq])]
    initializers = [numpy_helper.from_array(table, "table"),
                    numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                    numpy_helper.from_array(np.array([2], np.int64), "axis2")]
    summed = "emb"
    if mask is not None:
        inputs.append(helper.make_tensor_value_info(mask, mask_dtype or dtype, ["batch", seq]))
        nodes += [helper.make_node("Cast", [mask], ["maskf"], to=TensorProto.FLOAT),
                  helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
                  helper.make_node("Mul", ["emb", "mask3"], ["masked"])]
        summed = "masked"
    if types is not None:
        type_table = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
        initializers.append(numpy_helper.from_array(type_table, "type_table"))
        inputs.append(helper.make_tensor_value_info(types, dtype, ["batch", seq]))
        nodes += [helper.make_node("Gather", ["type_table", types], ["temb"]),
                  helper.make_node("Add", [summed, "temb"], ["with_types"])]
        summed = "with_types"
    nodes.append(helper.make_node("ReduceSum", [summed, "axis1"], ["y"], keepdims=0))
    graph = helper.make_graph(nodes, "embed", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                              initializer=initializers)
    return make_model(graph, opset=17)


def image_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["y"])], "image",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
    )
    return make_model(graph)


@pytest.fixture
def files(tmp_path):
    text = tmp_path / "sentences.txt"
    text.write_text(TEXT)
    tokenizer = make_tokenizer(tmp_path / "tokenizer.json")
    model = tmp_path / "embed.onnx"
    onnx.save(embedding_model(), model)
    return {"text": text, "tokenizer": tokenizer, "model": model, "dir": tmp_path}


def spec(files, extra: str = "max_length=8") -> str:
    return f"tokenizer={files['tokenizer']} {extra}".strip()


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the ``onnxopt`` entry point in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


# --------------------------------------------------------------------------- feeds


def test_lines_are_tokenized_padded_and_fill_inputs_by_name(files):
    model = embedding_model(types="token_type_ids")
    source = open_data(files["text"], model_inputs(model), preprocess=spec(files))
    assert isinstance(source, TextSource)
    assert len(source) == 3  # the two blank (and whitespace-only) lines are skipped
    batch = next(iter(source.batches(2)))
    assert batch.ids == ["0", "1"]
    assert set(batch.feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    ids = batch.feeds["input_ids"]
    assert ids.dtype == np.int64 and ids.shape == (2, 8)
    # [CLS] the cat sat on the mat [SEP]: 8 tokens exactly; then [CLS] a dog ran [SEP] + 3 × [PAD]
    assert ids[0].tolist() == [2, 4, 5, 6, 7, 4, 8, 3]
    assert ids[1].tolist() == [2, 9, 10, 11, 3, 0, 0, 0]
    assert batch.feeds["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert batch.feeds["token_type_ids"].tolist() == [[0] * 8] * 2
    (outputs,) = run_ort(model, batch.feeds)
    assert outputs.shape == (2, 4) and np.isfinite(outputs).all()


def test_int32_inputs_are_cast_as_declared(files):
    model = embedding_model(dtype=TensorProto.INT32)
    source = open_data(files["text"], model_inputs(model), preprocess=spec(files))
    feeds = next(iter(source.batches(3))).feeds
    assert {a.dtype for a in feeds.values()} == {np.dtype(np.int32)}
    run_ort(model, feeds)


@pytest.mark.parametrize("ids, mask, types", [
    ("ids", "mask", None), ("tokens", "input_mask", "segment_ids"), ("x", None, None),
    ("input_ids:0", "attention_mask:0", "token_type_ids:0"),
])
def test_input_names_people_use(files, ids, mask, types):
    model = embedding_model(ids=ids, mask=mask, types=types)
    feeds = next(iter(open_data(files["text"], model_inputs(model), preprocess=spec(files)).batches(1))).feeds
    assert feeds[ids][0, 0] == 2  # [CLS]
    if mask:
        assert feeds[mask].sum() == 8
    run_ort(model, feeds)


@pytest.mark.parametrize("mask_dtype, numpy_dtype", [(TensorProto.BOOL, np.bool_), (TensorProto.FLOAT, np.float32)])
def test_bool_and_float_masks(files, mask_dtype, numpy_dtype):
    model = embedding_model(mask_dtype=mask_dtype)
    feeds = next(iter(open_data(files["text"], model_inputs(model), preprocess=spec(files)).batches(2))).feeds
    assert feeds["attention_mask"].dtype == numpy_dtype and feeds["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    run_ort(model, feeds)


def test_max_length_defaults_to_the_fixed_dim_then_input_shape_then_128(files):
    fixed = model_inputs(embedding_model(seq=6))
    assert next(iter(open_data(files["text"], fixed, preprocess=spec(files, "")).batches(1))).feeds["input_ids"].shape == (1, 6)
    with pytest.raises(InputError, match="max_length=8 does not fit input 'input_ids': its sequence dimension is fixed at 6"):
        open_data(files["text"], fixed, preprocess=spec(files))
    dynamic = model_inputs(embedding_model())
    source = open_data(files["text"], dynamic, preprocess=spec(files, ""), shapes={"input_ids": (1, 12), "attention_mask": (1, 12)})
    assert source.length == 12
    assert open_data(files["text"], dynamic, preprocess=spec(files, "")).length == 128


def test_streaming_tokenizes_one_batch_at_a_time(files):
    source = open_data(files["text"], model_inputs(embedding_model()), preprocess=spec(files))
    assert not source._known.any()  # opening reads line offsets only
    batches = source.batches(1)
    next(batches)
    assert source._known.tolist() == [True, False, False]


def test_truncated_lines_are_counted_in_the_description(files):
    source = open_data(files["text"], model_inputs(embedding_model()), preprocess=spec(files))
    assert source.description.endswith("; 1 longer than 8 tokens, truncated")
    assert "3 texts from" in source.description and "tokenized by tokenizer.json to 8 tokens" in source.description
    assert source.notes == ["1 of 3 texts are longer than 8 tokens and were truncated"]
    first_two = source.subset(0, 2)
    assert "longer than" not in first_two.description  # the first line is exactly 8 tokens
    assert "(samples 0–1 of 3)" in first_two.description
    long = next(iter(source.subset(2).batches(1))).feeds
    assert long["input_ids"][0, -1] == 3 and long["attention_mask"].all()  # [SEP] kept at the end


def test_a_folder_holding_tokenizer_json_is_accepted(files):
    source = open_data(files["text"], model_inputs(embedding_model()), preprocess=f"tokenizer={files['dir']} max_length=8")
    assert len(source) == 3


# --------------------------------------------------------------------------- bad input


def test_text_for_an_image_model(files):
    with pytest.raises(InputError, match="text data needs a model that takes integer token ids; this model's inputs "
                                         r"are 'input' \[N, 3, 8, 8\] float32"):
        open_data(files["text"], model_inputs(image_model()), preprocess=spec(files))


def test_a_vocabulary_larger_than_the_embedding_table(files):
    small = model_inputs(embedding_model(rows=10))
    assert small[0].index_high == 10
    with pytest.raises(InputError, match="tokenizer 'tokenizer.json' has 17 token ids but the model's embedding table "
                                         "for input 'input_ids' has 10 rows: it is not this model's tokenizer"):
        open_data(files["text"], small, preprocess=spec(files))


def test_missing_and_malformed_tokenizers(files, tmp_path):
    inputs = model_inputs(embedding_model())
    with pytest.raises(InputError, match="tokenizer file not found: .*nope.json"):
        open_data(files["text"], inputs, preprocess=f"tokenizer={tmp_path / 'nope.json'}")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0", "model": ')
    with pytest.raises(InputError, match="cannot read tokenizer '.*bad.json': not a Hugging Face tokenizer.json"):
        open_data(files["text"], inputs, preprocess=f"tokenizer={bad}")
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"hello": 1}')
    with pytest.raises(InputError, match="not a Hugging Face tokenizer.json"):
        open_data(files["text"], inputs, preprocess=f"tokenizer={wrong}")


@pytest.mark.parametrize("content", ["", "\n\n  \n\t\n"])
def test_empty_text_files(files, tmp_path, content):
    empty = tmp_path / "empty.txt"
    empty.write_text(content)
    with pytest.raises(InputError, match="empty.txt' holds no text: one sample per line"):
        open_data(empty, model_inputs(embedding_model()), preprocess=spec(files))


def test_not_utf8(files, tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"the cat\ncaf\xe9 au lait\n")
    with pytest.raises(InputError, match="'latin.txt' line 2 is not UTF-8 text"):
        open_data(latin, model_inputs(embedding_model()), preprocess=spec(files))


def test_inputs_text_cannot_fill(files):
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["e"]), helper.make_node("Cast", ["steps"], ["y"], to=1)],
        "two", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
                helper.make_tensor_value_info("steps", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None), helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.zeros((20, 2), np.float32), "table")],
    )
    with pytest.raises(InputError, match=r"cannot tell what 'steps' \[b, s\] int64 should hold"):
        open_data(files["text"], model_inputs(make_model(graph)), preprocess=spec(files))
    model = embedding_model()
    model.graph.input.append(helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 8, 8]))
    with pytest.raises(InputError, match=r"cannot tell what 'pixel_values' \[batch, 3, 8, 8\] float32 should hold"):
        open_data(files["text"], model_inputs(model), preprocess=spec(files))


def test_preprocess_specs(files):
    assert parse_text_preprocess("tokenizer='my dir/t.json' max_length=64").tokenizer == Path("my dir/t.json")
    inputs = model_inputs(embedding_model())
    for bad, message in [
        (None, "'sentences.txt' is text .* needs a tokenizer: give --preprocess"),
        ("imagenet", "bad --preprocess token 'imagenet' for text data: expected key=value"),
        ("tokenizer=t.json resize=256", "unknown --preprocess key 'resize' for text data: valid keys are tokenizer, max_length"),
        ("max_length=64", "names no tokenizer"),
        (spec(files, "max_length=0"), "max_length must be a positive integer, got '0'"),
        (spec(files, "max_length=2"), "max_length 2 leaves no room for text: tokenizer 'tokenizer.json' adds 2 special tokens"),
    ]:
        with pytest.raises(UsageError if "leaves no room" not in message else InputError, match=message):
            open_data(files["text"], inputs, preprocess=bad)
    with pytest.raises(UsageError, match="--preprocess key 'tokenizer' is for text data"):
        parse_preprocess("tokenizer=t.json")


def test_cli_compare_on_text(files, capsys):
    code, out, err = cli(capsys, "compare", files["model"], files["model"], "--data", files["text"],
                         "--preprocess", spec(files))
    assert code == 0, err
    assert "data: 3 texts from" in out and "1 longer than 8 tokens, truncated" in " ".join(out.split())
    assert "gate (max_rel_error=0.0001): passed" in out


@pytest.mark.parametrize("make_args, message", [
    (lambda f: ["--preprocess", f"tokenizer={f['dir'] / 'missing.json'}"], "tokenizer file not found"),
    (lambda f: [], "needs a tokenizer"),
    (lambda f: ["--preprocess", spec(f), "--image-model"], "text data needs a model that takes integer token ids"),
])
def test_cli_bad_input_is_one_line_exit_2(files, capsys, make_args, message):
    args = make_args(files)
    model = files["model"]
    if "--image-model" in args:
        args.remove("--image-model")
        model = files["dir"] / "image.onnx"
        onnx.save(image_model(), model)
    code, _, err = cli(capsys, "compare", model, model, "--data", files["text"], *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("onnxopt: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- the real transformer

MINILM = SHARED_MODELS / "sequence" / "paraphrase_minilm_l3.onnx"
MINILM_TOKENIZER = SHARED_MODELS / "sequence" / "paraphrase_minilm_l3.tokenizer.json"
SENTENCES = SAMPLES / "sentences.txt"


def test_sample_sentences_are_real_and_small():
    lines = SENTENCES.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 300 and len(set(lines)) == len(lines)
    assert SENTENCES.stat().st_size < 60_000
    assert all(line[0].isupper() and line.endswith((".", "!", "?")) for line in lines)


@pytest.mark.shared
def test_minilm_compare_and_int8_dynamic_on_sentences(capsys, tmp_path):
    if not (MINILM.exists() and MINILM_TOKENIZER.exists()):
        pytest.skip("needs ../shared/models/sequence/paraphrase_minilm_l3.onnx and its tokenizer (real models beside the repo)")
    preprocess = f"tokenizer={MINILM_TOKENIZER} max_length=128"
    code, out, err = cli(capsys, "compare", MINILM, MINILM, "--data", SENTENCES, "--preprocess", preprocess,
                         "--samples", 8)
    assert code == 0, err
    assert "8 texts from" in out and "to 128 tokens" in " ".join(out.split())
    assert "gate (max_rel_error=0.0001): passed" in out

    out_path = tmp_path / "minilm.int8.onnx"
    report = tmp_path / "report.json"
    code, out, err = cli(capsys, "optimize", MINILM, "--passes", "int8-dynamic", "--data", SENTENCES,
                         "--preprocess", preprocess, "--samples", 40, "-o", out_path, "--report", report)
    # The gate's verdict on int8-dynamic belongs to the gate defaults, not to text data:
    # either it passes and writes, or it fails with exit 1 and a report; never a crash.
    assert code in (0, 1), err
    assert (code == 0) == out_path.exists()
    import json

    data = json.loads(report.read_text())
    assert "40 texts from" in data["validation"]["source"]
