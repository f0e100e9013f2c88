"""Every op of the recovery engine against onnxruntime, on seeded one-node models."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # noqa: F401 - the recover extra is part of the test environment: fail, never skip, without it
from onnx import TensorProto, helper, numpy_helper

from onnxopt.recover.interpreter import GraphModule, unsupported_ops  # noqa: E402
from onnxopt.runtime import create_session  # noqa: E402
from tests.helpers import TEST_IR_VERSION  # noqa: E402

RNG = np.random.default_rng(0)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


def one_node(op_type, inputs, attrs=None, outputs=1, opset=17, constant=()):
    """A model of one ``op_type`` node. ``inputs``: (name, array) or None for ''; float arrays
    are graph inputs (fed), others and the names in ``constant`` are initializers."""
    graph_inputs, initializers, names, feeds = [], [], [], {}
    for item in inputs:
        if item is None:
            names.append("")
            continue
        name, array = item
        names.append(name)
        if array.dtype == np.float32 and name not in constant:
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, array.shape))
            feeds[name] = array
        else:
            initializers.append(numpy_helper.from_array(array, name))
    out_names = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op_type, names, out_names, name="node", **(attrs or {}))
    graph = helper.make_graph([node], "g", graph_inputs, [helper.ValueInfoProto(name=n) for n in out_names],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = TEST_IR_VERSION
    return model, feeds


def check(model, feeds, rtol=1e-5, atol=1e-5):

    expected = create_session(model).run(None, feeds)
    module = GraphModule(model)
    names = [o.name for o in model.graph.output]
    with torch.no_grad():
        got = module({k: torch.from_numpy(v) for k, v in feeds.items()}, names)
    for name, reference in zip(names, expected):
        value = got[name].numpy()
        assert value.shape == reference.shape, (name, value.shape, reference.shape)
        if reference.dtype == np.bool_:
            np.testing.assert_array_equal(value, reference, err_msg=name)
        else:
            np.testing.assert_allclose(value, reference, rtol=rtol, atol=atol, err_msg=name)


X4 = ("x", f32(2, 4, 7, 6))
CASES = {
    "conv": ("Conv", [X4, ("w", f32(5, 4, 3, 3)), ("b", f32(5))], {}, {}),
    "conv_pads_strides": ("Conv", [X4, ("w", f32(6, 4, 3, 2))], {"pads": [1, 0, 2, 1], "strides": [2, 1]}, {}),
    "conv_dilation": ("Conv", [X4, ("w", f32(3, 4, 2, 2))], {"dilations": [2, 3], "pads": [1, 1, 1, 1]}, {}),
    "conv_group": ("Conv", [X4, ("w", f32(6, 2, 3, 3)), ("b", f32(6))], {"group": 2, "pads": [1, 1, 1, 1]}, {}),
    "conv_depthwise": ("Conv", [X4, ("w", f32(4, 1, 3, 3))], {"group": 4}, {}),
    "conv_same_upper": ("Conv", [X4, ("w", f32(3, 4, 4, 3))], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, {}),
    "conv_same_lower": ("Conv", [X4, ("w", f32(3, 4, 4, 3))], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, {}),
    "conv_valid": ("Conv", [X4, ("w", f32(3, 4, 3, 3))], {"auto_pad": "VALID", "strides": [2, 1]}, {}),
    "conv1d": ("Conv", [("x", f32(2, 3, 9)), ("w", f32(4, 3, 3))], {"pads": [1, 2]}, {}),
    "conv_transpose": ("ConvTranspose", [X4, ("w", f32(4, 3, 3, 3)), ("b", f32(3))], {"strides": [2, 2]}, {}),
    "conv_transpose_pads": ("ConvTranspose", [X4, ("w", f32(4, 2, 3, 2))],
                            {"strides": [2, 1], "pads": [1, 0, 0, 1], "output_padding": [1, 0]}, {}),
    "conv_transpose_group": ("ConvTranspose", [X4, ("w", f32(4, 1, 2, 2))],
                             {"group": 2, "pads": [1, 1, 1, 1], "dilations": [2, 1]}, {}),
    "prelu": ("PRelu", [X4, ("slope", f32(4, 1, 1))], {}, {"constant": ("slope",)}),
    "constant_of_shape": ("ConstantOfShape", [("shape", i64(2, 3))],
                          {"value": numpy_helper.from_array(np.array([1.5], np.float32), "v")}, {}),
    "constant_of_shape_default": ("ConstantOfShape", [("shape", i64(4))], {}, {}),
    "gemm": ("Gemm", [("a", f32(3, 5)), ("b", f32(5, 4)), ("c", f32(4))], {}, {}),
    "gemm_trans": ("Gemm", [("a", f32(5, 3)), ("b", f32(4, 5)), ("c", f32(3, 4))],
                   {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, {}),
    "gemm_no_c": ("Gemm", [("a", f32(3, 5)), ("b", f32(5, 4))], {"alpha": 1.5}, {}),
    "matmul": ("MatMul", [("a", f32(2, 3, 5)), ("b", f32(5, 4))], {}, {}),
    "add": ("Add", [("a", f32(2, 3, 4)), ("b", f32(3, 1))], {}, {}),
    "sub": ("Sub", [("a", f32(2, 3)), ("b", f32(3))], {}, {}),
    "mul": ("Mul", [("a", f32(2, 3)), ("b", f32(2, 1))], {}, {}),
    "div": ("Div", [("a", f32(2, 3)), ("b", np.abs(f32(3)) + 0.5)], {}, {}),
    "relu": ("Relu", [X4], {}, {}),
    "leaky_relu": ("LeakyRelu", [X4], {"alpha": 0.2}, {}),
    "sigmoid": ("Sigmoid", [X4], {}, {}),
    "tanh": ("Tanh", [X4], {}, {}),
    "clip": ("Clip", [X4, ("lo", np.array(-0.5, np.float32)), ("hi", np.array(0.7, np.float32))], {},
             {"constant": ("lo", "hi")}),
    "clip_max_only": ("Clip", [X4, None, ("hi", np.array(0.3, np.float32))], {}, {"constant": ("hi",)}),
    "clip_opset6": ("Clip", [X4], {"min": -0.2, "max": 0.4}, {"opset": 6}),
    "hard_sigmoid": ("HardSigmoid", [X4], {"alpha": 0.3, "beta": 0.4}, {}),
    "hard_swish": ("HardSwish", [("x", f32(2, 3, 5) * 4)], {}, {}),
    "softmax": ("Softmax", [X4], {"axis": 1}, {}),
    "softmax_last": ("Softmax", [X4], {}, {}),
    "softmax_opset11": ("Softmax", [X4], {"axis": 2}, {"opset": 11}),
    "batch_norm": ("BatchNormalization", [X4, ("s", f32(4)), ("bb", f32(4)), ("m", f32(4)),
                                          ("v", np.abs(f32(4)) + 0.1)], {"epsilon": 1e-3},
                   {"constant": ("s", "bb", "m", "v")}),
    "max_pool": ("MaxPool", [X4], {"kernel_shape": [3, 2], "strides": [2, 2]}, {}),
    "max_pool_pads": ("MaxPool", [X4], {"kernel_shape": [3, 3], "pads": [1, 0, 1, 2], "strides": [2, 1]}, {}),
    "max_pool_ceil": ("MaxPool", [X4], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, {}),
    "max_pool_same": ("MaxPool", [X4], {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]}, {}),
    "max_pool_dilation": ("MaxPool", [X4], {"kernel_shape": [2, 2], "dilations": [2, 2]}, {}),
    "avg_pool": ("AveragePool", [X4], {"kernel_shape": [2, 2], "strides": [2, 2]}, {}),
    "avg_pool_pads": ("AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [1, 1, 0, 1]}, {}),
    "avg_pool_pads_count": ("AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                  "count_include_pad": 1}, {}),
    "global_avg_pool": ("GlobalAveragePool", [X4], {}, {}),
    "concat": ("Concat", [("a", f32(2, 3, 4)), ("b", f32(2, 1, 4))], {"axis": 1}, {}),
    "reshape": ("Reshape", [X4, ("shape", i64(0, -1, 6))], {}, {}),
    "flatten": ("Flatten", [X4], {"axis": 2}, {}),
    "flatten0": ("Flatten", [X4], {"axis": 0}, {}),
    "transpose": ("Transpose", [X4], {"perm": [0, 2, 3, 1]}, {}),
    "transpose_default": ("Transpose", [X4], {}, {}),
    "identity": ("Identity", [X4], {}, {}),
    "pad": ("Pad", [X4, ("pads", i64(0, 0, 1, 2, 0, 0, 3, 0)), ("value", np.array(0.5, np.float32))], {},
            {"constant": ("value",)}),
    "pad_crop": ("Pad", [X4, ("pads", i64(0, 0, -1, 1, 0, 0, 0, -2))], {}, {}),
    "pad_reflect": ("Pad", [X4, ("pads", i64(0, 0, 1, 2, 0, 0, 2, 1))], {"mode": "reflect"}, {}),
    "pad_edge": ("Pad", [X4, ("pads", i64(0, 0, 1, 2, 0, 0, 2, 1))], {"mode": "edge"}, {}),
    "pad_axes": ("Pad", [X4, ("pads", i64(1, 2, 3, 0)), None, ("axes", i64(-1, 1))], {}, {"opset": 18}),
    "split": ("Split", [("x", f32(2, 7, 3)), ("split", i64(2, 5))], {"axis": 1}, {"outputs": 2}),
    "split_equal": ("Split", [("x", f32(2, 6, 3))], {"axis": 1}, {"outputs": 3}),
    "split_num_outputs": ("Split", [("x", f32(2, 7, 3))], {"axis": 1, "num_outputs": 3}, {"outputs": 3, "opset": 18}),
    "split_opset11": ("Split", [("x", f32(2, 7, 3))], {"axis": -2, "split": [3, 4]}, {"outputs": 2, "opset": 11}),
    "slice": ("Slice", [X4, ("starts", i64(1, -5)), ("ends", i64(100, -1)), ("axes", i64(1, 3))], {}, {}),
    "slice_steps": ("Slice", [X4, ("starts", i64(0, 6)), ("ends", i64(7, -100)), ("axes", i64(2, 3)),
                              ("steps", i64(2, -2))], {}, {}),
    "squeeze": ("Squeeze", [("x", f32(2, 1, 3, 1)), ("axes", i64(1, -1))], {}, {}),
    "squeeze_all": ("Squeeze", [("x", f32(2, 1, 3, 1))], {}, {}),
    "squeeze_opset11": ("Squeeze", [("x", f32(2, 1, 3, 1))], {"axes": [1]}, {"opset": 11}),
    "unsqueeze": ("Unsqueeze", [("x", f32(2, 3)), ("axes", i64(0, -1))], {}, {}),
    "unsqueeze_opset11": ("Unsqueeze", [("x", f32(2, 3))], {"axes": [1, 3]}, {"opset": 11}),
    "shape": ("Shape", [X4], {}, {}),
    "shape_slice": ("Shape", [X4], {"start": 1, "end": -1}, {}),
    "gather": ("Gather", [X4, ("idx", i64(2, -1, 0))], {"axis": 2}, {}),
    "gather_scalar": ("Gather", [X4, ("idx", np.array(1, np.int64))], {"axis": 1}, {}),
    "gather_2d": ("Gather", [("x", f32(5, 3)), ("idx", np.array([[0, 4], [3, 3]], np.int64))], {}, {}),
    "gather_scalar_of_1d": ("Gather", [("x", f32(5)), ("idx", np.array(3, np.int64))], {}, {}),  # Shape -> Gather
    "equal": ("Equal", [("a", i64(1, 2, 3, 4)), ("b", i64(1, 0, 3, 5))], {}, {}),
    "where": ("Where", [("c", np.array([[True], [False]])), ("x", f32(2, 3)), ("y", f32(3))], {}, {}),
    "expand": ("Expand", [("x", f32(3, 1)), ("shape", i64(2, 1, 4))], {}, {}),
    "expand_keeps_larger_dims": ("Expand", [("x", f32(2, 3)), ("shape", i64(1, 1))], {}, {}),
    "reduce_sum": ("ReduceSum", [X4, ("axes", i64(1))], {}, {"opset": 13}),
    "reduce_sum_all": ("ReduceSum", [X4], {"keepdims": 0}, {"opset": 13}),
    "constant": ("Constant", [], {"value": numpy_helper.from_array(f32(2, 3), "c")}, {}),
    "constant_ints": ("Constant", [], {"value_ints": [3, 1, 4]}, {}),
    "reduce_mean": ("ReduceMean", [X4], {"axes": [2, 3]}, {"opset": 13}),
    "reduce_mean_all": ("ReduceMean", [X4], {"keepdims": 0}, {"opset": 13}),
    "reduce_mean_input": ("ReduceMean", [X4, ("axes", i64(-1))], {"keepdims": 0}, {"opset": 18}),
    "pow": ("Pow", [("a", np.abs(f32(2, 3)) + 0.1), ("b", np.array(2.5, np.float32))], {}, {}),
    "sqrt": ("Sqrt", [("a", np.abs(f32(2, 3)))], {}, {}),
    "erf": ("Erf", [X4], {}, {}),
    "cast_int": ("Cast", [("x", f32(3, 4) * 5)], {"to": TensorProto.INT64}, {}),
    "cast_float": ("Cast", [("x", i64(1, -2, 3))], {"to": TensorProto.FLOAT}, {}),
    "layer_norm": ("LayerNormalization", [("x", f32(2, 3, 8)), ("s", f32(8)), ("bb", f32(8))], {},
                   {"constant": ("s", "bb")}),
    "layer_norm_axis": ("LayerNormalization", [("x", f32(2, 3, 4)), ("s", f32(3, 4))], {"axis": 1, "epsilon": 1e-3},
                        {"constant": ("s",)}),
}

def u8(*values):
    return np.array(values, dtype=np.uint8)


def s8(*values):
    return np.array(values, dtype=np.int8)


SCALE = ("s", np.array(0.05, np.float32))
HALVES = ("x", np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 300.0, -300.0], np.float32))  # ties, saturation
QDQ = {
    "quantize_uint8": ("QuantizeLinear", [("x", f32(2, 4, 3) * 4), SCALE, ("z", u8(128))], {}, {"constant": ("s",)}),
    "quantize_int8": ("QuantizeLinear", [("x", f32(2, 4, 3) * 9), SCALE, ("z", s8(-3))], {}, {"constant": ("s",)}),
    "quantize_default_uint8": ("QuantizeLinear", [("x", f32(2, 4, 3)), SCALE], {}, {"constant": ("s",)}),
    "quantize_half_to_even_uint8": ("QuantizeLinear", [HALVES, ("s", np.array(1.0, np.float32)), ("z", u8(10))], {},
                                    {"constant": ("s",)}),
    "quantize_half_to_even_int8": ("QuantizeLinear", [HALVES, ("s", np.array(1.0, np.float32)), ("z", s8(0))], {},
                                   {"constant": ("s",)}),
    "quantize_per_axis": ("QuantizeLinear", [("x", f32(2, 4, 3) * 3), ("s", np.array([0.01, 0.02, 0.05, 0.1],
                                                                                      np.float32)),
                                             ("z", s8(0, 1, -2, 3))], {"axis": 1}, {"constant": ("s",)}),
    "quantize_per_axis_negative": ("QuantizeLinear", [("x", f32(2, 3, 4)), ("s", np.array([0.01, 0.02, 0.03, 0.04],
                                                                                          np.float32)),
                                                      ("z", u8(100, 120, 128, 140))], {"axis": -1},
                                   {"constant": ("s",)}),
    "dequantize_uint8": ("DequantizeLinear", [("q", RNG.integers(0, 256, (2, 4, 3)).astype(np.uint8)), SCALE,
                                              ("z", u8(128))], {}, {"constant": ("s",)}),
    "dequantize_int8_per_axis": ("DequantizeLinear", [("q", RNG.integers(-128, 128, (4, 2, 3, 3)).astype(np.int8)),
                                                      ("s", np.array([0.1, 0.2, 0.3, 0.4], np.float32)),
                                                      ("z", s8(0, 0, 0, 0))], {"axis": 0}, {"constant": ("s",)}),
    "dequantize_int32_bias": ("DequantizeLinear", [("q", RNG.integers(-2**20, 2**20, (5,)).astype(np.int32)),
                                                   ("s", np.array([1e-4, 2e-4, 3e-4, 4e-4, 5e-4], np.float32))],
                              {"axis": 0}, {"constant": ("s",)}),
    "dequantize_one_element_scale": ("DequantizeLinear", [("q", RNG.integers(-128, 128, (6,)).astype(np.int8)),
                                                          ("s", np.array([0.5], np.float32))], {},
                                     {"constant": ("s",)}),
}
CASES.update(QDQ)

RESIZE = {
    "nearest_scales": ([1, 1, 2, 1.5], None, {}),
    "nearest_down": ([1, 1, 0.6, 0.5], None, {}),
    "nearest_floor_asym": ([1, 1, 2, 3], None, {"coordinate_transformation_mode": "asymmetric",
                                                "nearest_mode": "floor"}),
    "nearest_ceil_align": (None, [2, 4, 10, 9], {"coordinate_transformation_mode": "align_corners",
                                                 "nearest_mode": "ceil"}),
    "nearest_prefer_ceil": ([1, 1, 2, 2], None, {"nearest_mode": "round_prefer_ceil"}),
    "linear_scales": ([1, 1, 2, 2], None, {"mode": "linear"}),
    "linear_sizes": (None, [2, 4, 12, 5], {"mode": "linear"}),
    "linear_align": (None, [2, 4, 11, 13], {"mode": "linear", "coordinate_transformation_mode": "align_corners"}),
    "linear_asym": ([1, 1, 1.5, 2], None, {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}),
    "linear_pytorch": ([1, 1, 0.5, 2], None, {"mode": "linear",
                                              "coordinate_transformation_mode": "pytorch_half_pixel"}),
}


def resize_case(scales, sizes, attrs):
    inputs = [X4, ("roi", np.zeros(0, np.float32)),
              ("scales", np.array(scales, np.float32) if scales is not None else np.zeros(0, np.float32))]
    if sizes is not None:
        inputs.append(("sizes", i64(*sizes)))
    return "Resize", inputs, attrs, {"constant": ("roi", "scales")}


@pytest.mark.parametrize("case", [*CASES, *(f"resize_{k}" for k in RESIZE)])
def test_op_matches_onnxruntime(case):
    if case.startswith("resize_"):
        op_type, inputs, attrs, extra = resize_case(*RESIZE[case[len("resize_"):]])
    else:
        op_type, inputs, attrs, extra = CASES[case]
    model, feeds = one_node(op_type, inputs, attrs, extra.get("outputs", 1), extra.get("opset", 17),
                            extra.get("constant", ()))
    check(model, feeds)


def test_unsupported_ops_are_named():
    model, _ = one_node("Relu", [X4])
    model.graph.node.extend([helper.make_node("LSTM", ["x", "w", "r"], ["h"]),
                             helper.make_node("FusedConv", ["x", "w"], ["z"], domain="com.microsoft")])
    assert unsupported_ops(model) == ["LSTM", "com.microsoft::FusedConv"]


def test_attribute_values_the_engine_lacks_raise_unsupported():

    from onnxopt.recover.ops import Unsupported

    model, feeds = one_node("Resize", [X4, None, ("scales", np.array([1, 1, 2, 2], np.float32))],
                            {"mode": "cubic"}, constant=("scales",))
    with pytest.raises(Unsupported, match="Resize: mode=cubic"):
        GraphModule(model)({k: torch.from_numpy(v) for k, v in feeds.items()})



def test_fake_quantization_passes_gradients_straight_through_inside_the_range():
    model, _ = one_node("QuantizeLinear", [("x", np.zeros(4, np.float32)), ("s", np.array(0.1, np.float32)),
                                           ("z", s8(0))], constant=("s",))
    module = GraphModule(model)
    x = torch.tensor([0.123, -0.26, 50.0, -50.0], requires_grad=True)
    module({"x": x})["y0"].sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [10.0, 10.0, 0.0, 0.0])  # d(x/s)/dx inside, saturated outside
