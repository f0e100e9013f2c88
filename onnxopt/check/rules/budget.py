"""Budget rules: file size, parameters, MACs and the opset range a deployment allows.
Each is off until its limit is set in :class:`~onnxopt.check.config.CheckConfig`."""

from __future__ import annotations

from onnxopt.check.context import CheckRun
from onnxopt.check.findings import ERROR, WARNING
from onnxopt.check.registry import rule
from onnxopt.check.text import human_bytes, human_count, quoted_names


@rule("max-size", ERROR, "budget: file size (with external data) above --max-size")
def max_size(run: CheckRun) -> None:
    limit, loaded = run.config.max_size, run.loaded
    if limit is not None and loaded.size_on_disk > limit:
        what = "file and its external data" if loaded.external else "file"
        run.add("max-size", f"the {what} take {human_bytes(loaded.size_on_disk)} "
                            f"({loaded.size_on_disk} bytes), over the budget of {human_bytes(limit)}")


@rule("max-params", ERROR, "budget: parameter count above --max-params")
def max_params(run: CheckRun) -> None:
    from onnxopt.analysis import parameter_count

    limit = run.config.max_params
    if limit is None:
        return
    params = parameter_count(run.model)
    if params > limit:
        run.add("max-params", f"{human_count(params)} parameters ({params}), over the budget of {human_count(limit)}")


@rule("max-macs", ERROR, "budget: MACs above --max-macs (warning when unknown)")
def max_macs(run: CheckRun) -> None:
    """MACs at batch size 1 above the budget; a warning when some are unknown (dynamic
    dimensions other than the batch). Not counted after a structure error."""
    from onnxopt.analysis import COUNTED_OPS

    limit = run.config.max_macs
    costs = run.costs() if limit is not None else None
    if costs is None:
        return
    counted = [c for c in costs.values() if c.op_type in COUNTED_OPS]
    unknown = [c.name for c in counted if c.macs is None]
    total = sum(c.macs or 0 for c in counted)
    if total > limit:
        run.add("max-macs", f"{human_count(total)} MACs ({total}) with batch size 1, over the budget of "
                            f"{human_count(limit)}")
    elif unknown:
        run.add("max-macs", f"cannot check the MAC budget: {len(unknown)} layer(s) have unknown shapes "
                            f"({quoted_names(unknown)}; dynamic dimensions other than the batch)", WARNING)


@rule("opset-range", ERROR, "ai.onnx opset outside --opset-min..--opset-max")
def opset_range(run: CheckRun) -> None:
    low, high = run.config.opset_min, run.config.opset_max
    if low is None and high is None:
        return
    versions = [o.version for o in run.model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        run.add("opset-range", "the model imports no ai.onnx opset")
        return
    version = versions[0]
    wanted = f"{low if low is not None else '…'}..{high if high is not None else '…'}"
    if (low is not None and version < low) or (high is not None and version > high):
        run.add("opset-range", f"ai.onnx opset {version} is outside the required range {wanted}")
