"""onnxopt.analysis.inputs and onnxopt.validate.data/sources: input discovery, shape specs and resolution, data sources."""

from __future__ import annotations

import logging
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnxopt.analysis.inputs import InputInfo, model_inputs, parse_input_shapes, resolve_shapes
from onnxopt.errors import InputError, UsageError
from onnxopt.validate.data import open_data
from onnxopt.validate.sources import random_source
from tests.helpers import make_model

F32 = np.dtype(np.float32)


def info(name="x", shape=("N", 3, 8, 8), dtype=F32) -> InputInfo:
    return InputInfo(name, np.dtype(dtype), shape)


# --------------------------------------------------------------------------- model_inputs


def test_model_inputs_skips_initializers_and_maps_dtypes():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT16, ["N", 3, None, 5]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [2]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
        initializer=[onnx.numpy_helper.from_array(np.zeros(2, np.float32), "w")],
    )
    inputs = model_inputs(make_model(graph))
    assert [i.name for i in inputs] == ["h", "mask", "ids", "s"]
    assert [i.dtype for i in inputs] == [np.float16, np.bool_, np.int64, np.float32]
    assert inputs[0].shape == ("N", 3, None, 5)
    assert inputs[1].shape == (2,)
    assert inputs[2].shape == ("batch", "seq")
    assert inputs[3].shape is None
    assert inputs[0].shape_str() == "[N, 3, ?, 5]"


def test_model_inputs_refuses_non_tensor_inputs():
    seq = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("SequenceLength", ["seq"], ["n"])],
        "g",
        [seq],
        [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
    )
    with pytest.raises(InputError, match="input 'seq' is sequence_type, not a tensor"):
        model_inputs(make_model(graph))


# --------------------------------------------------------------------------- parse_input_shapes


def test_parse_input_shapes_splits_on_last_colon():
    assert parse_input_shapes(["input:0:1x224x224x3", "x:2X3"]) == {"input:0": (1, 224, 224, 3), "x": (2, 3)}
    assert parse_input_shapes([]) == {}


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("nocolon", "expected NAME:DIMS"),
        (":1x3", "expected NAME:DIMS"),
        ("x:", "dimensions must be positive integers"),
        ("x:1xa", "dimensions must be positive integers"),
        ("x:1x0x3", "dimensions must be positive integers"),
        ("x:1x-3", "dimensions must be positive integers"),
    ],
)
def test_parse_input_shapes_rejects_bad_specs(spec, why):
    with pytest.raises(UsageError) as error:
        parse_input_shapes([spec])
    assert f"'{spec}'" in str(error.value)
    assert why in str(error.value)


def test_parse_input_shapes_rejects_duplicates():
    with pytest.raises(UsageError, match="input 'x' is given twice"):
        parse_input_shapes(["x:1", "x:2"])


# --------------------------------------------------------------------------- resolve_shapes


def test_resolve_shapes_defaults_and_one_warning(caplog):
    inputs = [
        info("img", ("N", 3, "H", "W")),
        info("nhwc", (None, "H", "W", 3)),
        info("seq", ("B", "T", 16)),
        info("fixed", (1, 3, 4, 4)),
    ]
    with caplog.at_level(logging.WARNING, logger="onnxopt.analysis.inputs"):
        shapes = resolve_shapes(inputs, {}, batch_size=4)
    assert shapes == {
        "img": (4, 3, 224, 224),
        "nhwc": (4, 224, 224, 3),
        "seq": (4, 1, 16),
        "fixed": (1, 3, 4, 4),
    }
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "input 'img'" in text and "2 (H)=224, 3 (W)=224" in text
    assert "input 'nhwc'" in text and "1 (H)=224, 2 (W)=224" in text
    assert "input 'seq'" in text and "1 (T)=1" in text
    assert "fixed" not in text


def test_resolve_shapes_no_warning_when_only_batch_is_dynamic(caplog):
    with caplog.at_level(logging.WARNING, logger="onnxopt"):
        assert resolve_shapes([info()], {}, 2) == {"x": (2, 3, 8, 8)}
    assert not caplog.records


