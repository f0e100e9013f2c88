"""The ``recover`` pass: bad input is a usage error, nothing to do is a skip with a reason,
and after a decomposition it writes trained values into the same initializers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import onnxopt.recover
from onnxopt.errors import UsageError
from onnxopt.passbase import PassContext
from onnxopt.registry import build_options, get
from tests.passes.models import run_pass
from tests.recover.models import batches, decomposed, initializers, teacher_model


def context(teacher=None, data=True, **fields):
    ctx = PassContext(calibration=batches() if data else None, calibration_description="synthetic", **fields)
    ctx.teacher = teacher
    return ctx


def test_registered_with_options_and_capability():
    cls = get("recover")
    assert cls.needs_data and not cls.lossless
    assert "needs calibration data" in cls.capability()
    assert build_options(cls, {"lr": "auto"}).lr == "auto"
    assert build_options(cls, {"lr": "1e-4", "steps": "5", "scope": "all"}).lr == 1e-4
    with pytest.raises(UsageError):
        build_options(cls, {"scope": "some"})


def test_without_data_is_a_usage_error():
    teacher = teacher_model()
    with pytest.raises(UsageError, match="recover needs --data"):
        run_pass("recover", decomposed(teacher), context=context(teacher, data=False))


def test_without_torch_is_a_usage_error_naming_the_install_command(monkeypatch):
    monkeypatch.setattr(onnxopt.recover, "available", lambda: (False, "torch missing; " + onnxopt.recover.INSTALL))
    teacher = teacher_model()
    with pytest.raises(UsageError, match=r'pip install "onnxopt\[recover\]"'):
        run_pass("recover", decomposed(teacher), context=context(teacher))


def test_nothing_changed_is_skipped_with_the_reason():
    teacher = teacher_model()
    out, opt = run_pass("recover", teacher, context=context(teacher))
    assert opt.report.status == "skipped" and "no layer was changed" in opt.report.skipped_reason
    assert out.graph.initializer == teacher.graph.initializer


def test_without_a_teacher_is_skipped_with_the_reason():
    teacher = teacher_model()
    _, opt = run_pass("recover", decomposed(teacher), context=context(None))
    assert opt.report.status == "skipped" and "no teacher" in opt.report.skipped_reason


def test_recover_after_tucker_trains_the_same_initializers():
    teacher = teacher_model()
    student = decomposed(teacher)
    out, opt = run_pass("recover", student, context=context(teacher), steps=30, lr=1e-2)
    figures = opt.report.figures
    assert opt.report.modified, opt.report.skipped_reason
    assert figures["loss_after"] < figures["loss_before"]
    assert figures["lr"] == 1e-2 and figures["steps"] >= 1 and figures["trainable_tensors"] == 12
    assert [a["node"] for a in opt.report.applied] == ["conv0", "conv1", "conv2"]
    before, after = initializers(student), initializers(out)
    assert list(before) == list(after)
    assert all(before[k].shape == after[k].shape and before[k].dtype == after[k].dtype for k in before)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert [n.name for n in out.graph.node] == [n.name for n in student.graph.node]


def test_a_guard_leaves_the_model_unchanged_with_the_reason():
    teacher = teacher_model()
    student = decomposed(teacher)
    out, opt = run_pass("recover", student, context=context(teacher), steps=5, lr=1e30)
    assert opt.report.status == "skipped" and "non-finite" in opt.report.skipped_reason
    assert initializers(out).keys() == initializers(student).keys()
    assert all(np.array_equal(initializers(out)[k], v) for k, v in initializers(student).items())


def test_teacher_may_be_an_ir_model():
    teacher = teacher_model()
    _, opt = run_pass("recover", decomposed(teacher), context=context(ir.from_proto(teacher)), steps=3, lr=1e-2)
    assert opt.report.figures["steps"] >= 1


def test_the_recover_extra_is_installed_here():
    """make test installs torch: a missing engine must fail the suite, not skip its tests."""
    assert onnxopt.recover.available()[0], onnxopt.recover.available()[1]


def test_the_pipeline_hands_recover_the_model_as_it_entered():
    """tucker,recover through the API: the teacher is the original, not tucker's output."""
    import onnxopt

    teacher = teacher_model()
    _, report = onnxopt.optimize(teacher, "tucker:rank=6:round=1:min_in_channels=8,recover:steps=20:lr=0.01",
                                 context=PassContext(calibration=batches()))
    figures = report.passes[1].figures
    assert report.passes[1].modified, report.passes[1].skipped_reason
    assert figures["loss_after"] < figures["loss_before"]  # a teacher equal to the student would give 0 → 0


def test_the_pipeline_does_not_leave_its_teacher_in_a_reused_context():
    import onnxopt
    from onnxopt.pipeline import Pipeline, run_passes

    context = PassContext(calibration=batches())
    opt_passes = Pipeline.parse("tucker:rank=6:round=1:min_in_channels=8,recover:steps=2:lr=0.01").instantiate(context)
    run_passes(ir.from_proto(teacher_model()), opt_passes)
    assert opt_passes[1].report.modified and context.teacher is None
    assert onnxopt.passes.recover.RecoverPass.needs_teacher
