"""Train and export the sample model ``digits_cnn.onnx`` (a real, trained digit classifier).

This script is NOT a runtime dependency of onnxopt: it needs torch and scikit-learn, which
onnxopt does not. It only regenerates the files in ``samples/``::

    python samples/train_digits.py     # writes samples/digits_*; ~60-90 s of CPU time (2 threads)

Data
----
scikit-learn's ``load_digits()``: 1797 real labelled 8×8 handwritten digits (0–9, pixel
values 0..16), shipped inside the scikit-learn package, so nothing is downloaded.
Split: ``train_test_split(test_size=450, stratify=labels, random_state=0, shuffle=True)``
→ 1347 training / 450 held-out test images.

Preprocessing (what the model's ``input`` expects, float32 [N, 1, 16, 16])
--------------------------------------------------------------------------
1. ``x = pixels / 16``                     → values in [0, 1], shape [N, 1, 8, 8];
2. bilinear upsampling to 16×16:
   ``torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)``
   (stays in [0, 1]);
3. normalisation ``x = (x - MEAN) / STD`` with the fixed constants ``MEAN = 0.3`` and
   ``STD = 0.32`` below (close to the training split's own mean 0.30 and std 0.32, which
   the script prints; they are constants so that preprocessing does not depend on the split).

The preprocessing string is also stored in the model's ``metadata_props["preprocessing"]``.

Model
-----
Conv3×3 1→32 +BN+ReLU, Conv3×3 32→64 +BN+ReLU, Conv3×3 64→64 stride 2 +BN+ReLU,
Conv3×3 64→128 +BN+ReLU (all padding 1, no conv bias), global average pool,
Linear 128→64 + ReLU, Linear 64→10 → ``logits`` [N, 10].

Training: seeded (torch, numpy, split), Adam lr 3e-3 with a one-cycle schedule, batch 64,
10 epochs, mild augmentation (random ±1 pixel shift of the 16×16 image), CPU only.

Export: TorchScript exporter (``dynamo=False``), opset 17, dynamic batch, model in eval
mode. ``training=TrainingMode.PRESERVE`` is used (the model is in eval mode, so the
BatchNormalization nodes are inference-mode) because the exporter's EVAL mode folds each
BatchNorm into the preceding Conv; the sample keeps BatchNorm as separate nodes so that
onnxopt's ``simplify`` pass has real work to do. Constant folding stays on. The IR version
is set to 8 afterwards (onnxruntime 1.31 refuses the IR that onnx 1.23 writes).

Outputs (in the folder of this script)
--------------------------------------
* ``digits_cnn.onnx``            the trained model (weights as initializers);
* ``digits_cnn_constants.onnx``  the same model with every initializer moved into a
                                 ``Constant`` node at the start of the graph (the form
                                 PaddlePaddle exports use);
* ``digits_test.npz``            key ``input``: the first 64 held-out test images, preprocessed;
* ``digits_test_labels.npy``     int64 labels of those 64 images;
* ``digits_calib.npz``           key ``input``: the first 64 training images (disjoint from the
                                 test split), preprocessed, for calibration.

If onnxruntime is importable, the exported models are checked against torch on all 450
test images (max abs difference of the logits must be ≤ 1e-5, same accuracy).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
TEST_SIZE = 450
MEAN = 0.3
STD = 0.32
EPOCHS = 10
BATCH = 64
LR = 3e-3
OPSET = 17
IR_VERSION = 8
N_SAMPLES = 64
PREPROCESSING = (
    "pixels/16 -> [0,1]; bilinear upsample 8x8 -> 16x16 (align_corners=False); "
    f"(x - {MEAN}) / {STD}; layout [N,1,16,16] float32"
)
OUT = Path(__file__).resolve().parent


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def preprocess(images_8x8: np.ndarray) -> np.ndarray:
    """[N, 8, 8] pixels 0..16 → float32 [N, 1, 16, 16] as the model expects."""
    x = torch.from_numpy(np.asarray(images_8x8, dtype=np.float32)[:, None] / 16.0)
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return ((x - MEAN) / STD).numpy().astype(np.float32)


def load_split():
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images,
        digits.target,
        test_size=TEST_SIZE,
        stratify=digits.target,
        random_state=SEED,
        shuffle=True,
    )
    return (
        preprocess(x_train),
        y_train.astype(np.int64),
        preprocess(x_test),
        y_test.astype(np.int64),
    )


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(1, 32),
            *conv_bn_relu(32, 64),
            *conv_bn_relu(64, 64, stride=2),
            *conv_bn_relu(64, 128),
        )
        self.fc1 = nn.Linear(128, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.mean(dim=(2, 3))  # global average pool → [N, 128]
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixel in each direction (edge padded with the background)."""
    n = x.shape[0]
    background = (0.0 - MEAN) / STD
    padded = F.pad(x, (1, 1, 1, 1), value=background)
    shifted = torch.stack([padded[:, :, dy : dy + 16, dx : dx + 16] for dy in range(3) for dx in range(3)])
    choice = torch.randint(0, 9, (n,), generator=gen)
    return shifted[choice, torch.arange(n)]


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(x)).numpy()


