"""Deliberately broken models, generated on the fly, each with the rule id that must report it.

Each builder writes one file (or folder) into ``folder`` and returns its path. The corpus
covers every malformed case of the foundation issue (empty, truncated, random bytes, a
non-ONNX protobuf, a checker failure, missing or escaping external data) plus one or more
cases per error-level rule of ``onnxopt check``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import TEST_IR_VERSION, tiny_conv_model


@dataclass(frozen=True)
class Case:
    name: str
    rule: str
    build: Callable[[Path], Path]


def _write(folder: Path, name: str, model: onnx.ModelProto) -> Path:
    path = folder / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _add_model(name: str = "n0") -> onnx.ModelProto:
    """y = Relu(x + w), named nodes, float[1,4]."""
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,4] y) {
          a = Add (x, w)
          y = Relu (a)
        }"""
    )
    model.graph.initializer.append(numpy_helper.from_array(np.ones((1, 4), np.float32), "w"))
    model.graph.node[0].name = name
    model.graph.node[1].name = "n1"
    return model


def _identity_model(opsets: list[tuple[str, int]], ir_version: int = TEST_IR_VERSION) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="id")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = ir_version
    return model


def _external(folder: Path, name: str, location: str, write_data: Path | None) -> Path:
    """tiny conv whose weight lives in external data at ``location``."""
    sub = folder / name
    sub.mkdir(parents=True)
    model = tiny_conv_model()
    weight = model.graph.initializer[0]
    raw = numpy_helper.to_array(weight).tobytes()
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    if write_data is not None:
        target = write_data if write_data.is_absolute() else sub / write_data
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
    return _write(sub, "model", model)


# --------------------------------------------------------------------------- builders


def empty(folder: Path) -> Path:
    path = folder / "empty.onnx"
    path.write_bytes(b"")
    return path


def truncated(folder: Path) -> Path:
    data = tiny_conv_model().SerializeToString()
    path = folder / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path


def random_bytes(folder: Path) -> Path:
    path = folder / "random.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes() + b"\xff\xff")
    return path


def other_protobuf(folder: Path) -> Path:
    path = folder / "tensor.onnx"
    path.write_bytes(helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0]).SerializeToString())
    return path


def directory(folder: Path) -> Path:
    path = folder / "folder.onnx"
    path.mkdir()
    return path


def missing_external(folder: Path) -> Path:
    return _external(folder, "missing_ext", "weights.bin", None)


def escaping_external(folder: Path) -> Path:
    return _external(folder, "escape/inner", "../secret.bin", Path("../secret.bin"))


def absolute_external(folder: Path) -> Path:
    secret = folder / "abs_secret.bin"
    return _external(folder, "absolute", str(secret), secret)


def dangling_input(folder: Path) -> Path:
    model = tiny_conv_model()
    model.graph.node[0].input[1] = "does_not_exist"
    return _write(folder, "dangling", model)


def unknown_op(folder: Path) -> Path:
    model = _add_model()
    model.graph.node[0].op_type = "Bogus"
    return _write(folder, "unknown_op", model)


def not_topological(folder: Path) -> Path:
    model = _add_model()
    model.graph.node.reverse()
    return _write(folder, "unsorted", model)


def type_mismatch(folder: Path) -> Path:
    model = _add_model()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((1, 4), np.float64), "w"))
    return _write(folder, "type_mismatch", model)


def wrong_output_shape(folder: Path) -> Path:
    model = _add_model()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    return _write(folder, "wrong_output_shape", model)


def ir_too_new(folder: Path) -> Path:
    return _write(folder, "ir14", _identity_model([("", 17)], ir_version=14))


def opset_too_new(folder: Path) -> Path:
    return _write(folder, "opset27", _identity_model([("", 27)]))


def ml_opset_too_new(folder: Path) -> Path:
    return _write(folder, "ml_opset6", _identity_model([("", 17), ("ai.onnx.ml", 6)]))


