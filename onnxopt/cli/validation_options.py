"""Reusable click options for commands that run models on data and gate on the result.

``onnxopt compare`` and ``onnxopt optimize`` (for its validation gate) use them, and
``bench`` and ``profile`` their input part (:func:`input_options`, :func:`build_feeds`), so
all spell the options, their defaults and their errors the same way. Decorators add options;
builders turn the parsed values into library objects and accept the whole ``**kwargs`` of
a command (unrelated keys are ignored)::

    @click.command()
    @data_options
    @provider_option
    @tolerance_options
    def command(**opts):
        source = build_source(proto, **opts)
        tolerances = build_tolerances(default=Tolerances(max_rel_error=1e-4), **opts)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

from onnxopt.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from onnxopt.validate.sources import DataSource
    from onnxopt.validate.tolerances import Tolerances

DEFAULT_RANDOM_SAMPLES = 8
INPUT_OPTIONS = ("data", "preprocess", "input_shape", "batch_size", "seed")  # what a latency measurement uses


def _apply(func, options):
    for option in reversed(options):
        func = option(func)
    return func


def data_options(func):
    """``--data --preprocess --input-shape --samples --batch-size --labels --seed``."""
    return _apply(
        func,
        [
            click.option(
                "--data", metavar="PATH",
                help="Samples to run: an .npz keyed by input name (first axis = samples), an .npy for "
                "a single-input model, or a folder of images. Default: seeded random inputs.",
            ),
            click.option(
                "--preprocess", metavar="SPEC",
                help="How images become tensors: a preset (imagenet, tf127, raw255, caffe) and/or "
                "key=value tokens, e.g. 'resize=256 crop=224 mean=123.675,116.28,103.53 "
                "std=58.395,57.12,57.375 color=rgb layout=nchw' (mean/std in 0..255 units). "
                "Default: size and layout from the model, pixels scaled to 0..1.",
            ),
            click.option(
                "--input-shape", "input_shape", multiple=True, metavar="NAME:DIMS",
                help="Concrete shape of an input, e.g. input:1x3x224x224 (repeatable). Dynamic dims "
                "not given default to 224 (H, W of 4-D inputs) or 1; a dynamic first (batch) dim "
                "always follows --batch-size.",
            ),
            click.option(
                "--samples", type=click.IntRange(min=1), default=None, metavar="N",
                help=f"Number of samples: random ones (default {DEFAULT_RANDOM_SAMPLES}), or the first N of --data (default all).",
            ),
            click.option(
                "--batch-size", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
                help="Samples per run; a model with a fixed first dimension always gets that many.",
            ),
            click.option(
                "--labels", metavar="FILE",
                help="TSV with header 'file<TAB>index' giving the class of each image: adds top-1/top-5 "
                "accuracy for [N, classes] outputs.",
            ),
            click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs."),
        ],
    )


def provider_option(func):
    """``--providers`` (default cpu)."""
    return click.option(
        "--providers", default="cpu", show_default=True, metavar="SPEC",
        help="Where to run: cpu, cuda, cpu,cuda, or auto (CPU, plus CUDA where it really loads).",
    )(func)


def tolerance_options(func):
    """``--atol --rtol --min-cosine --min-cosine-p5 --min-channel-cosine --min-pairwise-spearman
    --min-agreement --max-rel-error``."""
    non_negative = click.FloatRange(min=0)
    return _apply(
        func,
        [
            click.option("--atol", type=non_negative, metavar="X",
                         help="Fail when some |a−b| − rtol·|a| exceeds X (like numpy.allclose; a = reference)."),
            click.option("--rtol", type=non_negative, metavar="X", help="Relative tolerance used with --atol."),
            click.option("--min-cosine", type=click.FloatRange(-1, 1), metavar="X",
                         help="Fail when a sample's cosine similarity is below X."),
            click.option("--min-cosine-p5", type=click.FloatRange(-1, 1), metavar="X",
                         help="Fail when the 5th percentile of the per-sample cosine similarities is below X."),
            click.option("--min-channel-cosine", type=click.FloatRange(-1, 1), metavar="X",
                         help="Fail when an attribute channel of a detection-like output (boxes, "
                              "objectness, class scores) has a cosine similarity below X."),
            click.option("--min-pairwise-spearman", type=click.FloatRange(-1, 1), metavar="X",
                         help="Fail when the rank correlation of the pairwise similarities of a sentence-"
                              "embedding output (reference vs candidate) is below X."),
            click.option("--min-agreement", type=click.FloatRange(0, 1), metavar="X",
                         help="Fail when top-1 agreement of [N, classes] outputs is below X."),
            click.option("--max-rel-error", type=non_negative, metavar="X",
                         help="Fail when the relative L2 error ||a−b||/||a|| of an output exceeds X."),
        ],
    )


def input_options(func):
    """``--data --preprocess --input-shape --batch-size --seed``, as ``data_options`` defines them.

    For ``bench`` and ``profile``. Reuses the option objects of :func:`data_options` (same spelling, defaults and help as ``onnxopt compare``) without the ones a
    measurement has no use for.
    """
    holder = data_options(lambda **_: None)
    picked = [param for param in holder.__click_params__ if param.name in INPUT_OPTIONS]
    if not hasattr(func, "__click_params__"):
        func.__click_params__ = []
    func.__click_params__.extend(picked)
    return func


def batch_size_of(opts: dict[str, Any]) -> int:
    """Samples per run: ``--batch-size``, or else the first dimension given by ``--input-shape``.

    For a latency measurement ``--input-shape input:8x3x224x224`` means a batch of 8; the
    data options take the batch from ``--batch-size`` only, so without an explicit
    ``--batch-size`` the shapes' common first dimension is used. The two must agree when
    both are given.
    """
    from onnxopt.analysis.inputs import parse_input_shapes

    batch_size = opts.get("batch_size") or 1
    firsts = {dims[0] for dims in parse_input_shapes(opts.get("input_shape") or ()).values() if dims}
    ctx = click.get_current_context(silent=True)
    explicit = ctx is None or ctx.get_parameter_source("batch_size") != click.core.ParameterSource.DEFAULT
    if len(firsts) == 1:
        (first,) = firsts
        if not explicit:
            return first
        if first != batch_size:
            raise UsageError(
                f"--batch-size {batch_size} and the first dimension of --input-shape ({first}) disagree"
            )
    return batch_size


def build_feeds(model: onnx.ModelProto, opts: dict[str, Any]) -> dict[str, np.ndarray]:
    """One full batch of inputs for ``model`` from the input options (random by default)."""
    batch_size = batch_size_of(opts)
    # A random source needs at least one batch of samples.
    samples = batch_size if opts.get("data") is None else None
    source = build_source(model, **{**opts, "batch_size": batch_size, "samples": samples})
    wanted = source.effective_batch_size(batch_size)
    batch = next(iter(source.batches(batch_size)), None)
    if batch is None or len(batch) < wanted:
        raise UsageError(f"--data has fewer samples ({len(source)}) than one batch ({wanted})")
    return batch.feeds


def build_source(
    model: onnx.ModelProto,
    *,
    data: str | None = None,
    preprocess: str | None = None,
    input_shape: Iterable[str] = (),
    samples: int | None = None,
    batch_size: int = 1,
    seed: int = 0,
    **_ignored,
) -> DataSource:
    """The :class:`DataSource` the data options describe, for ``model``'s inputs."""
    from onnxopt.analysis.inputs import model_inputs, parse_input_shapes, resolve_shapes
    from onnxopt.validate.data import open_data
    from onnxopt.validate.sources import random_source

    inputs = model_inputs(model)
    shapes = resolve_shapes(inputs, parse_input_shapes(input_shape or ()), batch_size or 1)
    if data is None:
        if preprocess is not None:
            raise UsageError("--preprocess needs --data (a folder of images, or a text file)")
        return random_source(inputs, shapes, samples or DEFAULT_RANDOM_SAMPLES, seed)
    source = open_data(data, inputs, preprocess=preprocess, shapes=shapes)
    if samples is not None:
        source = source.subset(0, samples)
    return source


def build_labels(*, labels: str | None = None, data: str | None = None, **_ignored) -> dict[str, int] | None:
    """The labels of ``--labels`` ({file name: class}), or None."""
    if labels is None:
        return None
    if data is None:
        raise UsageError("--labels needs --data: labels are matched to image file names")
    from onnxopt.validate.data import load_labels

    return load_labels(labels)


def build_tolerances(
    *,
    atol: float | None = None,
    rtol: float | None = None,
    min_cosine: float | None = None,
    min_agreement: float | None = None,
    max_rel_error: float | None = None,
    min_cosine_p5: float | None = None,
    min_channel_cosine: float | None = None,
    min_pairwise_spearman: float | None = None,
    default: Tolerances | None = None,
    **_ignored,
) -> Tolerances:
    """The :class:`Tolerances` of the options; ``default`` when none is given (any option
    replaces the whole default)."""
    from onnxopt.validate.tolerances import Tolerances

    tolerances = Tolerances(atol, rtol, min_cosine, min_agreement, max_rel_error,
                            min_cosine_p5=min_cosine_p5, min_channel_cosine=min_channel_cosine,
                            min_pairwise_spearman=min_pairwise_spearman)
    if tolerances.is_empty() and default is not None:
        return default
    return tolerances