def test_resolve_shapes_overrides_win(caplog):
    with caplog.at_level(logging.WARNING, logger="onnxopt"):
        shapes = resolve_shapes([info("x", ("N", 3, "H", "W"))], {"x": (2, 3, 32, 48)})
    assert shapes == {"x": (2, 3, 32, 48)}
    assert not caplog.records


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"y": (1, 3, 8, 8)}, "--input-shape names 'y', which is not an input of the model (inputs: 'x')"),
        ({"x": (1, 3, 8)}, "--input-shape x:1x3x8 has rank 3 but input 'x' [N, 3, 8, 8] has rank 4"),
        ({"x": (1, 4, 8, 8)}, "--input-shape x:1x4x8x8: dim 1 of input 'x' [N, 3, 8, 8] is fixed at 3"),
    ],
)
def test_resolve_shapes_rejects_bad_overrides(overrides, message):
    with pytest.raises(UsageError) as error:
        resolve_shapes([info()], overrides)
    assert str(error.value) == message


def test_resolve_shapes_needs_shape_for_unknown_rank():
    with pytest.raises(UsageError, match=r"input 'x' has no shape in the model; give --input-shape x:DIMS"):
        resolve_shapes([info("x", None)], {})
    assert resolve_shapes([info("x", None)], {"x": (2, 5)}) == {"x": (2, 5)}


# --------------------------------------------------------------------------- random source


def _all(source, batch_size=1):
    batches = list(source.batches(batch_size))
    feeds = {name: np.concatenate([b.feeds[name] for b in batches]) for name in batches[0].feeds}
    return feeds, [i for b in batches for i in b.ids], batches


