"""``int8`` is never worse than the library it wraps: on every shared CNN model where plain
``onnxruntime.quantization.quantize_static`` (per-channel MinMax, QDQ, u8/s8, after
``quant_pre_process``; models below opset 13 converted to 13 first, as per-channel
quantization needs) writes a valid model, this pass's model is at least as close to FP32 —
mean per-sample Pearson r and worst per-channel r of every output — on the same few
calibration photos (small inputs where the model takes them)."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxopt
from onnxopt.passbase import PassContext
from onnxopt.passes import _quant_common as qc
from tests.helpers import SHARED_IMAGES, SHARED_MODELS

pytestmark = pytest.mark.shared

SAMPLES = 6
TOLERANCE = 0.005  # the pass keeps its own model within 0.002 of the library's; the rest is rounding
TORCH = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))


@dataclass(frozen=True)
class Photos:
    """How a model wants photos: size (H, W), layout, colour and normalization."""

    size: tuple[int, int]
    layout: str = "nchw"  # or nhwc
    grey: bool = False
    bgr: bool = False
    scale: float = 1 / 255  # x * scale, then (x - mean) / std
    mean: object = 0.0
    std: object = 1.0


#: Every CNN in ../shared/models (the README's preprocessing; small inputs where dynamic).
MODELS = {
    "easyocr_en_g2_rec.onnx": Photos((64, 128), grey=True, mean=0.5, std=0.5),
    "efficientnet_lite0_imagenet.onnx": Photos((224, 224), scale=1.0, mean=127.0, std=128.0),
    "mobilenet_v2_imagenet.onnx": Photos((224, 224), mean=TORCH[0], std=TORCH[1]),
    "mtcnn_pnet.onnx": Photos((48, 48), layout="nhwc", scale=1.0, mean=127.5, std=128.0),
    "mtcnn_rnet.onnx": Photos((24, 24), layout="nhwc", scale=1.0, mean=127.5, std=128.0),
    "mtcnn_onet.onnx": Photos((48, 48), layout="nhwc", scale=1.0, mean=127.5, std=128.0),
    "ppocrv4_det_mobile.onnx": Photos((64, 64), mean=TORCH[0], std=TORCH[1]),
    "resnet20_cifar10.onnx": Photos((32, 32), mean=TORCH[0], std=TORCH[1]),
    "resnet56_cifar10.onnx": Photos((32, 32), mean=TORCH[0], std=TORCH[1]),
    "resnet50_half_open_nsfw_opset9.onnx": Photos((224, 224), layout="nhwc", bgr=True, scale=1.0,
                                                  mean=np.array([104.0, 117.0, 123.0])),
    "superres_espcn.onnx": Photos((224, 224), grey=True),
    "vgg_style_cifar10.onnx": Photos((32, 32), scale=1.0),
    "yolo_style_det_ddddocr.onnx": Photos((416, 416)),
}


def _photos(spec: Photos, count: int) -> np.ndarray:
    from PIL import Image

    files = sorted((SHARED_IMAGES / "imagenet").glob("*.JPEG"))[:count]
    out = []
    for path in files:
        image = Image.open(path).convert("L" if spec.grey else "RGB").resize(spec.size[::-1], Image.BILINEAR)
        x = np.asarray(image, dtype=np.float64)
        x = x[..., None] if spec.grey else (x[..., ::-1] if spec.bgr else x)
        x = (x * spec.scale - spec.mean) / spec.std
        out.append(x if spec.layout == "nhwc" else x.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def _plain_quantize_static(path: Path, feeds: list[dict[str, np.ndarray]], tmp: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader:
        def __init__(self):
            self.samples = iter(feeds)

        def get_next(self):
            return next(self.samples, None)

    source = path
    model = onnx.load(str(path))
    if qc.opset_of(model) < 13:  # per-channel DequantizeLinear needs 13: what a user of the library does first
        model, _ = qc.upgrade_opset(model, 13)
        source = tmp / "opset13.onnx"
        onnx.save_model(model, str(source))
    path = source
    # qc.contained: onnxruntime's failing symbolic shape inference writes into the working directory
    with contextlib.redirect_stdout(io.StringIO()), qc.contained(tmp):
        logging.disable(logging.WARNING)
        try:
            for skip_symbolic in (False, True):
                try:
                    quant_pre_process(str(path), str(tmp / "pre.onnx"), skip_symbolic_shape=skip_symbolic)
                    source = tmp / "pre.onnx"
                    break
                except Exception:  # noqa: BLE001 - then without (symbolic) pre-processing, as a user would
                    continue
            quantize_static(str(source), str(tmp / "plain.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
    return onnx.load(str(tmp / "plain.onnx"))


def _session(model: onnx.ModelProto):
    from onnxopt.runtime import create_session

    return create_session(model, log_level=4)


def _r(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0:
        return None
    return 0.0 if b.std() == 0 else float(np.corrcoef(a, b)[0, 1])


def _closeness(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float | None]:
    """(mean per-sample r, worst per-channel r) of one output, samples on axis 0; channels on
    the last axis of [N, T, C], on the smaller of axis 1 and the last of 4-D outputs."""
    samples = [r for r in (_r(a, b) for a, b in zip(reference, candidate)) if r is not None]
    worst = None
    if reference.ndim >= 3:
        axis = 2 if reference.ndim == 3 else (1 if reference.shape[1] <= reference.shape[-1] else reference.ndim - 1)
        ref = np.moveaxis(reference, axis, 0).reshape(reference.shape[axis], -1)
        out = np.moveaxis(candidate, axis, 0).reshape(reference.shape[axis], -1)
        channels = [r for r in (_r(a, b) for a, b in zip(ref, out)) if r is not None]
        worst = min(channels) if channels and ref.shape[1] >= 32 else None
    mean = float(np.mean(samples)) if samples else (worst if worst is not None else 0.0)
    return mean, worst


def test_every_shared_cnn_has_its_preprocessing_here():
    if not SHARED_MODELS.exists():
        pytest.skip("needs ../shared/models")
    assert sorted(p.name for p in SHARED_MODELS.glob("*.onnx")) == sorted(MODELS)


@pytest.mark.parametrize("model_file", sorted(MODELS))
def test_int8_is_not_worse_than_plain_quantize_static(model_file, tmp_path):
    path = SHARED_MODELS / model_file
    if not path.exists() or not (SHARED_IMAGES / "imagenet").exists():
        pytest.skip(f"needs ../shared/models/{model_file} and ../shared/images/imagenet")
    model = onnx.load(str(path))
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    assert len(inputs) == 1
    name = inputs[0].name
    photos = _photos(MODELS[model_file], SAMPLES)
    feeds = [{name: photos[i : i + 1]} for i in range(SAMPLES)]

    try:
        plain = _plain_quantize_static(path, feeds, tmp_path)
        plain_session = _session(plain)
    except Exception as exc:  # noqa: BLE001 - the library writes an invalid model (opset 9/12, Keras names)
        pytest.skip(f"plain quantize_static writes no valid model here: {str(exc).splitlines()[0][:160]}")

    context = PassContext(calibration=lambda: iter(feeds), calibration_description=f"{SAMPLES} photos")
    quantized, report = onnxopt.optimize(model, "int8", context=context)
    figures = report.passes[0].figures
    assert "library_check" in figures, figures

    reference, ours, theirs = _session(model), _session(quantized), plain_session
    outputs = [o.name for o in reference.get_outputs() if o.type == "tensor(float)"]
    expected = [np.concatenate(x) for x in zip(*(reference.run(outputs, f) for f in feeds))]
    got_ours = [np.concatenate(x) for x in zip(*(ours.run(outputs, f) for f in feeds))]
    got_theirs = [np.concatenate(x) for x in zip(*(theirs.run(outputs, f) for f in feeds))]
    for output, ref, a, b in zip(outputs, expected, got_ours, got_theirs):
        (mean_a, worst_a), (mean_b, worst_b) = _closeness(ref, a), _closeness(ref, b)
        detail = (f"{output}: this pass mean r {mean_a:.4f}, worst channel {worst_a}; quantize_static "
                  f"{mean_b:.4f}, {worst_b}; {figures['library_check']}")
        assert mean_a >= mean_b - TOLERANCE, detail
        if worst_b is not None:
            assert worst_a >= worst_b - TOLERANCE, detail
