"""Image preprocessing for validation and calibration data: ``--preprocess SPEC``.

A SPEC is an optional preset name followed by ``key=value`` tokens separated by spaces
(``resize``, ``crop``, ``mean``, ``std``, ``color``, ``layout``; :func:`parse_preprocess`
says what each does), e.g. ``imagenet layout=nhwc``. Without any SPEC the geometry and
colour come from the model and pixels are scaled to 0..1, with a warning.
:func:`image_pipeline` resolves a SPEC against the model's input into an
:class:`ImagePipeline`. The geometry follows torchvision (``Resize`` short side
``int(N·long/short)``, ``CenterCrop`` offsets ``round((size−crop)/2)``) on Pillow's
bilinear resize, so a torch model's published accuracy is reproduced. Output is float32,
cast to the model input's dtype by the data source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxopt.errors import InputError, UsageError

if TYPE_CHECKING:
    from onnxopt.analysis.inputs import InputInfo

logger = logging.getLogger(__name__)

KEYS = ("resize", "crop", "mean", "std", "layout", "color")
LAYOUTS = ("nchw", "nhwc")
COLORS = ("rgb", "bgr", "gray")


@dataclass(frozen=True)
class PreprocessSpec:
    """A parsed ``--preprocess`` SPEC; None fields are filled from the model."""

    resize: int | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str | None = None
    color: str | None = None
    preset: str | None = None

    def describe(self) -> str:
        """Canonical SPEC text (preset folded in), e.g. for reports."""
        parts = []
        if self.resize is not None:
            parts.append(f"resize={self.resize}")
        if self.crop is not None:
            parts.append(f"crop={self.crop[0]}x{self.crop[1]}")
        parts.append("mean=" + ",".join(f"{v:g}" for v in self.mean))
        parts.append("std=" + ",".join(f"{v:g}" for v in self.std))
        if self.color is not None:
            parts.append(f"color={self.color}")
        if self.layout is not None:
            parts.append(f"layout={self.layout}")
        return " ".join(parts)


TORCH_MEAN = (123.675, 116.28, 103.53)
TORCH_STD = (58.395, 57.12, 57.375)
PRESETS: dict[str, PreprocessSpec] = {
    "imagenet": PreprocessSpec(256, (224, 224), TORCH_MEAN, TORCH_STD, "nchw", "rgb", "imagenet"),
    "tf127": PreprocessSpec(mean=(127.0,), std=(128.0,), preset="tf127"),
    "raw255": PreprocessSpec(mean=(0.0,), std=(1.0,), preset="raw255"),
    "caffe": PreprocessSpec(mean=(104.0, 117.0, 123.0), std=(1.0,), color="bgr", preset="caffe"),
}
#: Used when no SPEC is given: pixels scaled to 0..1, geometry and colour from the model.
DEFAULT = PreprocessSpec(mean=(0.0,), std=(255.0,))


def _positive_int(key: str, text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"bad --preprocess '{spec}': {key} must be a positive integer, got '{text}'")
    return value


def _floats(key: str, text: str, spec: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"bad --preprocess '{spec}': {key} must be numbers separated by commas, got '{text}'") from None
    if len(values) not in (1, 3) or not all(np.isfinite(values)):
        raise UsageError(f"bad --preprocess '{spec}': {key} takes 1 or 3 finite values, got '{text}'")
    return values


def parse_preprocess(spec: str) -> PreprocessSpec:
    """Parse a SPEC; UsageError naming the problem.

    A SPEC is an optional preset name followed by ``key=value`` tokens separated by spaces
    (values hold no spaces; lists use commas)::

        resize=256 crop=224 mean=123.675,116.28,103.53 std=58.395,57.12,57.375 layout=nchw color=rgb
        imagenet layout=nhwc          # a preset with an override

    Keys
        ``resize=N``      resize the short side to N (bilinear), then
        ``crop=N|HxW``    centre-crop to N×N or H×W. Without ``crop`` the model input's fixed
                          H×W is used; without ``resize`` the image is scaled so that it just
                          covers the crop (short side = crop). If a resized image is smaller
                          than the crop in one direction it is scaled up to cover it.
        ``mean=..., std=...``  one value or one per channel, in 0..255 pixel units:
                          ``x = (pixel − mean) / std``. Torch style is mean 123.675,… std
                          58.395,…; ``(x−127)/128`` is mean 127 std 128; 0..1 is mean 0 std
                          255; raw pixels are mean 0 std 1.
        ``color=rgb|bgr|gray``  channel order (gray = one channel). Default: from the model's
                          channel count (1 → gray, 3 → rgb).
        ``layout=nchw|nhwc``    default: from the model's input, channels-last when its last
                          dim is 1 or 3 and dim 1 is not.

    Presets: ``imagenet`` (resize 256, crop 224, torch mean/std, rgb, nchw), ``tf127``
    (mean 127, std 128), ``raw255`` (mean 0, std 1), ``caffe`` (bgr, mean 104,117,123,
    std 1). Without any SPEC the geometry and colour come from the model and pixels are
    scaled to 0..1 (mean 0, std 255), with a warning.
    """
    tokens = spec.split()
    if not tokens:
        raise UsageError("empty --preprocess: give a preset (" + ", ".join(PRESETS) + ") or key=value tokens")
    result = DEFAULT
    if "=" not in tokens[0]:
        name = tokens.pop(0).lower()
        if name not in PRESETS:
            raise UsageError(
                f"unknown --preprocess preset '{name}': presets are {', '.join(PRESETS)}; keys are {', '.join(KEYS)}"
            )
        result = PRESETS[name]
    changes: dict[str, object] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        key = key.lower()
        if not sep:
            raise UsageError(f"bad --preprocess token '{token}': expected key=value (keys: {', '.join(KEYS)}); a preset must come first")
        if key in ("tokenizer", "max_length"):  # onnxopt.validate.text's keys
            raise UsageError(f"--preprocess key '{key}' is for text data (--data FILE.txt, one text per line); "
                             f"image keys are {', '.join(KEYS)}")
        if key not in KEYS:
            raise UsageError(f"unknown --preprocess key '{key}': valid keys are {', '.join(KEYS)}")
        if key == "resize":
            changes["resize"] = _positive_int(key, value, spec)
        elif key == "crop":
            height, _, width = value.lower().partition("x")
            h = _positive_int(key, height, spec)
            changes["crop"] = (h, _positive_int(key, width, spec) if width else h)
        elif key in ("mean", "std"):
            changes[key] = _floats(key, value, spec)
        elif key == "layout":
            if value.lower() not in LAYOUTS:
                raise UsageError(f"bad --preprocess '{spec}': layout must be one of {', '.join(LAYOUTS)}, got '{value}'")
            changes[key] = value.lower()
        else:
            if value.lower() not in COLORS:
                raise UsageError(f"bad --preprocess '{spec}': color must be one of {', '.join(COLORS)}, got '{value}'")
            changes[key] = value.lower()
    result = replace(result, **changes)
    if any(v == 0 for v in result.std):
        raise UsageError(f"bad --preprocess '{spec}': std must not be 0")
    if result.color == "gray" and (len(result.mean) == 3 or len(result.std) == 3):
        raise UsageError(f"bad --preprocess '{spec}': color=gray takes one mean and one std value")
    if result.resize is not None and result.crop is not None and min(result.crop) > result.resize:
        raise UsageError(f"bad --preprocess '{spec}': crop {result.crop[0]}x{result.crop[1]} is larger than resize {result.resize}")
    return result


@dataclass(frozen=True)
class ImagePipeline:
    """A SPEC resolved against one model input: loads a file into one sample array."""

    spec: PreprocessSpec
    size: tuple[int, int]
    layout: str
    color: str

    def describe(self) -> str:
        return replace(self.spec, crop=self.size, layout=self.layout, color=self.color).describe()

    def load(self, path: str | Path) -> np.ndarray:
        """One image as float32 [C,H,W] (nchw) or [H,W,C] (nhwc); InputError naming the file."""
        from PIL import Image

        path = Path(path)
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.color == "gray" else "RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise InputError(f"cannot read image '{path.name}': {error}") from error
        return self.apply(image)

    def apply(self, image) -> np.ndarray:
        """Resize, crop and normalise a PIL image already in the pipeline's colour mode."""
        from PIL import Image

        height, width = self.size
        w, h = image.size
        if self.spec.resize is not None:
            n = self.spec.resize
            nw, nh = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
        else:
            nw, nh = w, h
        if nw < width or nh < height or self.spec.resize is None:
            scale = max(width / w, height / h)
            nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = int(round((nw - width) / 2.0)), int(round((nh - height) / 2.0))
        if (nw, nh) != (width, height):
            image = image.crop((left, top, left + width, top + height))
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == 2:
            array = array[:, :, None]
        if self.color == "bgr":
            array = array[:, :, ::-1]
        mean = np.asarray(self.spec.mean, dtype=np.float32)
        std = np.asarray(self.spec.std, dtype=np.float32)
        array = (array - mean) / std
        if self.layout == "nchw":
            array = array.transpose(2, 0, 1)
        return np.ascontiguousarray(array, dtype=np.float32)