def test_random_source_is_seeded_and_independent_of_batching():
    inputs = [info("x", ("N", 3, 4, 4)), info("ids", ("N", 5), np.int64), info("m", ("N", 2), np.bool_),
              info("h", ("N", 2), np.float16)]
    shapes = resolve_shapes(inputs, {})
    one, ids, _ = _all(random_source(inputs, shapes, num_samples=7, seed=3), 1)
    three, ids3, batches = _all(random_source(inputs, shapes, num_samples=7, seed=3), 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert ids == ids3 == [str(i) for i in range(7)]
    for name in one:
        np.testing.assert_array_equal(one[name], three[name])
    assert one["x"].dtype == np.float32 and one["x"].shape == (7, 3, 4, 4)
    assert one["ids"].dtype == np.int64 and one["ids"].min() >= 0 and one["ids"].max() < 10
    assert one["m"].dtype == np.bool_
    assert one["h"].dtype == np.float16
    assert abs(float(one["x"].mean())) < 0.2 and 0.8 < float(one["x"].std()) < 1.2
    other, _, _ = _all(random_source(inputs, shapes, num_samples=7, seed=4))
    assert not np.array_equal(one["x"], other["x"])


def test_subset_and_split_are_disjoint_views():
    source = random_source([info()], resolve_shapes([info()], {}), num_samples=10)
    full, ids, _ = _all(source, 4)
    first, rest = source.split(3)
    assert (len(first), len(rest)) == (3, 7)
    a, ids_a, _ = _all(first, 2)
    b, ids_b, _ = _all(rest, 2)
    assert ids_a == ids[:3] and ids_b == ids[3:]
    np.testing.assert_array_equal(np.concatenate([a["x"], b["x"]]), full["x"])
    middle = source.subset(2, 5).subset(1, 2)
    assert len(middle) == 1 and [b.ids for b in middle.batches()] == [["3"]]
    assert "samples 3–3 of 10" in middle.description
    assert len(source.subset(8, 100)) == 2
    with pytest.raises(UsageError):
        source.subset(-1, 2)


def test_fixed_first_dim_clamps_the_batch(caplog):
    inputs = [info("images", (1, 3, 4, 4))]
    source = random_source(inputs, resolve_shapes(inputs, {}), num_samples=3)
    with caplog.at_level(logging.WARNING, logger="onnxopt"):
        batches = list(source.batches(16))
    assert [b.feeds["images"].shape for b in batches] == [(1, 3, 4, 4)] * 3
    assert any("input 'images' fixes the batch: using batch size 1 instead of 16" in r.getMessage() for r in caplog.records)


def test_fixed_first_dim_above_one_drops_the_remainder(caplog):
    inputs = [info("x", (2, 3))]
    source = random_source(inputs, resolve_shapes(inputs, {}), num_samples=5)
    with caplog.at_level(logging.WARNING, logger="onnxopt"):
        batches = list(source.batches(1))
    assert [len(b) for b in batches] == [2, 2]
    assert any("the last 1 of 5 samples are not used" in r.getMessage() for r in caplog.records)


def test_scalar_inputs_are_fed_without_the_sample_axis():
    inputs = [info("x", ("N", 3)), info("t", ())]
    source = random_source(inputs, resolve_shapes(inputs, {}), num_samples=2)
    batches = list(source.batches(8))
    assert [b.feeds["t"].shape for b in batches] == [(), ()]
    assert [b.feeds["x"].shape for b in batches] == [(1, 3), (1, 3)]


def test_conflicting_fixed_first_dims_are_refused_for_data_files(tmp_path):
    """Random sources feed such inputs as declared (test_random_inputs.py); data files
    hold samples on the first axis, which these inputs cannot share."""
    inputs = [info("a", (2, 3)), info("b", (3, 3))]
    np.savez(tmp_path / "d.npz", a=np.zeros((4, 3), np.float32), b=np.zeros((4, 3), np.float32))
    with pytest.raises(InputError, match="different fixed first dimensions"):
        open_data(tmp_path / "d.npz", inputs)


def test_random_source_refuses_string_inputs():
    with pytest.raises(InputError, match="input 's' has dtype object"):
        random_source([info("s", ("N",), object)], {"s": (1,)})


# --------------------------------------------------------------------------- arrays


def test_npz_is_memory_mapped_and_streamed(tmp_path):
    x = np.arange(5 * 3 * 8 * 8, dtype=np.float32).reshape(5, 3, 8, 8)
    ids = np.arange(10, dtype=np.int64).reshape(5, 2)
    np.savez(tmp_path / "d.npz", x=x, ids=ids)
    inputs = [info(), info("ids", ("N", 2), np.int64)]
    source = open_data(tmp_path / "d.npz", inputs)
    assert len(source) == 5
    assert isinstance(source.members["x"].array, np.memmap)
    feeds, got_ids, batches = _all(source, 2)
    assert [len(b) for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(feeds["x"], x)
    np.testing.assert_array_equal(feeds["ids"], ids)
    assert got_ids == ["0", "1", "2", "3", "4"]


def test_compressed_npz_and_npy(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    np.save(tmp_path / "a.npy", x)
    for name in ("c.npz", "a.npy"):
        feeds, _, _ = _all(open_data(tmp_path / name, [info()]), 3)
        np.testing.assert_array_equal(feeds["x"], x)


def test_npz_fortran_order(tmp_path):
    x = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(4, 6))
    np.savez(tmp_path / "f.npz", x=x)
    feeds, _, _ = _all(open_data(tmp_path / "f.npz", [info("x", ("N", 6))]), 3)
    np.testing.assert_array_equal(feeds["x"], x)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 3, 8, 8), np.float32), "extra": np.zeros(2)},
         "d.npz keys do not match the model's inputs: expected ['x'], got ['extra', 'x']"),
        ({"y": np.zeros((2, 3, 8, 8), np.float32)},
         "d.npz keys do not match the model's inputs: expected ['x'], got ['y']"),
        ({"x": np.zeros((2, 3, 8, 8), np.float64)},
         "input 'x': d.npz has dtype float64 but the model expects float32"),
        ({"x": np.zeros((2, 3, 8, 7), np.float32)},
         "input 'x': d.npz has shape (2, 3, 8, 7) but the model expects [S, 3, 8, 8] (S = samples, model input [N, 3, 8, 8])"),
        ({"x": np.zeros((3, 8, 8), np.float32)},
         "input 'x': d.npz has shape (3, 8, 8) but the model expects [S, 3, 8, 8] (S = samples, model input [N, 3, 8, 8])"),
        ({"x": np.zeros((0, 3, 8, 8), np.float32)}, "d.npz has no samples"),
    ],
)
def test_npz_mismatches_are_named(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(InputError) as error:
        open_data(tmp_path / "d.npz", [info()])
    assert str(error.value) == message


def test_npz_sample_counts_must_agree(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 8, 8), np.float32), ids=np.zeros((3, 2), np.int64))
    with pytest.raises(InputError, match=r"d.npz: arrays have different sample counts \('x'=2, 'ids'=3\)|"
                                         r"d.npz: arrays have different sample counts \('ids'=3, 'x'=2\)"):
        open_data(tmp_path / "d.npz", [info(), info("ids", ("N", 2), np.int64)])


def test_npy_for_a_multi_input_model_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(InputError) as error:
        open_data(tmp_path / "a.npy", [info("a"), info("b")])
    assert str(error.value) == "a.npy holds one array but the model has 2 inputs (a, b): use an .npz keyed by input name"


def test_missing_path_unsupported_file_and_corrupt_npz(tmp_path):
    with pytest.raises(InputError, match="data path not found: .*nope.npz"):
        open_data(tmp_path / "nope.npz", [info()])
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(InputError, match=r"unsupported data file 'd.csv': expected .npz, .npy, .txt \(text\) or a folder of images"):
        open_data(tmp_path / "d.csv", [info()])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read '.*bad.npz'"):
        open_data(tmp_path / "bad.npz", [info()])
    with zipfile.ZipFile(tmp_path / "obj.npz", "w") as archive:
        archive.writestr("x.npy", b"garbage")
    with pytest.raises(InputError, match="cannot read '.*obj.npz'"):
        open_data(tmp_path / "obj.npz", [info()])


