"""The submit-time dry run: the job's first steps, on the submitter's machine, before sending.

A mistake found on a worker costs the user a failed job and a traceback from another machine;
found here it is an :class:`InvalidJobError` before a byte is sent. So the SDK rebuilds the
model from the shipped code exactly as a worker will (:mod:`pscluster.model.rebuild`: the
same isolated import, the same layout checks, the same initial state), runs one forward and
backward pass on a few training rows with the job's loss and precision, evaluates a few test
rows, and checks the data as a whole against what the model outputs: non-finite values (the
rows named), class labels outside the model's classes, bce targets outside [0, 1].

The rows tried include, for every integer input, the rows holding its smallest and largest
value, so an embedding index out of range fails here rather than on the worker that draws it.
"""

from __future__ import annotations

import torch

from pscluster.client.errors import InvalidJobError
from pscluster.data import inputs
from pscluster.data.dataset import Dataset
from pscluster.data.inputs import Inputs
from pscluster.errors import PSError
from pscluster.model import objective, rebuild
from pscluster.model.hosted import attach_drawn_rows
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.worker.precision import Precision, PrecisionUnavailable

FIRST_ROWS = 8


def check_finite(data: Dataset) -> None:
    """NaN or infinite values anywhere in the data: InvalidJobError naming the rows."""
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        named = zip(inputs.structure(x).keys or ("",), inputs.parts(x), strict=True)
        for what, t in [
            *((f"{split} X" + (f"[{k!r}]" if k else ""), t) for k, t in named),
            (f"{split} y", y),
        ]:
            bad = objective.nonfinite_rows(t)
            if bad.numel():
                raise InvalidJobError(
                    f"{what} has NaN or infinite values in {bad.numel()} rows "
                    f"({objective.describe_rows(bad)}); drop or impute them before submitting"
                )


def dry_run(spec: co_pb2.JobSpec, initial: dict[str, torch.Tensor], data: Dataset) -> None:
    """Build the model as a worker will and train and evaluate it on a few rows."""
    # The user's random stream stays untouched (building the model draws from it).
    with torch.random.fork_rng(devices=[]):
        _dry_run(spec, initial, data)


def _dry_run(spec: co_pb2.JobSpec, initial: dict[str, torch.Tensor], data: Dataset) -> None:
    name = spec.model.class_name
    try:
        code = rebuild.load_code(spec.model)
        model = rebuild.build_model(spec.model, initial, code)
        attach_drawn_rows(model)  # tables on the shards: rows drawn as the shards would
        loss_fn = rebuild.loss_function(spec, code)
    except PSError as e:
        raise InvalidJobError(f"{name} does not build from the code that would be sent: {e}") from e
    except Exception as e:  # the user's module or constructor
        raise InvalidJobError(
            f"{name} does not build from the code that would be sent (the workers import "
            f"your model's module and the local modules it imports): {type(e).__name__}: {e}"
        ) from e
    rows = sample_rows(data.train_x, data.train_y.shape[0])
    x, y = inputs.take(data.train_x, rows), data.train_y[rows]
    with torch.no_grad():
        out = _forward(model, spec, x, len(rows))
    # The whole data against what the model outputs, before the loss meets a bad label.
    check_whole_targets(spec.loss, out, data)
    _step(model, loss_fn, spec, x, y, len(rows))
    test_rows = sample_rows(data.test_x, data.test_y.shape[0])
    model.eval()
    with torch.no_grad():
        try:
            out = inputs.call(model, inputs.take(data.test_x, test_rows))
            objective.check_targets(spec.loss, out, data.test_y[test_rows], "test y")
        except PSError as e:
            raise InvalidJobError(str(e)) from e
        except Exception as e:
            raise InvalidJobError(
                f"{name} fails in eval mode on test rows {test_rows.tolist()}: "
                f"{type(e).__name__}: {e}"
            ) from e


def precision_here(spec: co_pb2.JobSpec) -> Precision:
    try:
        return Precision(spec.precision, torch.device("cpu"))
    except PrecisionUnavailable:  # fp16 runs on the workers' GPUs; try it in float32 here
        return Precision("fp32", torch.device("cpu"))


def _failed(spec: co_pb2.JobSpec, n: int, e: Exception) -> InvalidJobError:
    if isinstance(e, PSError):
        return InvalidJobError(str(e))
    return InvalidJobError(
        f"the dry run of {spec.model.class_name} on {n} training rows failed "
        f"({type(e).__name__}: {e}); a worker would fail the same way"
    )


def _forward(model: torch.nn.Module, spec: co_pb2.JobSpec, x: Inputs, n: int) -> torch.Tensor:
    """The model's output on the rows, in training mode (as a worker's first batch)."""
    model.train()
    try:
        with precision_here(spec).autocast():
            return inputs.call(model, x).float()
    except Exception as e:
        raise _failed(spec, n, e) from e


def _step(
    model: torch.nn.Module,
    loss_fn: objective.LossFn,
    spec: co_pb2.JobSpec,
    x: Inputs,
    y: torch.Tensor,
    n: int,
) -> None:
    """One training forward and backward, with the job's loss and precision."""
    model.train()
    try:
        with precision_here(spec).autocast():
            out = inputs.call(model, x)
            objective.check_targets(spec.loss, out, y, "train y")
            loss = loss_fn(out, y)
        loss.backward()  # type: ignore[no-untyped-call]
    except Exception as e:
        raise _failed(spec, n, e) from e
    if not torch.isfinite(loss.detach()).all():
        raise InvalidJobError(
            f"the loss of {spec.model.class_name} on its first training rows is "
            f"{float(loss)}; check the data's scale and the model's initialisation"
        )


def check_whole_targets(loss: str, out: torch.Tensor, data: Dataset) -> None:
    """Checks over every row that the model's output shape decides (class count, range)."""
    name = objective.loss_name(loss)
    try:
        for split in ("train", "test"):
            y = getattr(data, f"{split}_y")
            if name == "cross_entropy":
                objective.check_labels(y, int(out.shape[1]), f"{split} y")
            elif name == "bce_with_logits":
                objective.check_binary(y, f"{split} y")
    except PSError as e:
        raise InvalidJobError(str(e)) from e


def sample_rows(x: Inputs, n: int) -> torch.Tensor:
    """The first rows, the last, and the rows with each integer input's extreme values."""
    picked = list(range(min(n, FIRST_ROWS)))
    picked.append(n - 1)
    for t in inputs.parts(x):
        if t.is_floating_point() or t.numel() == 0:
            continue
        per_row = t.reshape(n, -1)
        picked.extend(
            [int(per_row.max(dim=1).values.argmax()), int(per_row.min(dim=1).values.argmin())]
        )
    unique = sorted(set(picked))
    if len(unique) == 1 and n > 1:  # BatchNorm cannot train on one row
        unique.append(1)
    return torch.tensor(unique, dtype=torch.int64)
