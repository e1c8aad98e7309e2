"""Everything ``Client.submit`` sends, built and checked before the first byte leaves.

A mistake found here (a float64 model, X and y of different lengths, labels the model cannot
output, NaN in the data, a model that does not run on the data) costs the user nothing; the
same mistake found by a worker costs a failed job. The model is built, trained and evaluated
once on a few rows exactly as a worker will (:mod:`pscluster.client.dry_run`). Checks that
need the cluster's knowledge (mode and optimizer names, shard count) are left to the
coordinator, so there is one source of truth for them; loss and metric rules live in
:mod:`pscluster.model.objective`, which both sides use.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from pscluster.client import dry_run, initial
from pscluster.client.errors import InvalidJobError
from pscluster.data.dataset import Dataset
from pscluster.errors import PSError
from pscluster.model import bundle, objective, rebuild, state
from pscluster.model.bundle import shipped_module
from pscluster.transport import wire
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2

M = TypeVar("M")
PRECISIONS = ("fp32", "bf16", "fp16")

DEFAULT_OPTIMIZER: Mapping[str, Any] = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
_UINT32_MAX = 2**32 - 1
_PULL_DTYPES = {
    "float32": common_pb2.DTYPE_FLOAT32,
    "float16": common_pb2.DTYPE_FLOAT16,
    "bfloat16": common_pb2.DTYPE_BFLOAT16,
}


@dataclass(frozen=True)
class Payload:
    spec: co_pb2.JobSpec
    dataset: bytes
    initial_state: bytes

    def chunks(self, chunk_bytes: int) -> Iterator[co_pb2.SubmitJobChunk]:
        """The SubmitJob stream: the spec first, then each blob in chunk-sized pieces."""
        yield co_pb2.SubmitJobChunk(spec=self.spec)
        for name, blob in (("dataset", self.dataset), ("initial_state", self.initial_state)):
            for piece in wire.chunks(memoryview(blob), chunk_bytes):
                yield co_pb2.SubmitJobChunk(blob=common_pb2.BlobChunk(blob=name, data=piece))


LossArg = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_payload(
    model: type[nn.Module],
    train: tuple[Any, Any],
    test: tuple[Any, Any],
    *,
    mode: str,
    staleness: int,
    optimizer: Mapping[str, Any] | None,
    epochs: int,
    batch_size: int,
    model_kwargs: Mapping[str, Any] | None,
    loss: LossArg,
    partitions: int,
    shards: int,
    seed: int,
    name: str,
    compression: Mapping[str, Any] | None = None,
    backup_workers: int = 0,
    stragglers: Mapping[str, Any] | None = None,
    staleness_aware_lr: bool = False,
    local_steps: int = 0,
    metric: str = "",
    precision: str = "fp32",
    init_from: InitFrom | None = None,
    code_dir: str | Path | None = None,
) -> Payload:
    """Check the arguments of ``Client.submit`` and turn them into the wire spec and blobs,
    after a dry run of the model on a few rows (:mod:`pscluster.client.dry_run`).

    Raises InvalidJobError naming the argument that is wrong.
    """
    _check_model_class(model)
    kwargs = dict(model_kwargs or {})
    try:
        kwargs_json = json.dumps(kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidJobError(f"model_kwargs must be JSON-serialisable: {e}") from e
    loss_name, loss_fn = _loss(loss)
    model_spec = _model_spec(model, kwargs_json, [loss_fn] if loss_fn else [], code_dir)
    start = initial.build(model, kwargs, seed, init_from.state if init_from else None)
    model_spec.params.extend(rebuild.describe(start.model)[0])
    model_spec.buffers.extend(rebuild.describe(start.model)[1])
    data = _dataset(train, test)
    ints = {
        "staleness": staleness,
        "epochs": epochs,
        "batch_size": batch_size,
        "partitions": partitions,
        "shards": shards,
        "backup_workers": backup_workers,
        "local_steps": local_steps,
    }
    if not isinstance(staleness_aware_lr, bool):
        raise InvalidJobError(
            f"staleness_aware_lr must be True or False, got {type(staleness_aware_lr).__name__}"
        )
    for arg, value in ints.items():
        _check_int(arg, value, _UINT32_MAX)
    _check_int("seed", seed, 2**64 - 1)
    spec = co_pb2.JobSpec(
        name=name,
        model=model_spec,
        mode=mode,
        optimizer=optimizer_config(optimizer),
        compression=compression_config(compression),
        loss=loss_name,
        loss_function=_shipped_ref(loss_fn) if loss_fn else "",
        metric=metric,
        precision=_precision(precision),
        init_from=init_from.job_id if init_from else "",
        seed=seed,
        stragglers=straggler_config(stragglers),
        staleness_aware_lr=staleness_aware_lr,
        **ints,
    )
    _check_objective(spec)
    dry_run.check_finite(data)
    dry_run.dry_run(spec, start.state, data)
    return Payload(spec, data.to_blob(), state.dumps(start.state))


@dataclass(frozen=True)
class InitFrom:
    """Where a fine-tune starts: a finished job's model (``job_id``) or a given state."""

    state: Mapping[str, torch.Tensor]
    job_id: str = ""


def _check_model_class(model: object) -> None:
    if not isinstance(model, type) or not issubclass(model, nn.Module):
        got = type(model).__name__
        hint = f" (pass the class {got}, not an instance)" if isinstance(model, nn.Module) else ""
        raise InvalidJobError(f"model must be an nn.Module subclass, got {got}{hint}")
    if model.__qualname__ != model.__name__:
        raise InvalidJobError(
            f"model {model.__qualname__} is nested inside another object; define it at the top "
            "level of a .py file (or directly under `if __name__ == '__main__':`) so that "
            "workers can rebuild it from the file's source"
        )