def test_preprocess_applies_to_folders_only(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(UsageError, match="--preprocess applies to a folder of images, and 'a.npy' is a file"):
        open_data(tmp_path / "a.npy", [info()], preprocess="imagenet")


# --------------------------------------------------------------------------- images


def _images(folder, count=3, size=(12, 10)):
    folder.mkdir(exist_ok=True)
    for index in range(count):
        Image.new("RGB", size, (index * 10, 100, 200)).save(folder / f"img{index}.png")


def test_image_folder_streams_sorted_files_with_ids(tmp_path):
    folder = tmp_path / "imgs"
    _images(folder, 3)
    Image.new("RGB", (5, 5)).save(folder / "A.JPEG")  # upper-case suffix, sorts first
    (folder / "labels.tsv").write_text("file\tindex\n")  # not an image: ignored
    (folder / "sub").mkdir()
    source = open_data(folder, [info("x", ("N", 3, 8, 8))], preprocess="raw255")
    assert len(source) == 4
    loads: list[str] = []

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def load(self, path):
            loads.append(path.name)
            return self.inner.load(path)

    source.pipeline = Spy(source.pipeline)
    stream = source.batches(2)
    first = next(stream)
    assert first.ids == ["A.JPEG", "img0.png"] and loads == ["A.JPEG", "img0.png"]  # one batch read, no more
    assert first.feeds["x"].shape == (2, 3, 8, 8) and first.feeds["x"].dtype == np.float32
    second = next(stream)
    assert second.ids == ["img1.png", "img2.png"]
    np.testing.assert_allclose(second.feeds["x"][1, :, 0, 0], [20, 100, 200])


def test_image_folder_default_preprocess_is_derived_with_a_warning(tmp_path, caplog):
    _images(tmp_path / "i", 1)
    with caplog.at_level(logging.WARNING, logger="onnxopt"):
        source = open_data(tmp_path / "i", [info("x", ("N", 8, 8, 1))])
    batch = next(source.batches())
    assert batch.feeds["x"].shape == (1, 8, 8, 1)
    assert float(batch.feeds["x"].max()) <= 1.0
    assert any("no --preprocess given" in r.getMessage() and "layout=nhwc" in r.getMessage()
               and "color=gray" in r.getMessage() for r in caplog.records)


def test_image_folder_uses_resolved_shape_for_dynamic_size(tmp_path):
    _images(tmp_path / "i", 1)
    model_input = info("x", ("N", 3, "H", "W"))
    with pytest.raises(InputError) as error:
        open_data(tmp_path / "i", [model_input])
    assert str(error.value) == (
        "cannot derive the image size for input 'x' [N, 3, H, W]: its height and width are dynamic; "
        "give crop=HxW in --preprocess or --input-shape"
    )
    source = open_data(tmp_path / "i", [model_input], shapes={"x": (1, 3, 6, 4)})
    assert next(source.batches()).feeds["x"].shape == (1, 3, 6, 4)


def test_image_folder_casts_to_the_input_dtype(tmp_path):
    _images(tmp_path / "i", 1)
    source = open_data(tmp_path / "i", [info("x", ("N", 3, 8, 8), np.uint8)], preprocess="raw255")
    batch = next(source.batches())
    assert batch.feeds["x"].dtype == np.uint8
    assert batch.feeds["x"][0, 1, 0, 0] == 100


def test_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("x")
    with pytest.raises(InputError) as error:
        open_data(tmp_path / "e", [info()])
    assert str(error.value) == f"no images (jpg, jpeg, png, bmp, webp) in folder '{tmp_path / 'e'}'"


def test_unreadable_image_is_named(tmp_path):
    _images(tmp_path / "i", 2)
    (tmp_path / "i" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    source = open_data(tmp_path / "i", [info()], preprocess="raw255")
    with pytest.raises(InputError, match="cannot read image 'broken.jpg'"):
        list(source.batches(2))


def test_image_folder_needs_a_single_input(tmp_path):
    _images(tmp_path / "i", 1)
    with pytest.raises(InputError) as error:
        open_data(tmp_path / "i", [info("a"), info("b")])
    assert str(error.value) == "a folder of images needs a model with one input; this one has 2 (a, b)"
