"""Knowledge distillation: train the changed layers of a student to match its teacher.

The teacher (the model before the pipeline) runs in onnxruntime with the targeted values as
extra outputs; the student runs end to end in :class:`GraphModule`, the chosen initializers
trainable (a QDQ student's quantized ones fake-quantized, and teacher value v compared with
the student's ``DequantizeLinear(QuantizeLinear(v))`` where it has one). In a QDQ student
the quantization scales train (LSQ-style, the rounding straight-through; at ``scale_lr`` in
log scale, chosen like ``lr`` where only scales train), and with ``quantized="all"`` also
the integer weights and biases (AdaQuant-style), which need more data not to over-fit; int32
biases are then re-quantized at the new scales (:mod:`.requantize`). Objective: the mean
over targets (changed layers' outputs, model outputs) of the per-channel-normalised MSE Σ_c
mean((s_c − t_c)²) / (C · v_c), v_c the teacher's variance of channel c
(:func:`~onnxopt.recover.scope.channel_axis`: axis 1 of feature maps, the last axis of [N,
tokens, hidden] or [N, boxes, attributes]) plus 1e-3 × the channel mean: a weak channel
counts as much as a strong one. Token data with an attention mask is judged on its real
tokens only (a [N, tokens, …] value's padded positions are left out). Adam; batches split by
index into training and held-out parts; the training objective covers every target, but the
held-out loss (the best weights kept, every ``eval_every`` steps; stopping after
``patience`` evaluations without gain; the final keep-or-discard check) is the objective at
the model outputs alone, what the gate judges: matching the changed layers better can cost
the outputs. ``lr="auto"``: a short probe per candidate rate, the best rate (and its probe's
weights, should the run not beat them) kept. Data streamed, one batch at a time. Guards
return ``model=None`` with the reason: an op the engine lacks, a non-finite loss, no gain.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from onnxopt.analysis.inputs import attention_mask
from onnxopt.recover import scope as scopes
from onnxopt.recover.interpreter import GraphModule, write_back
from onnxopt.recover.ops import Unsupported
from onnxopt.recover.requantize import rescale_biases
from onnxopt.runtime import create_session

Feeds = dict[str, np.ndarray]
Progress = Callable[[str, int, int], None]
KEPT = "kept the weights from before recovery"
#: the learning rate of 8-bit weights (in quanta) over ``lr`` (float weights and int32 biases
#: step in value units)
QUANTA_LR_RATIO = 100.0
#: the scales' learning rate (log scale) under scale_lr="auto" where weights train too
SCALE_LR = 3e-3


@dataclass(frozen=True)
class DistillOptions:
    steps: int = 200  # optimizer steps (one training batch each)
    lr: float | str = "auto"  # a learning rate, or "auto": the best of lr_candidates on the held-out part
    lr_candidates: tuple[float, ...] = (1e-5, 1e-4, 1e-3)
    probe_steps: int | None = None  # steps per candidate rate (default max(5, steps // 5))
    holdout: float = 0.2  # share of the batches held out for early stopping and the final check
    seed: int = 0
    scope: str = "changed"  # "changed": weights of the changed layers; "all": every weight (float and quantized)
    time_budget: float | None = None  # seconds for the whole recovery
    eval_every: int | None = None  # steps between held-out evaluations (default max(1, steps // 10))
    patience: int = 3  # evaluations without improvement before stopping
    threads: int = 1  # torch and onnxruntime threads
    quantized: str = "scales"  # a QDQ student: train its quantization "scales", or "all" (integers too)
    # the scales' learning rate, in log scale (relative change per step); "auto": where only
    # scales train, the best of scale_lr_candidates on the held-out part, else SCALE_LR
    scale_lr: float | str = "auto"
    scale_lr_candidates: tuple[float, ...] = (3e-4, 1e-3, 3e-3)


@dataclass
class DistillResult:
    model: onnx.ModelProto | None  # None: the student is to be kept as it was (see reason)
    loss_before: float | None = None  # held-out loss of the student as given
    loss_after: float | None = None  # held-out loss of the best trained weights
    steps: int = 0
    seconds: float = 0.0
    lr: float | None = None  # the weights' learning rate; None where only scales trained
    scale_lr: float | None = None  # the scales' learning rate; None where no scale trained
    reason: str | None = None  # why nothing was changed
    trainable: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # initializers whose values ``model`` changed
    targets: list[str] = field(default_factory=list)
    # probed rate (the weights', or the scales' where only they train) -> held-out loss after probing
    lr_trials: dict[float, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class _Stop(Exception):
    """Ends a recovery early with a reason and the student unchanged."""


def distill(teacher: onnx.ModelProto, student: onnx.ModelProto, changed_outputs: list[str],
            batches: Callable[[], Iterator[Feeds]], options: DistillOptions = DistillOptions(),
            progress: Progress | None = None) -> DistillResult:
    """Distil ``teacher`` into ``student``; see the module docstring."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, options.threads))
    result = DistillResult(None)
    try:
        with torch.random.fork_rng(devices=[]):  # the seed, without changing the caller's random state
            torch.manual_seed(options.seed)
            _Run(teacher, student, changed_outputs, batches, options, progress, start, result).run()
    except _Stop as stop:
        result.model, result.reason = None, str(stop)
    finally:
        torch.set_num_threads(threads)
        result.seconds = time.perf_counter() - start
    return result


