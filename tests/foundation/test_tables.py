"""One metrics table for ``compare`` and ``optimize``'s validation (issue 12, item 6a).

In an 80-column terminal ``optimize`` cut its headers (``max_abs_e…``, ``rel_l2_e…``,
``top1_agr…``) while ``compare`` printed a compact table that fits. Both now print
:func:`onnxopt.cli.tables.print_metrics`; rendered at 80 columns nothing is cut.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from onnxopt.cli.render import render_run
from onnxopt.cli.tables import METRIC_COLUMNS, print_metrics
from onnxopt.report import RunReport


def _row(provider: str, output: str, classifier: bool = True) -> dict:
    return {
        "provider": provider, "reference_provider": "cpu", "output": output, "samples": 8, "elements": 8000,
        "max_abs_error": 1.2345678e-05, "mean_abs_error": 3.4567e-07, "rel_l2_error": 2.345e-06,
        "cosine_mean": 0.99999994, "cosine_min": 0.9999987, "snr_db": 112.34567,
        "classifier": classifier, "top1_agreement": 1.0 if classifier else None, "labeled": 0,
        "reference_top1": None, "reference_top5": None, "candidate_top1": None, "candidate_top5": None,
    }


ROWS = [
    _row("cpu", "logits"),
    _row("cpu", "detections/boxes_after_nms:0", classifier=False),
    _row("cuda", "logits"),
    _row("cuda", "detections/boxes_after_nms:0", classifier=False),
]


def _validation_report(rows, providers) -> RunReport:
    report = RunReport()
    report.validation = {
        "tolerances": {"max_rel_error": 1e-4, "min_cosine": None},
        "tolerance_reason": "lossless passes only",
        "mode": "models", "reference": "original", "candidate": "optimized", "reference_provider": None,
        "providers": providers, "source": "8 random samples (seed 0)", "samples": 8, "batch_size": 1,
        "results": rows, "failures": [], "passed": True, "notes": [],
    }
    return report


def _render(fn, width: int = 80) -> str:
    stream = io.StringIO()
    fn(Console(file=stream, width=width, color_system=None, legacy_windows=False))
    return stream.getvalue()


@pytest.mark.parametrize(
    ("rows", "providers"),
    [(ROWS[:2], ["cpu"]), (ROWS, ["cpu", "cuda"])],
    ids=["one provider", "two providers"],
)
def test_optimize_validation_table_fits_80_columns(rows, providers):
    text = _render(lambda console: render_run(_validation_report(rows, providers), console))
    assert "…" not in text, text
    header_lines = [line for line in text.splitlines() if line.lstrip().startswith("output")]
    assert len(header_lines) == len(providers), text
    for line in header_lines:  # every header whole, in order, on the header line
        assert line.split() == ["output", *" ".join(h for h, _k, _f in METRIC_COLUMNS).split()], line
    assert "max_abs_e" not in text  # the raw keys are not the headers any more
    assert "1.0000" in text  # the last column (agree) is not squeezed away
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "validation on 8 random samples (seed 0) (" + ", ".join(providers) + ")" in text
    assert "1.23e-05" in text and "0.999999" in text


def test_compare_and_optimize_print_the_same_table():
    def compare_like(console):
        print_metrics(console, ROWS, mode="models", providers=["cpu", "cuda"])

    table = _render(compare_like)
    optimize = _render(lambda console: render_run(_validation_report(ROWS, ["cpu", "cuda"]), console))
    assert table in optimize
    assert "agree = share of samples" in table


def test_provider_mode_and_accuracy_table_fit_80_columns():
    rows = [{**row, "provider": "cuda", "reference_provider": "cpu", "labeled": 8, "reference_top1": 0.875,
             "candidate_top1": 0.875, "reference_top5": 1.0, "candidate_top5": 1.0} for row in ROWS[:2]]
    text = _render(lambda console: print_metrics(console, rows, mode="providers", providers=["cuda"]))
    assert "…" not in text, text
    assert "cuda vs cpu" in text
    assert "output labeled ref top-1 cand top-1 ref top-5 cand top-5" in " ".join(text.split())
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80


def test_nonfinite_values_from_json_are_printed():
    row = {**ROWS[0], "max_abs_error": "inf", "rel_l2_error": "nan", "top1_agreement": None}
    text = _render(lambda console: print_metrics(console, [row], mode="models", providers=["cpu"]))
    assert "inf" in text and "nan" in text and "–" in text