def duplicate_node_names(folder: Path) -> Path:
    return _write(folder, "dup_node_names", _add_model(name="n1"))


def duplicate_tensor(folder: Path) -> Path:
    model = _add_model()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 4), np.float32), "a"))
    return _write(folder, "dup_tensor", model)


def nan_weight(folder: Path) -> Path:
    model = tiny_conv_model()
    weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight[0, 0, 0, 0] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "w"))
    return _write(folder, "nan_weight", model)


def inf_constant(folder: Path) -> Path:
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
          c = Constant <value = float[2] {1.0, 2.0}> ()
          y = Mul (x, c)
        }"""
    )
    model.graph.node[0].attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([1.0, np.inf], np.float32)))
    model.graph.node[0].name, model.graph.node[1].name = "c", "mul"
    return _write(folder, "inf_constant", model)


def nan_fp16(folder: Path) -> Path:
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float16[2] x) => (float16[2] y) {
          y = Add (x, w)
        }"""
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, np.nan], np.float16), "w"))
    model.graph.node[0].name = "add"
    return _write(folder, "nan_fp16", model)


def nan_in_subgraph(folder: Path) -> Path:
    def branch(name: str, values: list[float]) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Identity", [f"{name}_c"], [f"{name}_out"], name=f"{name}_id")], name, [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [2])],
            [numpy_helper.from_array(np.array(values, np.float32), f"{name}_c")],
        )

    node = helper.make_node("If", ["cond"], ["y"], name="if",
                            then_branch=branch("then", [1.0, np.nan]), else_branch=branch("else", [1.0, 2.0]))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = TEST_IR_VERSION
    return _write(folder, "nan_subgraph", model)


def custom_domain(folder: Path) -> Path:
    model = _add_model()
    model.graph.node[0].domain = "my.custom"
    model.opset_import.append(helper.make_opsetid("my.custom", 1))
    return _write(folder, "custom_domain", model)


def over_2gb(folder: Path) -> Path:
    path = folder / "huge.onnx"
    with open(path, "wb") as handle:  # sparse: takes no disk space
        handle.truncate(2**31 + 4096)
    return path


CASES = [
    Case("empty file", "load-error", empty),
    Case("truncated protobuf", "load-error", truncated),
    Case("random bytes", "load-error", random_bytes),
    Case("non-onnx protobuf", "load-error", other_protobuf),
    Case("directory", "load-error", directory),
    Case("missing external data", "external-data", missing_external),
    Case("escaping external data", "external-data", escaping_external),
    Case("absolute external data", "external-data", absolute_external),
    Case("dangling input (fails checker)", "checker", dangling_input),
    Case("unknown operator", "checker", unknown_op),
    Case("not topologically sorted", "checker", not_topological),
    Case("type mismatch", "shape-inference", type_mismatch),
    Case("declared output shape wrong", "shape-inference", wrong_output_shape),
    Case("IR version 14", "ir-version", ir_too_new),
    Case("ai.onnx opset 27", "opset-version", opset_too_new),
    Case("ai.onnx.ml opset 6", "opset-version", ml_opset_too_new),
    Case("duplicate node names", "duplicate-names", duplicate_node_names),
    Case("tensor defined twice", "duplicate-names", duplicate_tensor),
    Case("NaN weight", "non-finite-weights", nan_weight),
    Case("Inf in a Constant node", "non-finite-weights", inf_constant),
    Case("NaN in a float16 initializer", "non-finite-weights", nan_fp16),
    Case("NaN in an If branch", "non-finite-weights", nan_in_subgraph),
    Case("operator domain unknown to onnxruntime", "ort-session", custom_domain),
    Case("file over 2 GiB", "size", over_2gb),
]

assert len(CASES) >= 15


def build_all(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected rule), every case built into its own subfolder."""
    built = {}
    for index, case in enumerate(CASES):
        sub = folder / f"case{index:02d}"
        sub.mkdir(parents=True)
        built[case.name] = (case.build(sub), case.rule)
    return built

