"""Streams of samples for validation runs: :class:`DataSource` and the seeded random one.

A *sample* is one slice along the batch axis of every per-sample input (the first axis
for ``.npz``/``.npy`` data, images and texts). Sources never hold the data set in memory:
:meth:`DataSource.batches` reads one batch at a time. Batch ids are file names for images
and sample indices (as strings, counted in the original source, so subsets keep them)
otherwise. The last batch may be smaller; where the model fixes its batch at *k* (e.g.
YOLO's ``images`` [1,3,416,416]) every batch has exactly *k* samples and a smaller
remainder is dropped with a warning; a rank-0 (scalar) input forces batches of one sample,
fed without the sample axis (:class:`onnxopt.analysis.inputs.Layout`).

Data files, image folders and texts are opened by :func:`onnxopt.validate.data.open_data`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxopt.analysis.inputs import InputInfo, Layout, RandomInputs, first_axis_layout
from onnxopt.errors import UsageError


@dataclass(frozen=True)
class Batch:
    """One batch: ``feeds`` for ``InferenceSession.run`` and one id per sample."""

    feeds: dict[str, np.ndarray]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


class DataSource:
    """A sized, sliceable stream of samples; subclasses implement :meth:`_read`.

    ``len(source)`` is the number of samples; :meth:`batches` streams them; :meth:`subset`
    and :meth:`split` give disjoint views (e.g. calibration and evaluation) that read
    nothing until iterated.
    """

    def __init__(self, inputs: Sequence[InputInfo], size: int, what: str, layout: Layout | None = None):
        self.inputs: tuple[InputInfo, ...] = tuple(inputs)
        self.what = what
        self.layout = layout if layout is not None else first_axis_layout(self.inputs)
        self.fixed_batch = self.layout.fixed_batch
        #: Arrays fed unchanged with every batch (recurrent state, sample rate).
        self.constants: dict[str, np.ndarray] = {}
        self._total = size
        self._start = 0
        self._stop = size

    @property
    def description(self) -> str:
        """E.g. "500 images from imagenet (...)", or "100 images from … (samples 0–99 of 500)"."""
        text = f"{len(self)} {self.what}"
        if len(self) != self._total:
            text += f" (samples {self._start}–{self._stop - 1} of {self._total})"
        return text

    def __len__(self) -> int:
        return self._stop - self._start

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self)} samples [{self._start}:{self._stop}] {self.description}>"

    def _read(self, start: int, stop: int) -> tuple[dict[str, np.ndarray], list[str]]:
        """Samples ``start:stop`` (absolute indices) of the per-sample inputs, each array
        with a leading sample axis."""
        raise NotImplementedError

    def subset(self, start: int, stop: int | None = None) -> DataSource:
        """Samples ``start:stop`` of this source (clipped like a slice, non-negative bounds)."""
        if start < 0 or (stop is not None and stop < 0):
            raise UsageError(f"subset bounds must be non-negative, got {start}:{stop}")
        size = len(self)
        stop = size if stop is None else min(stop, size)
        start = min(start, stop)
        view = copy.copy(self)
        view._start = self._start + start
        view._stop = self._start + stop
        return view

    def split(self, n_first: int) -> tuple[DataSource, DataSource]:
        """``(first n_first samples, the rest)``: disjoint, e.g. calibration and evaluation."""
        return self.subset(0, n_first), self.subset(n_first)

    def effective_batch_size(self, batch_size: int) -> int:
        """The batch size actually used: ``batch_size``, or what the model imposes."""
        return self.layout.batch_size(batch_size)

    def batches(self, batch_size: int = 1) -> Iterator[Batch]:
        """Stream the samples in batches of ``effective_batch_size(batch_size)``."""
        for start, stop in self.layout.batch_bounds(self._start, self._stop, batch_size):
            read, ids = self._read(start, stop)
            yield Batch(self.layout.feeds(self.inputs, read, self.constants), ids)


class RandomSource(DataSource):
    """Seeded random samples (:class:`onnxopt.analysis.inputs.RandomInputs`): sample *i*
    depends only on (seed, i), whatever the batching."""

    def __init__(self, inputs: Sequence[InputInfo], shapes: Mapping[str, tuple[int, ...]], num_samples: int, seed: int):
        self.values = RandomInputs(inputs, shapes, seed)
        super().__init__(inputs, num_samples, f"random samples (seed {seed})", self.values.layout)
        self.seed = seed
        self.sample_shapes = self.values.sample_shapes
        self.constants = self.values.constants

    def _read(self, start: int, stop: int) -> tuple[dict[str, np.ndarray], list[str]]:
        return self.values.read(start, stop), [str(i) for i in range(start, stop)]


def random_source(
    inputs: Sequence[InputInfo],
    shapes: Mapping[str, tuple[int, ...]],
    num_samples: int = 8,
    seed: int = 0,
) -> DataSource:
    """Seeded random samples at ``shapes`` (batch axis included, see
    :func:`~onnxopt.analysis.inputs.resolve_shapes`), with values the model can take.
    Deterministic across runs, batchings and subsets."""
    if num_samples < 1:
        raise UsageError(f"number of samples must be at least 1, got {num_samples}")
    return RandomSource(inputs, shapes, num_samples, seed)
