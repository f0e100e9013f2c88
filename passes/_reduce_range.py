"""``reduce_range``: 7-bit weights where u8×s8 integer kernels can saturate (``int8``, ``int8-dynamic``).

Without VNNI, onnxruntime's x86 u8×s8 kernels add pairs of products into a saturating
int16 (:mod:`onnxopt.runtime.cpu`); with 7-bit weights a pair stays in range.
:func:`choose_reduce_range` resolves ``true``/``false``/``auto`` (auto: true on such a CPU)
and says why in the report. Under reduce_range the ``int8`` pass refines it per layer:

* depthwise convolutions keep 8 bits: onnxruntime's depthwise kernel widens u8 and s8 to
  int16 and accumulates in int32, with no pair sums;
* convolutions whose input is never negative and has at most 5 % of its calibration values
  in the upper half of its range keep 8 bits: a pair saturates only when both codes are large;
* image stems (at most 4 input channels, reading a graph input) whose input fills its range
  stay float where they hold at most 5 % of the MACs: 7 bits cost most accuracy there.

``method=minmax`` keeps no histogram, so there every dense weight gets 7 bits.
"""

from __future__ import annotations

import onnx

from onnxopt.analysis import attribute
from onnxopt.runtime import cpu as hostcpu

from . import _quant_common as qc
from ._calibration import Calibration

#: Keep a conv's weights at 8 bits when at most this share of its (non-negative) input lies
#: in the upper half of the range: large codes are what saturate.
UPPER_SHARE_8_BITS = 0.05
#: Image stems have at most this many input channels ...
STEM_CHANNELS = 4
#: ... and stay float only when they hold at most this share of the MACs (float must stay cheap).
STEM_MAC_SHARE = 0.05
#: Op types whose weight (input 1) the quantizer quantizes.
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Element-wise ops an exporter puts between the image and the stem (layout, normalization).
_PREPROCESSING_OPS = frozenset({"Transpose", "Cast", "Pad", "Identity", "Mul", "Add", "Sub", "Div", "Reshape"})


def choose_reduce_range(choice: bool | str, u8s8: bool, report) -> bool:
    """Resolve a ``reduce_range`` option (true, false or "auto") and say why in ``report``.

    ``u8s8``: whether the quantized kernels multiply uint8 activations by int8 weights,
    the only combination whose x86 kernels saturate without VNNI. 8 bits forced on such a
    CPU mean a VNNI target: the gate then validates with exact integer kernels.
    """
    kernels = hostcpu.integer_kernels()
    at_risk = u8s8 and kernels.u8s8_saturates
    chosen = at_risk if choice == "auto" else bool(choice)
    if choice == "auto":
        why = f"auto: {kernels.describe()}"
    else:
        why = "reduce_range=" + ("true" if chosen else "false")
    report.figures["reduce_range"] = ("on" if chosen else "off") + f" ({why})"
    if at_risk and not chosen:
        report.warn(f"this is an {kernels.describe()}: u8×s8 products may saturate int16 and cost accuracy "
                    "here; reduce_range=true (7-bit weights) avoids it — keep 8 bits only for a VNNI target "
                    "(validation runs it with exact integer kernels, as one computes)")
        # 8-bit weights are for exactly accumulating kernels (VNNI, ARM): validate as they compute.
        report.validate_with.update(hostcpu.EXACT_INTEGER_KERNELS)
    return chosen


def float_stems(prepared: onnx.ModelProto, calibration: Calibration, excluded: dict[str, str]) -> dict[str, str]:
    """Node name -> reason, for the image stems that stay float under ``reduce_range``.

    A stem is a convolution with at most 4 input channels that reads a graph input, directly
    or through element-wise preprocessing, and whose input fills its range (not small codes).
    Its weights would need 7 bits, which costs more accuracy there than anywhere: a dot
    product of a few dozen terms averages little rounding away, and every later layer
    inherits the error. Only where the stem holds at most 5 % of the model's MACs.
    """
    shapes = {t.name: tuple(t.dims) for t in prepared.graph.initializer}
    stems = {}
    macs: dict[str, float] | None = None
    for node in prepared.graph.node:
        shape = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if node.name in excluded or shape is None or len(shape) < 2 or shape[1] > STEM_CHANNELS:
            continue
        group = attribute(node, "group", 1)
        if group != 1 or not _reads_graph_input(prepared, node.input[0]) or _small_codes(calibration, node.input[0]):
            continue
        if macs is None:
            macs = qc.mac_shares(prepared, calibration.probe)
        share = macs.get(node.name)
        if share is not None and share <= STEM_MAC_SHARE:
            stems[node.name] = (f"image stem ({shape[1]} input channels, {share:.1%} of the MACs) left in float: "
                                "u8×s8 kernels without VNNI saturate and 7-bit weights cost accuracy here "
                                "(reduce_range)")
    return stems


def weights_kept_at_8_bits(prepared: onnx.ModelProto, calibration: Calibration,
                           excluded: dict[str, str]) -> tuple[set[str], set[str]]:
    """Under ``reduce_range``: (the weights that stay 8-bit, every weight considered).

    The depthwise convolutions' (their kernel cannot saturate), and the convolutions whose
    input is never negative *and* rarely large (ReLU outputs): a pair of u8·s8 products
    reaches int16's limit only when both codes are large (≥ 128 or so) and both weights too.
    Signed inputs and inputs that fill their range (an image, normalized or raw 0..255)
    keep 7 bits.
    """
    initializers = {t.name for t in prepared.graph.initializer}
    weights = {n.input[1]: n for n in prepared.graph.node  # stored weights only: overrides need initializers
               if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in initializers
               and n.name not in excluded}
    keep = _depthwise_weights(prepared) & set(weights)
    for name, node in weights.items():
        # Conv only: its per-channel axis is 0 for any shape (an override must name it)
        if node.op_type == "Conv" and _small_codes(calibration, node.input[0]):
            keep.add(name)
    return keep, set(weights)


def _small_codes(calibration: Calibration, tensor: str) -> bool:
    """Whether ``tensor`` is never negative and rarely in the upper half of its range."""
    lowest = calibration.lowest(tensor)
    upper = calibration.upper_shares.get(tensor)
    return lowest is not None and lowest >= 0.0 and upper is not None and upper <= UPPER_SHARE_8_BITS


def _reads_graph_input(proto: onnx.ModelProto, tensor: str) -> bool:
    """Whether ``tensor`` is a graph input or computed from one by preprocessing ops only."""
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    inputs = {i.name for i in proto.graph.input} - constants
    producers = {o: n for n in proto.graph.node for o in n.output}
    for _ in range(16):  # a short chain; a stem sits right after the input
        if tensor in inputs:
            return True
        node = producers.get(tensor)
        if node is None or node.op_type not in _PREPROCESSING_OPS:
            return False
        variable = [i for i in node.input if i and i not in constants]
        if len(variable) != 1:
            return False
        tensor = variable[0]
    return False


def _depthwise_weights(proto: onnx.ModelProto) -> set[str]:
    """Weights of depthwise convolutions (one input and one output channel per group).

    onnxruntime runs them with its own depthwise kernel, which widens u8 and s8 to int16
    and accumulates in int32 (``vpmaddwd``): no int16 pair sums, so 7-bit weights would
    only cost accuracy there.
    """
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    found = set()
    for node in proto.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in shapes:
            continue
        group = attribute(node, "group", 1)
        shape = shapes[node.input[1]]
        if group > 1 and len(shape) >= 2 and shape[0] == group and shape[1] == 1:
            found.add(node.input[1])
    return found
