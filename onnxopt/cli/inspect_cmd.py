"""``onnxopt inspect``: what is in a model — I/O, opsets, ops, parameters, size, MACs."""

from __future__ import annotations

import click

from onnxopt.cli.common import emit_json, stdout_console, verbosity_options


def _dims(value) -> list:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def _dtype(value) -> str:
    import onnx

    if value.type.HasField("tensor_type"):
        return onnx.helper.tensor_dtype_to_string(value.type.tensor_type.elem_type).replace("TensorProto.", "").lower()
    return value.type.WhichOneof("value") or "?"


def describe(model, input_shapes) -> dict:
    from onnxopt.analysis import COUNTED_OPS, DEFAULT_SEQUENCE, assumed_dims, model_stats, node_costs

    initializers = {t.name for t in model.graph.initializer}
    costs = node_costs(model, input_shapes)
    stats = model_stats(model, input_shapes, costs)
    layers = [
        {"node": c.name, "op_type": c.op_type, "macs": c.macs, "params": c.params}
        for c in costs.values()
        if c.op_type in COUNTED_OPS
    ]
    return {
        "ir_version": model.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [
            {"name": v.name, "dtype": _dtype(v), "shape": _dims(v)}
            for v in model.graph.input
            if v.name not in initializers
        ],
        "outputs": [{"name": v.name, "dtype": _dtype(v), "shape": _dims(v)} for v in model.graph.output],
        **stats.to_dict(),
        "layers": layers,
        # dynamic sequence dims the MACs are counted at DEFAULT_SEQUENCE for (no --input-shape)
        "sequence_length": DEFAULT_SEQUENCE if assumed_dims(model, input_shapes) else None,
        "sequence_dims": assumed_dims(model, input_shapes),
    }


@click.command(help="Show a model's inputs, outputs, opsets, op histogram, parameters, size and MACs.")
@click.argument("model")
@click.option("--input-shape", multiple=True, help="Fix a dynamic input shape for MACs, NAME:1x3x224x224.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@verbosity_options
def command(model, input_shape, as_json):
    from onnxopt import io
    from onnxopt.analysis.inputs import parse_input_shapes
    from onnxopt.report import human_bytes, human_count

    info = describe(io.load_proto(model), parse_input_shapes(input_shape))
    if as_json:
        emit_json(info)
        return
    from rich.table import Table

    console = stdout_console()
    opsets = ", ".join(f"{d} {v}" for d, v in info["opsets"].items())
    console.print(f"IR version {info['ir_version']}; opsets: {opsets}; producer: {info['producer'] or '?'}")
    io_table = Table(title="inputs and outputs", title_justify="left")
    for column in ("kind", "name", "dtype", "shape"):
        io_table.add_column(column)
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            io_table.add_row(kind[:-1], v["name"], v["dtype"], "×".join(map(str, v["shape"])) or "?")
    console.print(io_table)
    console.print(
        f"nodes {info['nodes']}, parameters {human_count(info['parameters'])}, "
        f"MACs {human_count(info['macs'])}, size {human_bytes(info['size_bytes'])}"
    )
    console.print("ops: " + ", ".join(f"{op} {n}" for op, n in info["op_histogram"].items()))
    if info["sequence_dims"]:
        console.print(f"MACs at sequence length {info['sequence_length']} ({', '.join(info['sequence_dims'])}); "
                      "set it with --input-shape NAME:DIMS", markup=False, highlight=False)
    if info["layers"]:
        layer_table = Table(title="MACs per layer (Conv, ConvTranspose, Gemm, MatMul and their integer forms)",
                            title_justify="left")
        for column in ("node", "op", "MACs", "params"):
            layer_table.add_column(column, justify="right" if column in ("MACs", "params") else "left")
        for layer in info["layers"]:
            layer_table.add_row(layer["node"], layer["op_type"], human_count(layer["macs"]), human_count(layer["params"]))
        console.print(layer_table)
