"""onnxopt.validate.preprocess: SPEC parsing, presets, geometry and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnxopt.analysis.inputs import InputInfo
from onnxopt.errors import InputError, UsageError
from onnxopt.validate.preprocess import PRESETS, PreprocessSpec, image_pipeline, parse_preprocess
from tests.helpers import SHARED_IMAGES

TORCH_MEAN = (123.675, 116.28, 103.53)
TORCH_STD = (58.395, 57.12, 57.375)


def info(shape, name="x", dtype=np.float32) -> InputInfo:
    return InputInfo(name, np.dtype(dtype), shape)


# --------------------------------------------------------------------------- parsing


def test_parse_full_spec():
    spec = parse_preprocess("resize=256 crop=224 mean=123.675,116.28,103.53 std=58.395,57.12,57.375 layout=nchw color=rgb")
    assert spec == PreprocessSpec(256, (224, 224), TORCH_MEAN, TORCH_STD, "nchw", "rgb")
    assert parse_preprocess("crop=32x48").crop == (32, 48)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("imagenet", PreprocessSpec(256, (224, 224), TORCH_MEAN, TORCH_STD, "nchw", "rgb", "imagenet")),
        ("tf127", PreprocessSpec(mean=(127.0,), std=(128.0,), preset="tf127")),
        ("raw255", PreprocessSpec(mean=(0.0,), std=(1.0,), preset="raw255")),
        ("caffe", PreprocessSpec(mean=(104.0, 117.0, 123.0), std=(1.0,), color="bgr", preset="caffe")),
        ("IMAGENET layout=nhwc",
         PreprocessSpec(256, (224, 224), TORCH_MEAN, TORCH_STD, "nhwc", "rgb", "imagenet")),
        ("tf127 resize=256 crop=224", PreprocessSpec(256, (224, 224), (127.0,), (128.0,), preset="tf127")),
    ],
)
def test_presets_and_overrides(text, expected):
    assert parse_preprocess(text) == expected


def test_default_is_zero_to_one():
    spec = parse_preprocess("color=gray")
    assert (spec.mean, spec.std, spec.color) == ((0.0,), (255.0,), "gray")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("size=3", "unknown --preprocess key 'size': valid keys are resize, crop, mean, std, layout, color"),
        ("imagenet scale=2", "unknown --preprocess key 'scale': valid keys are resize, crop, mean, std, layout, color"),
        ("torch", "unknown --preprocess preset 'torch': presets are imagenet, tf127, raw255, caffe; "
                  "keys are resize, crop, mean, std, layout, color"),
        ("resize=256 imagenet", "bad --preprocess token 'imagenet': expected key=value"),
        ("", "empty --preprocess"),
        ("resize=abc", "resize must be a positive integer, got 'abc'"),
        ("resize=0", "resize must be a positive integer, got '0'"),
        ("crop=0", "crop must be a positive integer, got '0'"),
        ("crop=3xq", "crop must be a positive integer, got 'q'"),
        ("mean=1,2", "mean takes 1 or 3 finite values, got '1,2'"),
        ("mean=a", "mean must be numbers separated by commas, got 'a'"),
        ("std=nan", "std takes 1 or 3 finite values"),
        ("std=0", "std must not be 0"),
        ("std=1,0,1", "std must not be 0"),
        ("layout=chw", "layout must be one of nchw, nhwc, got 'chw'"),
        ("color=cmyk", "color must be one of rgb, bgr, gray, got 'cmyk'"),
        ("color=gray mean=1,2,3", "color=gray takes one mean and one std value"),
        ("resize=200 crop=224", "crop 224x224 is larger than resize 200"),
    ],
)
def test_bad_specs(text, message):
    with pytest.raises(UsageError) as error:
        parse_preprocess(text)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_describe_round_trips():
    for name in PRESETS:
        spec = parse_preprocess(name)
        assert parse_preprocess(spec.describe()) == PreprocessSpec(**{**spec.__dict__, "preset": None})


# --------------------------------------------------------------------------- pipeline resolution


def test_layout_and_color_come_from_the_model():
    nhwc = image_pipeline("caffe", info(("unk", 224, 224, 3), "input:0"))
    assert (nhwc.layout, nhwc.color, nhwc.size) == ("nhwc", "bgr", (224, 224))
    gray = image_pipeline(None, info(("N", 1, 64, 100)))
    assert (gray.layout, gray.color, gray.size) == ("nchw", "gray", (64, 100))
    forced = image_pipeline("imagenet layout=nhwc", info(("N", 224, 224, 3)))
    assert forced.layout == "nhwc"
    dynamic_channels = image_pipeline("crop=8", info(("N", "C", "H", "W")))
    assert (dynamic_channels.color, dynamic_channels.size) == ("rgb", (8, 8))


@pytest.mark.parametrize(
    ("spec", "shape", "message"),
    [
        ("imagenet", ("N", 10), "cannot feed images to input 'x' [N, 10]: images need a 4-D input (NCHW or NHWC)"),
        ("color=gray", ("N", 3, 8, 8), "--preprocess color=gray gives 1 channel(s) but input 'x' [N, 3, 8, 8] has 3 (nchw)"),
        ("imagenet", ("N", 1, 224, 224), "--preprocess color=rgb gives 3 channel(s) but input 'x' [N, 1, 224, 224] has 1 (nchw)"),
        (None, ("N", 4, 8, 8), "cannot derive image preprocessing for input 'x' [N, 4, 8, 8]: 4 channels (nchw) is not 1 or 3"),
        ("imagenet", ("N", 3, 32, 32), "--preprocess crop=224x224 does not fit input 'x' [N, 3, 32, 32]: its height is fixed at 32"),
        ("crop=32x30", ("N", 3, 32, 32), "--preprocess crop=32x30 does not fit input 'x' [N, 3, 32, 32]: its width is fixed at 32"),
        ("mean=1,2,3", ("N", 1, 8, 8), "--preprocess has 3 mean/std values but input 'x' [N, 1, 8, 8] takes gray images (1 channel)"),
        (None, ("N", 3, "H", 8), "cannot derive the image size for input 'x' [N, 3, H, 8]: its height and width are dynamic"),
    ],
)
def test_pipeline_mismatches(spec, shape, message):
    with pytest.raises(InputError) as error:
        image_pipeline(spec, info(shape))
    assert message in str(error.value)


# --------------------------------------------------------------------------- pixels


def test_crop_offsets_follow_torchvision():
    # 11×8 (w×h) image whose grey value encodes the pixel: v = x + 11·y.
    pixels = (np.arange(11)[None, :] + 11 * np.arange(8)[:, None]).astype(np.uint8)
    image = Image.fromarray(pixels, "L")
    # resize=8 keeps the image (short side already 8); crop 4 → left round(3.5)=4, top round(2)=2.
    pipeline = image_pipeline("raw255 resize=8 crop=4", info(("N", 1, 4, 4)))
    out = pipeline.apply(image)
    expected = pixels[2:6, 4:8].astype(np.float32)[None]
    np.testing.assert_array_equal(out, expected)
    # 5×3 crop from 11×8: left round(3)=3, top round(2.5)=2 (banker's rounding, as torchvision).
    out = image_pipeline("raw255 resize=8 crop=3x5", info(("N", 1, 3, 5))).apply(image)
    np.testing.assert_array_equal(out[0], pixels[2:5, 3:8])


def test_resize_short_side_then_crop_shapes():
    image = Image.new("RGB", (500, 375), (255, 0, 0))
    pipeline = image_pipeline("imagenet", info(("N", 3, 224, 224)))
    out = pipeline.apply(image)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [(255 - TORCH_MEAN[0]) / TORCH_STD[0],
                                              (0 - TORCH_MEAN[1]) / TORCH_STD[1],
                                              (0 - TORCH_MEAN[2]) / TORCH_STD[2]], rtol=1e-6)


def test_without_resize_the_image_covers_the_crop():
    # A 40×20 image with a left (0) and a right (200) half; target 10×10: scaled to 20×10,
    # centre 10 columns span the boundary equally.
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, 20:] = 200
    out = image_pipeline("raw255", info(("N", 1, 10, 10))).apply(Image.fromarray(pixels, "L"))
    assert out.shape == (1, 10, 10)
    assert out[0, 5, 0] == 0 and out[0, 5, 9] == 200


def test_resize_smaller_than_crop_in_one_direction_scales_up():
    # A wide crop (4×16) from resize=8 on a square image: 8×8 is too narrow, scaled to 16×16.
    out = image_pipeline("raw255 resize=8 crop=4x16", info(("N", 1, 4, 16))).apply(Image.new("L", (30, 30), 7))
    assert out.shape == (1, 4, 16) and np.all(out == 7)


@pytest.mark.parametrize(
    ("spec", "layout_shape", "expected"),
    [
        ("mean=10,20,30 std=1", ("N", 3, 2, 2), [0.0, 0.0, 0.0]),
        ("caffe", ("N", 3, 2, 2), [30 - 104.0, 20 - 117.0, 10 - 123.0]),
        ("tf127", ("N", 2, 2, 3), [(10 - 127) / 128, (20 - 127) / 128, (30 - 127) / 128]),
        ("raw255 color=bgr layout=nhwc", ("N", 2, 2, 3), [30.0, 20.0, 10.0]),
        (None, ("N", 3, 2, 2), [10 / 255, 20 / 255, 30 / 255]),
    ],
)
def test_normalisation_colour_and_layout(spec, layout_shape, expected):
    pipeline = image_pipeline(spec, info(layout_shape))
    out = pipeline.apply(Image.new("RGB", (2, 2), (10, 20, 30)))
    values = out[:, 0, 0] if pipeline.layout == "nchw" else out[0, 0, :]
    assert out.shape == ((3, 2, 2) if pipeline.layout == "nchw" else (2, 2, 3))
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_load_converts_modes_and_names_unreadable_files(tmp_path):
    Image.new("RGBA", (4, 4), (1, 2, 3, 0)).save(tmp_path / "a.png")
    Image.new("P", (4, 4)).save(tmp_path / "p.png")
    pipeline = image_pipeline("raw255", info(("N", 3, 4, 4)))
    np.testing.assert_array_equal(pipeline.load(tmp_path / "a.png")[:, 0, 0], [1, 2, 3])
    assert pipeline.load(tmp_path / "p.png").shape == (3, 4, 4)
    (tmp_path / "t.png").write_bytes((tmp_path / "a.png").read_bytes()[:40])
    with pytest.raises(InputError, match="cannot read image 't.png'"):
        pipeline.load(tmp_path / "t.png")


@pytest.mark.skipif(not (SHARED_IMAGES / "cat.jpg").exists(), reason="needs ../shared/images/cat.jpg")
def test_real_photo_imagenet_statistics():
    out = image_pipeline("imagenet", info(("N", 3, 224, 224))).load(SHARED_IMAGES / "cat.jpg")
    assert out.shape == (3, 224, 224)
    # Normalised natural images sit roughly around 0 with unit-ish spread.
    assert -1.5 < float(out.mean()) < 1.5 and 0.3 < float(out.std()) < 2.0