def _loss(loss: LossArg) -> tuple[str, Callable[..., Any] | None]:
    """The spec's loss name, and the user's own loss function if it is one."""
    if isinstance(loss, str):
        return loss, None
    if not callable(loss) or not hasattr(loss, "__qualname__"):
        raise InvalidJobError(
            f"loss must be a name such as 'cross_entropy' or a function, got {type(loss).__name__}"
        )
    if loss.__qualname__ != getattr(loss, "__name__", ""):
        raise InvalidJobError(
            f"the loss function {loss.__qualname__} is nested or a lambda; define it with def at "
            "the top level of a .py file so that workers can import it"
        )
    return objective.CUSTOM, loss


def _shipped_ref(fn: Callable[..., Any]) -> str:
    return f"{shipped_module(fn)}:{fn.__name__}"


def _model_spec(
    model: type[nn.Module],
    kwargs_json: str,
    extra: list[Callable[..., Any]],
    code_dir: str | Path | None,
) -> co_pb2.ModelSpec:
    try:
        code = bundle.collect(model, extra=extra, code_dir=code_dir)
    except PSError as e:
        raise InvalidJobError(str(e)) from e
    spec = co_pb2.ModelSpec(class_name=model.__name__, kwargs_json=kwargs_json)
    code.to_proto(spec)
    return spec


def _precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidJobError(
            f"precision {precision!r} is unknown; expected one of {list(PRECISIONS)}"
        )
    return precision


def _check_objective(spec: co_pb2.JobSpec) -> None:
    try:
        objective.check_objective(spec.loss, spec.metric, spec.loss_function)
    except PSError as e:
        raise InvalidJobError(str(e)) from e


def _checked_fields(value: object, arg: str, example: str, message: type[Any]) -> dict[str, Any]:
    """``value`` as a dict of ``message``'s fields; InvalidJobError naming ``arg`` otherwise."""
    if not isinstance(value, Mapping):
        raise InvalidJobError(f"{arg} must be a dict like {example}, got {type(value).__name__}")
    known = [f.name for f in message.DESCRIPTOR.fields]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise InvalidJobError(f"{arg} has unknown field(s) {unknown}; expected some of {known}")
    return dict(value)


def _built(message: type[M], fields: Mapping[str, Any], arg: str) -> M:
    try:
        return message(**fields)
    except (TypeError, ValueError) as e:
        raise InvalidJobError(f"{arg} field has the wrong type: {e}") from e


def optimizer_config(optimizer: Mapping[str, Any] | None) -> common_pb2.OptimizerConfig:
    """A dict such as ``{"name": "adam", "lr": 1e-3}`` as the wire config (fields as in torch)."""
    if optimizer is None:
        optimizer = DEFAULT_OPTIMIZER
    example = str(dict(DEFAULT_OPTIMIZER))
    fields = _checked_fields(optimizer, "optimizer", example, common_pb2.OptimizerConfig)
    return _built(common_pb2.OptimizerConfig, {"name": "sgd", **fields}, "optimizer")


def straggler_config(stragglers: Mapping[str, Any] | None) -> co_pb2.StragglerConfig:
    """A dict such as ``{"factor": 3, "no_mitigation": True}`` as the wire config.

    Ranges are checked by the coordinator (one source of truth); only the shape here.
    """
    if stragglers is None:
        return co_pb2.StragglerConfig()
    fields = _checked_fields(stragglers, "stragglers", '{"factor": 2.0}', co_pb2.StragglerConfig)
    return _built(co_pb2.StragglerConfig, fields, "stragglers")


def compression_config(compression: Mapping[str, Any] | None) -> common_pb2.CompressionConfig:
    """A dict such as ``{"name": "topk", "ratio": 0.01}`` as the wire config.

    ``pull_dtype`` may be "float32", "float16" or "bfloat16". Names and ranges are checked by
    the coordinator (one source of truth); only the shape of the dict is checked here.
    """
    if compression is None:
        return common_pb2.CompressionConfig()
    example = '{"name": "topk", "ratio": 0.01}'
    fields = _checked_fields(compression, "compression", example, common_pb2.CompressionConfig)
    if "pull_dtype" in fields:
        dtype = fields["pull_dtype"]
        if dtype not in _PULL_DTYPES:
            raise InvalidJobError(
                f"compression.pull_dtype {dtype!r} is unknown; expected one of {list(_PULL_DTYPES)}"
            )
        fields["pull_dtype"] = _PULL_DTYPES[dtype]
    return _built(common_pb2.CompressionConfig, fields, "compression")


def _dataset(train: tuple[Any, Any], test: tuple[Any, Any]) -> Dataset:
    for arg, value in (("train", train), ("test", test)):
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise InvalidJobError(
                f"{arg} must be a pair (X, y): X an array, a tuple or a dict of arrays, y an array"
            )
    try:
        return Dataset.from_arrays((train[0], train[1]), (test[0], test[1]))
    except PSError as e:
        raise InvalidJobError(f"bad data: {e}") from e


def _check_int(arg: str, value: object, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobError(f"{arg} must be an integer, got {value!r}")
    if not 0 <= value <= maximum:
        raise InvalidJobError(f"{arg} must be between 0 and {maximum}, got {value}")
