"""``recover``: distil the layers earlier passes changed back towards the original model,
on the calibration data (``--data``).

Teacher: the model as it entered the pipeline (``PassContext.teacher``); student: the
model as this pass gets it. Trainable (``scope=changed``): the float32 weights and biases
of the nodes a decomposition pass created (``onnxopt.decomposed``) and, after ``int8``, the
quantization scales of the activations and of the quantized layers' weights (LSQ-style, fake
quantization with the rounding straight-through; ``quantized=all``: also the integer
weights and biases, AdaQuant-style); ``scope=all``: every weight. Objective and training:
:mod:`onnxopt.recover`. The trained values go into the same initializers (int8 stays int8,
int32 biases re-quantized at the trained scales): the graph, its names and the earlier
passes' reports stay true.

Left unchanged, with the reason in the report: no changed layer (``scope=changed``), an
op the engine cannot run, a non-finite loss, a held-out loss that did not improve. No
data, or PyTorch not installed (``pip install "onnxopt[recover]"``): a usage error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import onnx_ir as ir
from onnx import numpy_helper

from onnxopt.errors import UsageError
from onnxopt.passbase import OptimizerPass, option
from onnxopt.registry import register


@dataclass(frozen=True)
class RecoverOptions:
    steps: int = option(200, "optimizer steps, one calibration batch each (early stopping may end sooner)")
    lr: float | Literal["auto"] = option(
        "auto", "Adam learning rate of float weights and biases (int8 weights: 100 × lr quanta per step), or "
        "auto: the best of 1e-5, 1e-4, 1e-3 on the held-out batches")
    scope: Literal["changed", "all"] = option(
        "changed", "changed: train the weights of the layers earlier passes decomposed or quantized; "
        "all: every weight")
    quantized: Literal["scales", "all"] = option(
        "scales", "after int8: train the quantization scales (few values), or all: also the integer weights and "
        "biases (many more values: they over-fit a small calibration set)")
    scale_lr: float | Literal["auto"] = option(
        "auto", "learning rate of the quantization scales, as a relative change per step, or auto: where only "
        "scales train, the best of 3e-4, 1e-3, 3e-3 on the held-out batches, else 3e-3")
    holdout: float = option(0.2, "share of the calibration batches held out for early stopping and the check")
    patience: int = option(3, "held-out evaluations without improvement before stopping")
    seed: int = option(0, "random seed (a fixed seed gives identical weights)")
    time_budget: float | None = option(None, "seconds for the recovery (default: the run's --time-budget)")

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("steps must be at least 1")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError("holdout must be in (0, 1)")
        if self.lr != "auto" and not float(self.lr) > 0:
            raise ValueError("lr must be positive or auto")
        if self.scale_lr != "auto" and not float(self.scale_lr) > 0:
            raise ValueError("scale_lr must be positive or auto")
        if self.patience < 1:
            raise ValueError("patience must be at least 1")


@register
class RecoverPass(OptimizerPass, ir.passes.InPlacePass):
    name = "recover"
    summary = "distil the changed layers back towards the original model on the calibration data (PyTorch)"
    Options = RecoverOptions
    lossless = False
    needs_data = True
    needs_teacher = True
    providers = ("cpu", "cuda")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.context.calibration is None:
            raise UsageError("recover needs --data (calibration samples to distil the changed layers on)")
        from onnxopt import recover

        ready, why = recover.available()
        if not ready:
            raise UsageError(why)
        teacher = self.context.teacher
        if teacher is None:
            self.report.skip_pass("no teacher: the caller did not hand over the model as it entered the pipeline")
            return ir.passes.PassResult(model, False)
        if isinstance(teacher, ir.Model):
            teacher = ir.to_proto(teacher)
        student = ir.to_proto(model)
        layers = recover.changed_layers(student)
        if not layers and self.options.scope == "changed":
            self.report.skip_pass("no layer was changed by an earlier pass (no node marked onnxopt.decomposed, "
                                  "no quantized layer); scope=all tunes every weight")
            return ir.passes.PassResult(model, False)
        result = recover.distill(
            teacher, student, [o for layer in layers for o in layer.outputs], self.context.calibration,
            self._distill_options(recover.DistillOptions), progress=self.context.progress)
        self._record(result)
        if result.model is None:
            self.report.skip_pass(result.reason or "recovery changed nothing")
            return ir.passes.PassResult(model, False)
        for layer in layers:
            self.report.apply(layer.source, outputs=layer.outputs, nodes=len(layer.nodes))
        trained = {t.name: t for t in result.model.graph.initializer if t.name in set(result.written)}
        for name, value in model.graph.initializers.items():
            if name in trained:  # same initializer, same dtype and shape: only the values change
                value.const_value = ir.tensor(numpy_helper.to_array(trained[name]), name=name)
        return ir.passes.PassResult(model, True)

    def _distill_options(self, options_class):
        options = self.options
        return options_class(
            steps=options.steps, lr=options.lr, holdout=options.holdout, seed=options.seed, scope=options.scope,
            patience=options.patience, quantized=options.quantized, scale_lr=options.scale_lr,
            time_budget=options.time_budget if options.time_budget is not None else self.context.time_budget)

    def _record(self, result) -> None:
        figures = {
            "loss_before": _rounded(result.loss_before), "loss_after": _rounded(result.loss_after),
            "steps": result.steps, "lr": result.lr, "scale_lr": result.scale_lr, "seconds": round(result.seconds, 3),
            "trainable_tensors": len(result.trainable), "targets": len(result.targets),
            "data": self.context.calibration_description,
        }
        if result.lr_trials:  # the weights' rates, or the scales' where only they trained
            key = "lr_trials" if result.lr is not None else "scale_lr_trials"
            figures[key] = {f"{lr:g}": _rounded(loss) for lr, loss in result.lr_trials.items()}
        if result.notes:
            figures["notes"] = list(result.notes)
        self.report.figures.update(figures)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