class _Run:
    def __init__(self, teacher, student, changed_outputs, batches, options, progress, start, result):
        self.student, self.teacher, self.batches, self.options = student, teacher, batches, options
        self.progress = progress or (lambda message, done, total: None)
        self.deadline = start + options.time_budget if options.time_budget else math.inf
        self.result = result
        teacher_values = _value_names(teacher)
        student_values = _value_names(student)
        wanted = [*changed_outputs, *(o.name for o in student.graph.output
                                      if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT)]
        self.targets = list(dict.fromkeys(n for n in wanted if n in teacher_values and n in student_values))
        self.student_names = [scopes.student_value(student, n) for n in self.targets]  # same order
        graph_outputs = {o.name for o in student.graph.output}
        # held-out loss, early stopping and the keep-or-discard check: at the model outputs
        # (what the gate judges), where the targets include them
        self.judged = [n for n in self.targets if n in graph_outputs] or list(self.targets)
        missing = sorted(set(changed_outputs) - set(self.targets))
        if missing:
            result.notes.append(f"not matched (absent from the teacher or the student): {', '.join(missing)}")
        if not self.targets:
            raise _Stop("no value of the student has a float counterpart in the teacher to match")
        nodes = scopes.changed_nodes(student, changed_outputs)
        trainable = scopes.trainable_initializers(student, options.scope, nodes)
        if options.quantized not in ("scales", "all"):
            raise ValueError(f"quantized must be 'scales' or 'all', got {options.quantized!r}")
        if options.quantized == "scales":
            floats = {t.name for t in student.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
            trainable = [name for name in trainable if name in floats]
        scales = scopes.quantization_scales(student, nodes)
        if not trainable and not scales:
            raise _Stop(f"no float32 or quantized initializer to train (scope={options.scope})")
        result.trainable, result.targets = [*trainable, *scales], self.targets
        self.module = GraphModule(student, trainable, scales)
        self.session = create_session(_with_outputs(teacher, self.targets), threads=max(1, options.threads))
        self.teacher_inputs = [i.name for i in self.session.get_inputs()]
        self.params = list(self.module.weights)
        self.original = [p.detach().clone() for p in self.params]
        self.probes: dict[float, list[torch.Tensor] | None] = {}  # each probed rate's best weights
        # with only scales to train, the probed and trained rate is theirs
        self.scales_only = len(self.module.scale_parameters()) == len(self.params)
        self.scale_lr = SCALE_LR if options.scale_lr == "auto" else float(options.scale_lr)

    # -- data

    def _stream(self, holdout: bool) -> Iterator[tuple[Feeds, dict[str, np.ndarray]]]:
        """(feeds, teacher tensors) of the held-out or the training batches, one at a time."""
        for index, feeds in enumerate(self.batches()):
            if (index in self.holdout) == holdout:
                values = self.session.run(self.targets, {k: feeds[k] for k in self.teacher_inputs})
                yield feeds, dict(zip(self.targets, values))

    def _training_batches(self) -> Iterator[tuple[Feeds, dict[str, np.ndarray]]]:
        while True:  # cycle over the training part
            yield from self._stream(False)

    def _split_and_statistics(self) -> None:
        count = 0
        for feeds in self.batches():
            absent = [name for name in self.teacher_inputs if name not in feeds] if count == 0 else []
            if absent:
                raise _Stop(f"the data has no value for input(s) {', '.join(absent)}; {KEPT}")
            count += 1
        if count < 2:
            raise _Stop(f"recovery needs at least 2 batches of data (a training and a held-out part), got {count}")
        held = min(count - 1, max(1, round(count * self.options.holdout)))
        self.holdout = {int((k + 0.5) * count / held) for k in range(held)}
        sums: dict[str, np.ndarray] = {}
        squares: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        self.axes: dict[str, int] = {}
        for feeds, values in self._stream(False):
            mask = attention_mask(feeds)
            for name, value in values.items():
                if name not in self.axes:
                    self.axes[name] = scopes.channel_axis(self.teacher, name, np.ndim(value))
                channels = _channels_last(np.asarray(value, np.float64), self.axes[name], mask)
                sums[name] = sums.get(name, 0) + channels.sum(0)
                squares[name] = squares.get(name, 0) + (channels ** 2).sum(0)
                counts[name] = counts.get(name, 0) + channels.shape[0]
        self.variances = {}
        for name in self.targets:
            mean = sums[name] / counts[name]
            variance = np.maximum(squares[name] / counts[name] - mean ** 2, 0)
            floored = variance + 1e-3 * variance.mean() + 1e-12
            self.variances[name] = torch.from_numpy(floored.astype(np.float32))

    # -- objective

    def _loss(self, feeds: Feeds, teacher: dict[str, np.ndarray], targets: list[str] | None = None) -> torch.Tensor:
        """The objective over ``targets`` (default: all)."""
        pairs = [(n, s) for n, s in zip(self.targets, self.student_names) if targets is None or n in targets]
        # copies: feeds may be read-only views (memory-mapped .npy data), which torch must not wrap
        inputs = {k: torch.from_numpy(np.array(v)) for k, v in feeds.items()}
        outputs = self.module(inputs, [s for _, s in pairs])
        mask = attention_mask(feeds)
        total = torch.zeros((), dtype=torch.float32)
        for name, student_name in pairs:
            error = (outputs[student_name] - torch.from_numpy(np.asarray(teacher[name]))) ** 2
            per_channel = _channels_last(error, self.axes[name], mask).mean(0)
            total = total + (per_channel / self.variances[name]).mean()
        return total / len(pairs)

    def _held_out_loss(self) -> float:
        """The objective on the held-out batches, at the judged targets (the model outputs)."""
        losses = []
        with torch.no_grad():
            for feeds, teacher in self._stream(True):
                losses.append(float(self._loss(feeds, teacher, self.judged)))
        return float(np.mean(losses))

    # -- training

    def _restore(self, values: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for parameter, value in zip(self.params, values):
                parameter.copy_(value)

    def _train(self, lr: float, steps: int, label: str) -> tuple[float, list[torch.Tensor] | None, int]:
        """Adam from the original weights; (best held-out loss, its weights, steps run)."""
        self._restore(self.original)
        optimizer = torch.optim.Adam([g for g in self._groups(lr) if g["params"]])
        every = self.options.eval_every or max(1, steps // 10)
        best, best_weights, stale, done, evaluated = math.inf, None, 0, 0, 0
        batches = self._training_batches()
        for step in range(1, steps + 1):
            if time.perf_counter() > self.deadline:
                self.result.notes.append(f"{label}: time budget reached after {done} steps")
                break
            feeds, teacher = next(batches)
            optimizer.zero_grad()
            loss = self._loss(feeds, teacher)
            if not torch.isfinite(loss):
                raise _NonFinite(f"non-finite loss at step {step} (lr={lr:g})")
            loss.backward()
            optimizer.step()
            done = step
            self.progress(f"recover: {label} step {step}/{steps}, loss {loss.item():.4g}", step, steps)
            if step % every and step != steps:
                continue
            evaluated = step
            held_out = self._evaluate(step, lr)
            if held_out < best:
                best, best_weights, stale = held_out, [p.detach().clone() for p in self.params], 0
            else:
                stale += 1
                if stale >= self.options.patience:
                    self.result.notes.append(f"{label}: stopped early at step {step} (held-out loss stalled)")
                    break
        if done > evaluated:  # the time budget ended the loop between evaluations
            held_out = self._evaluate(done, lr)
            if held_out < best:
                best, best_weights = held_out, [p.detach().clone() for p in self.params]
        return best, best_weights, done

    def _groups(self, lr: float) -> list[dict]:
        """Adam parameter groups: value-unit parameters at ``lr``, quanta at its ratio, log
        scales at ``self.scale_lr`` (at ``lr`` where only scales train)."""
        kinds = {id(p): "scale" for p in self.module.scale_parameters()}
        kinds.update({id(p): "quanta" for p in self.module.quanta_parameters()})
        rates = {"value": lr, "quanta": lr * QUANTA_LR_RATIO, "scale": lr if self.scales_only else self.scale_lr}
        return [{"params": [p for p in self.params if kinds.get(id(p), "value") == kind], "lr": rate}
                for kind, rate in rates.items()]

    def _evaluate(self, step: int, lr: float) -> float:
        held_out = self._held_out_loss()
        if not math.isfinite(held_out):
            raise _NonFinite(f"non-finite held-out loss at step {step} (lr={lr:g})")
        return held_out

    def _choose_rate(self) -> float:
        """The rate to train at: the weights' learning rate, or the scales' where only they
        train; an "auto" one is the best of its candidates after a short probe each."""
        if self.scales_only:
            fixed, candidates = self.options.scale_lr, self.options.scale_lr_candidates
        else:
            fixed, candidates = self.options.lr, self.options.lr_candidates
        if fixed != "auto":
            return float(fixed)
        probe = self.options.probe_steps or max(5, self.options.steps // 5)
        for lr in candidates:
            try:
                loss, self.probes[lr], _ = self._train(lr, probe, f"lr {lr:g}")
            except _NonFinite:
                loss, self.probes[lr] = math.inf, None
            self.result.lr_trials[lr] = loss
        best = min(self.result.lr_trials, key=self.result.lr_trials.get)
        if not math.isfinite(self.result.lr_trials[best]):
            raise _Stop(f"non-finite loss at every learning rate tried; {KEPT}")
        return best

    def run(self) -> None:
        result = self.result
        try:
            missing = self.module.missing_ops(self.student_names, self.teacher_inputs)
        except KeyError as exc:  # a value the student needs that neither the data nor the graph gives
            raise _Stop(f"the student cannot be run from the teacher's inputs: {exc.args[0]}; {KEPT}") from None
        if missing:
            raise _Stop(f"the recovery engine cannot run {', '.join(missing)}; {KEPT}")
        self._split_and_statistics()
        try:
            result.loss_before = self._held_out_loss()
        except Unsupported as exc:
            raise _Stop(f"the recovery engine cannot run {exc}; {KEPT}") from None
        if not math.isfinite(result.loss_before):
            raise _Stop(f"the student's held-out loss is not finite before training; {KEPT}")
        rate = self._choose_rate()
        if self.scales_only:
            result.lr, result.scale_lr = None, rate
        else:
            result.lr, result.scale_lr = rate, self.scale_lr if self.module.scale_parameters() else None
        try:
            after, weights, result.steps = self._train(rate, self.options.steps, "train")
        except _NonFinite as exc:
            raise _Stop(f"{exc}; {KEPT}") from None
        probed = self.probes.get(rate)
        if result.steps == 0:
            if probed is None:
                raise _Stop(f"the time budget ran out before the first training step; {KEPT}")
            result.notes.append("the time budget ran out during the learning-rate probes")
        if probed is not None and not (weights is not None and after <= result.lr_trials[rate]):
            # the probe evaluates more often and may have caught a better point than the run
            after, weights = result.lr_trials[rate], probed
            if after < result.loss_before:
                result.notes.append(f"kept the weights of the rate {rate:g} probe (held-out {after:.6g})")
        result.loss_after = after if weights is not None else None
        if weights is None or not after < result.loss_before:
            raise _Stop(f"held-out loss did not improve ({result.loss_before:.6g} -> {after:.6g}); {KEPT}")
        result.model = write_back(self.student, self.module.stored_values(weights))
        rescaled = rescale_biases(self.student, result.model)
        result.written = list(dict.fromkeys([*result.trainable, *rescaled,
                                             *_bias_scale_names(result.model, rescaled)]))
        if rescaled:
            result.notes.append(f"re-quantized {len(rescaled)} int32 biases at the trained scales")


class _NonFinite(Exception):
    pass


def _bias_scale_names(model: onnx.ModelProto, biases: list[str]) -> list[str]:
    """The scale initializers of the DequantizeLinear nodes that read ``biases``."""
    wanted = set(biases)
    return [n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in wanted]


def _channels_last(value, axis: int = 1, mask: np.ndarray | None = None):
    """[N, C, …] -> [rows, C] (channel axis ``axis``); a tensor of rank < 2 is one channel.
    ``mask``: a batch's real tokens, [N, T]; a [N, T, …] value keeps only those rows (a
    padded position's value is never used, and padding can be most of a batch)."""
    if value.ndim < 2:
        return value.reshape(-1, 1)
    moved = np.moveaxis(value, axis, -1) if isinstance(value, np.ndarray) else value.movedim(axis, -1)
    if mask is not None and moved.ndim >= 3 and tuple(moved.shape[:2]) == mask.shape and mask.any():
        moved = moved[mask if isinstance(value, np.ndarray) else torch.from_numpy(mask)]
    return moved.reshape(-1, value.shape[axis])


def _value_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    return {o for n in graph.node for o in n.output} | {i.name for i in graph.input}


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are ``names`` (intermediates exposed)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name: o for o in model.graph.output}
    del copy.graph.output[:]
    copy.graph.output.extend(existing.get(n) or onnx.ValueInfoProto(name=n) for n in names)
    return copy
