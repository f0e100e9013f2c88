"""Activations of a model on calibration data, for the decomposition passes (refit, whitening).

One onnxruntime CPU session runs a protobuf copy of the model with the wanted values added
as graph outputs; :func:`stream_values` yields them batch by batch (one batch in memory at
a time), together with the batch's attention mask when the inputs carry one: rows of
[batch, seq, features] activations at padded token positions are left out by
:func:`token_rows` (on short sentences padded to a long sequence they are most rows).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from onnxopt.analysis.inputs import attention_mask
from onnxopt.runtime import create_session

Values = dict[str, np.ndarray]


def token_rows(values: np.ndarray, tokens: np.ndarray | None) -> np.ndarray:
    """``values`` [..., features] as rows [n, features]; for [batch, seq, features] with a
    matching mask ``tokens`` [batch, seq], only the real tokens' rows."""
    if tokens is not None and values.ndim == 3 and values.shape[:2] == tokens.shape:
        return values[tokens]
    return values.reshape(-1, values.shape[-1])


def session_with_outputs(proto, extra_outputs: list[str], elem_types: dict[str, int]):
    """A CPU session on ``proto`` (a ModelProto the caller owns: it is modified) that also
    outputs ``extra_outputs`` (element types by name)."""
    import onnx

    existing = {o.name for o in proto.graph.output}
    for name in extra_outputs:
        if name not in existing:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_types[name], None))
            existing.add(name)
    return create_session(proto, built=True)


def stream_values(proto, names: list[str], elem_types: dict[str, int],
                  calibration) -> Iterator[tuple[Values, np.ndarray | None]]:
    """``(values by name, attention mask or None)`` per batch of ``calibration()``; ``proto``
    is consumed. Names that are graph inputs are taken from the feeds."""
    graph_inputs = {i.name for i in proto.graph.input}
    computed = [n for n in names if n not in graph_inputs]
    session = session_with_outputs(proto, computed, elem_types)
    del proto
    wanted = {i.name for i in session.get_inputs()}
    for feeds in calibration():
        values = dict(zip(computed, session.run(computed, {k: v for k, v in feeds.items() if k in wanted})))
        for name in names:
            if name in graph_inputs:
                values[name] = np.asarray(feeds[name])
        yield values, attention_mask(feeds)