def train(x_train, y_train, x_test, y_test) -> tuple[nn.Module, float, float]:
    model = DigitsCNN()
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    steps = EPOCHS * ((len(xt) + BATCH - 1) // BATCH)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    start, cpu_start = time.perf_counter(), time.process_time()
    for epoch in range(1, EPOCHS + 1):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(xt), BATCH):
            idx = perm[i : i + BATCH]
            xb, yb = random_shift(xt[idx], gen), yt[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            total += len(idx)
        test_acc = (predict(model, x_test).argmax(1) == y_test).mean()
        print(
            f"epoch {epoch:2d}  loss {loss_sum / total:.4f}  train acc {correct / total:.4f}  "
            f"test acc {test_acc:.4f}  ({time.perf_counter() - start:.1f}s)"
        )
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    model.eval()
    return model, elapsed, cpu


def export(model: nn.Module, path: Path) -> onnx.ModelProto:
    model.eval()
    dummy = torch.zeros(2, 1, 16, 16)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        training=torch.onnx.TrainingMode.PRESERVE,  # eval model; EVAL mode would fuse BN into Conv
        do_constant_folding=True,
    )
    proto = onnx.load(str(path))
    proto.ir_version = IR_VERSION
    proto.producer_name = "onnxopt samples/train_digits.py"
    proto.doc_string = "Digits CNN trained on scikit-learn load_digits (8x8 upsampled to 16x16)."
    del proto.metadata_props[:]
    helper.set_model_props(proto, {"preprocessing": PREPROCESSING, "classes": "0,1,2,3,4,5,6,7,8,9"})
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == 4, f"expected 4 BatchNormalization nodes, got {ops}"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


def to_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every initializer stored in a Constant node at the graph start."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    init_names = {t.name for t in graph.initializer}
    constants = [
        helper.make_node(
            "Constant",
            [],
            [t.name],
            name=f"const_{t.name}",
            value=numpy_helper.from_array(numpy_helper.to_array(t), t.name),
        )
        for t in graph.initializer
    ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(constants + nodes)
    del graph.initializer[:]
    kept_inputs = [i for i in graph.input if i.name not in init_names]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    out.doc_string = proto.doc_string + " Weights stored in Constant nodes (PaddlePaddle-style)."
    onnx.checker.check_model(out, full_check=True)
    return out


def check_with_onnxruntime(paths: list[Path], x_test, y_test, torch_logits) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not importable: skipping the onnxruntime check")
        return
    torch_acc = (torch_logits.argmax(1) == y_test).mean()
    for path in paths:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ort_logits = sess.run(["logits"], {"input": x_test})[0]
        diff = float(np.abs(ort_logits - torch_logits).max())
        acc = (ort_logits.argmax(1) == y_test).mean()
        print(
            f"onnxruntime {ort.__version__} {path.name}: test acc {acc:.4f} ({int(round(acc * len(y_test)))}/"
            f"{len(y_test)}), max |ort - torch| = {diff:.3g}"
        )
        assert diff <= 1e-5, f"{path.name}: onnxruntime differs from torch by {diff}"
        assert acc == torch_acc, f"{path.name}: onnxruntime accuracy {acc} != torch {torch_acc}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: this script's folder)")
    parser.add_argument(
        "--dump-reference",
        type=Path,
        help="also write an .npz with all 450 preprocessed test images, labels and torch logits",
    )
    args = parser.parse_args()
    seed_everything(SEED)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

    x_train, y_train, x_test, y_test = load_split()
    print(
        f"train {x_train.shape} test {x_test.shape}; training split after preprocessing: "
        f"mean {x_train.mean():.4f} std {x_train.std():.4f} (raw [0,1]: mean {x_train.mean() * STD + MEAN:.4f} "
        f"std {x_train.std() * STD:.4f})"
    )
    model, elapsed, cpu = train(x_train, y_train, x_test, y_test)
    torch_logits = predict(model, x_test)
    torch_acc = (torch_logits.argmax(1) == y_test).mean()
    print(
        f"trained {EPOCHS} epochs in {elapsed:.1f}s wall ({cpu:.1f}s CPU, {torch.get_num_threads()} threads); PyTorch test acc {torch_acc:.4f} "
        f"({int(round(torch_acc * len(y_test)))}/{len(y_test)})"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "digits_cnn.onnx"
    proto = export(model, onnx_path)
    const_path = args.out / "digits_cnn_constants.onnx"
    onnx.save(to_constants(proto), str(const_path))

    # Uncompressed .npz so that onnxopt can memory-map the members.
    np.savez(args.out / "digits_test.npz", input=x_test[:N_SAMPLES])
    np.save(args.out / "digits_test_labels.npy", y_test[:N_SAMPLES])
    np.savez(args.out / "digits_calib.npz", input=x_train[:N_SAMPLES])
    if args.dump_reference:
        np.savez(args.dump_reference, input=x_test, labels=y_test, torch_logits=torch_logits)

    check_with_onnxruntime([onnx_path, const_path], x_test, y_test, torch_logits)
    for name in (
        "digits_cnn.onnx",
        "digits_cnn_constants.onnx",
        "digits_test.npz",
        "digits_test_labels.npy",
        "digits_calib.npz",
    ):
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
