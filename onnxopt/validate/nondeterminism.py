"""Models whose outputs are random: find their random operators and seed them.

A model with e.g. ``RandomNormalLike`` noise gives different outputs on every run, so
comparing it with an optimized copy measures the noise. The gate runs the original twice on
the same inputs first (:func:`onnxopt.validate.compare.compare_models` with ``self_check``,
on the CPU: :func:`self_check_provider`); when it disagrees with itself, :func:`random_ops`
names the cause and :func:`seed_random_ops` gives copies of both models in which every
random operator carries the same ``seed``: onnxruntime then starts each operator's stream
at the same point in every new session. A model that disagrees with itself without a
random operator is judged as usual, with a note.

Random operators of the default domain: ``RandomNormal(Like)``, ``RandomUniform(Like)``,
``Multinomial``, ``Bernoulli`` (all take ``seed``), and ``Dropout`` in training mode
(``seed`` from opset 12). Operators of other domains cannot be seeded here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx

SEEDABLE = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
            "Dropout")
SEED = 1.0
OTHER_SEED = 12345.0  # for checking that the seed is honoured (0 and 1 seed std::minstd_rand alike)
#: Two runs of one model on the same inputs agree when their relative L2 difference is at
#: most this (onnxruntime's CPU kernels repeat bit for bit; the margin covers threading).
SELF_TOLERANCE = 1e-6


def self_check_provider(providers) -> str:
    """Where the gate runs the original twice: the CPU, when the gate runs there at all.

    With CUDA alone (``--providers cuda``) the first provider: the gate creates no CPU
    session the user did not ask for (a model may not load, or even crash onnxruntime, on
    the CPU); a disagreement without a random operator is then only a note.
    """
    providers = list(providers)
    return "cpu" if "cpu" in providers or not providers else providers[0]


@dataclass(frozen=True)
class RandomOp:
    op_type: str
    name: str
    seedable: bool

    def describe(self) -> str:
        return f"{self.op_type} '{self.name}'" if self.name else self.op_type


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _graphs(sub)


def _constant_false(name: str, graph: onnx.GraphProto) -> bool:
    for tensor in graph.initializer:
        if tensor.name == name:
            return not bool(np.asarray(onnx.numpy_helper.to_array(tensor)).any())
    for node in graph.node:
        if node.op_type == "Constant" and name in node.output:
            for attribute in node.attribute:
                if attribute.name == "value":
                    return not bool(np.asarray(onnx.numpy_helper.to_array(attribute.t)).any())
    return False


def _is_random(node: onnx.NodeProto, graph: onnx.GraphProto) -> bool | None:
    """True: a seedable random op; False: not random; None: random but not seedable here."""
    if node.domain in ("", "ai.onnx"):
        if node.op_type == "Dropout":
            training = node.input[2] if len(node.input) > 2 else ""
            return bool(training) and not _constant_false(training, graph)
        return True if node.op_type in SEEDABLE else False
    lowered = node.op_type.lower()
    return None if ("random" in lowered or "dropout" in lowered) else False


def random_ops(model: onnx.ModelProto) -> list[RandomOp]:
    """The random operators of ``model``: the main graph's in order, then its subgraphs'."""
    found = []
    for graph in _graphs(model.graph):
        for node in graph.node:
            kind = _is_random(node, graph)
            if kind is not False:
                found.append(RandomOp(node.op_type, node.name, kind is True))
    return found


def seed_random_ops(model: onnx.ModelProto, seed: float = SEED) -> onnx.ModelProto:
    """A copy of ``model`` whose random operators all carry ``seed``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for graph in _graphs(copy.graph):
        for node in graph.node:
            if _is_random(node, graph):
                for attribute in list(node.attribute):
                    if attribute.name == "seed":
                        node.attribute.remove(attribute)
                node.attribute.append(onnx.helper.make_attribute("seed", float(seed)))
    return copy


def describe(ops: list[RandomOp], limit: int = 4) -> str:
    text = ", ".join(op.describe() for op in ops[:limit])
    return text + (f" and {len(ops) - limit} more" if len(ops) > limit else "")
