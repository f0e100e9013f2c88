"""The metrics table of ``onnxopt compare`` and of ``optimize``'s validation gate.

One renderer for both, with short headers that fit 80 columns. Rows are the JSON dicts of
:meth:`onnxopt.validate.compare.CompareRow.to_dict` (``provider``, ``reference_provider``,
``output`` and the metrics of :class:`~onnxopt.validate.metrics.OutputMetrics`), which is
also what the validation report stores, so either command can pass what it has.

Outputs of sequence models add a second small table, only when there are some: each
token, embedding or integer output's kind, per-token cosine (padding excluded), the
Spearman of pairwise similarities of sentence embeddings, and integer values that differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# (header, row key, format kind); headers short enough for 80 columns
METRIC_COLUMNS = (
    ("max abs", "max_abs_error", "g"),
    ("mean abs", "mean_abs_error", "g"),
    ("rel L2", "rel_l2_error", "g"),
    ("cos mean", "cosine_mean", "cos"),
    ("cos min", "cosine_min", "cos"),
    ("SNR dB", "snr_db", "db"),
    ("agree", "top1_agreement", "ratio"),
)
ACCURACY_COLUMNS = (
    ("labeled", "labeled", "int"),
    ("ref top-1", "reference_top1", "ratio"),
    ("cand top-1", "candidate_top1", "ratio"),
    ("ref top-5", "reference_top5", "ratio"),
    ("cand top-5", "candidate_top5", "ratio"),
)
SEQUENCE_COLUMNS = (
    ("kind", "kind", "text"),
    ("tok cos mean", "token_cosine_mean", "cos"),
    ("tok cos p5", "token_cosine_p5", "cos"),
    ("spearman", "pairwise_spearman", "cos"),
    ("int diff", "integer_mismatches", "int"),
)
SEQUENCE_KINDS = ("tokens", "embedding", "integer")
OUTPUT_MIN_WIDTH = 12  # output names longer than the room left wrap (never cut)
AGREE_LEGEND = "agree = share of samples where both models rank the same class first (top-1)"


def fmt_metric(value: Any, kind: str = "g") -> str:
    """One cell: ``–`` for a metric that does not apply; non-finite values as text."""
    if value is None:
        return "–"
    if isinstance(value, str):  # "nan", "inf", "-inf" from the JSON form
        return value
    if kind in ("int", "text"):
        return str(value)
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if kind == "cos":
        return f"{value:.6f}"
    if kind == "db":
        return f"{value:.1f}"
    if kind == "ratio":
        return f"{value:.4f}"
    return f"{value:.3g}"


def show_provider_column(mode: str, providers: Sequence[str]) -> bool:
    """Rows are grouped by provider only when there is something to tell apart."""
    return mode == "providers" or len(providers) > 1


def provider_label(row: Mapping[str, Any], mode: str) -> str:
    if mode == "models":
        return str(row.get("provider", ""))
    return f"{row.get('provider', '')} vs {row.get('reference_provider', '')}"


def metrics_table(rows: Sequence[Mapping[str, Any]], columns=METRIC_COLUMNS, title: str | None = None):
    """A rich table of ``rows`` (one per output) with ``columns``.

    Fits 80 columns: short headers, numbers never wrap, no outer padding, and the output
    name folds onto more lines when it is longer than the room left (``…`` never appears).
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    name_width = max((len(str(row.get("output", ""))) for row in rows), default=6)
    cells = [[fmt_metric(row.get(key), kind) for _header, key, kind in columns] for row in rows]
    # Two spaces between columns (collapsed padding + the box's blank divider), none outside.
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    table.add_column("output", justify="left", overflow="fold", min_width=min(name_width, OUTPUT_MIN_WIDTH))
    for index, (header, _key, _kind) in enumerate(columns):
        # as wide as its widest cell: rich then narrows the output column, not the numbers
        width = max([len(header), *(len(row[index]) for row in cells)])
        table.add_column(header, justify="right", no_wrap=True, min_width=width)
    for row, values in zip(rows, cells):
        table.add_row(Text(str(row.get("output", "")), overflow="fold"), *values)
    return table


def _groups(rows: Sequence[Mapping[str, Any]], mode: str, providers: Sequence[str]):
    """``(title, rows)``: one group per provider (in order) when providers are told apart."""
    if not show_provider_column(mode, providers):
        return [(None, list(rows))]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(provider_label(row, mode), []).append(row)
    return list(groups.items())


def _sequence_legend(rows: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    if any(row.get("kind") == "tokens" for row in rows):
        parts.append("tok cos = cosine of each real token (padding excluded)")
    pairs = max((row.get("pairwise_samples") or 0 for row in rows if row.get("kind") == "embedding"), default=0)
    if pairs:
        parts.append(f"spearman = rank agreement of the similarities of {pairs} samples' pairs")
    if any(row.get("kind") == "integer" for row in rows):
        parts.append("int diff = integer values that differ (any fails)")
    return "; ".join(parts)


def print_metrics(console, rows: Sequence[Mapping[str, Any]], *, mode: str, providers: Sequence[str]) -> None:
    """The metrics table (one per provider when there are several), the ``agree`` legend for
    classifier outputs, for token/embedding/integer outputs the sequence table and its
    legend, and, for outputs with labels, the accuracy table — what ``compare`` and
    ``optimize`` print."""
    for title, group in _groups(rows, mode, providers):
        console.print(metrics_table(group, title=title))
    if any(row.get("classifier") for row in rows):
        console.print(AGREE_LEGEND, markup=False, highlight=False)
    sequence = [row for row in rows if row.get("kind") in SEQUENCE_KINDS]
    for title, group in _groups(sequence, mode, providers) if sequence else ():
        heading = "sequence outputs" if title is None else f"sequence outputs, {title}"
        console.print(metrics_table(group, columns=SEQUENCE_COLUMNS, title=heading))
    if sequence:
        console.print(_sequence_legend(sequence), markup=False, highlight=False)
    labeled = [row for row in rows if row.get("labeled")]
    for title, group in _groups(labeled, mode, providers) if labeled else ():
        heading = "accuracy" if title is None else f"accuracy, {title}"
        console.print(metrics_table(group, columns=ACCURACY_COLUMNS, title=heading))