def image_pipeline(
    preprocess: str | PreprocessSpec | None,
    info: InputInfo,
    shape: tuple[int, ...] | None = None,
) -> ImagePipeline:
    """Resolve ``preprocess`` against the model input ``info`` (concrete ``shape`` optional).

    InputError with one line when the model input cannot take images or disagrees with the
    SPEC (channels, fixed H×W), or when the H×W cannot be known.
    """
    from onnxopt.analysis.inputs import detect_channels_last

    model_shape = info.shape
    where = f"input '{info.name}' {info.shape_str()}"
    if model_shape is None or len(model_shape) != 4:
        raise InputError(f"cannot feed images to {where}: images need a 4-D input (NCHW or NHWC)")
    if isinstance(preprocess, PreprocessSpec):
        spec = preprocess
    else:
        spec = parse_preprocess(preprocess) if preprocess is not None else DEFAULT
    layout = spec.layout or ("nhwc" if detect_channels_last(model_shape) else "nchw")
    channel_axis, spatial = (1, (2, 3)) if layout == "nchw" else (3, (1, 2))
    channels = model_shape[channel_axis]
    if not (isinstance(channels, int) and channels > 0):
        channels = None
    if spec.color is not None:
        color = spec.color
        wanted = 1 if color == "gray" else 3
        if channels is not None and channels != wanted:
            raise InputError(
                f"--preprocess color={color} gives {wanted} channel(s) but {where} has {channels} ({layout})"
            )
    elif channels in (1, 3) or channels is None:
        color = "gray" if channels == 1 else "rgb"
    else:
        raise InputError(f"cannot derive image preprocessing for {where}: {channels} channels ({layout}) is not 1 or 3")
    if color == "gray" and (len(spec.mean) == 3 or len(spec.std) == 3):
        raise InputError(f"--preprocess has 3 mean/std values but {where} takes gray images (1 channel)")

    fixed = tuple(d if isinstance(d, int) and d > 0 else None for d in (model_shape[spatial[0]], model_shape[spatial[1]]))
    if spec.crop is not None:
        size = spec.crop
        for axis_name, want, have in zip(("height", "width"), size, fixed, strict=True):
            if have is not None and have != want:
                raise InputError(
                    f"--preprocess crop={size[0]}x{size[1]} does not fit {where}: its {axis_name} is fixed at {have}"
                )
    else:
        concrete = fixed
        if shape is not None and len(shape) == 4:
            concrete = (shape[spatial[0]], shape[spatial[1]])
        if None in concrete:
            raise InputError(
                f"cannot derive the image size for {where}: its height and width are dynamic; "
                "give crop=HxW in --preprocess or --input-shape"
            )
        size = (int(concrete[0]), int(concrete[1]))
    pipeline = ImagePipeline(spec, size, layout, color)
    if preprocess is None:
        logger.warning(
            "no --preprocess given: using '%s' (pixels scaled to 0..1) derived from %s; "
            "give --preprocess to match how the model was trained",
            pipeline.describe(), where,
        )
    return pipeline
