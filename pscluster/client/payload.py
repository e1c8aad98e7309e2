"""Everything ``Client.submit`` sends, built and checked before the first byte leaves.

A mistake found here (a float64 model, X and y of different lengths, labels the model cannot
output, NaN in the data, a model that does not run on the data) costs the user nothing; the
same mistake found by a worker costs a failed job. The model is built, trained and evaluated
once on a few rows exactly as a worker will (:mod:`pscluster.client.dry_run`). Checks that
need the cluster's knowledge (mode and optimizer names, shard count) are left to the
coordinator, so there is one source of truth for them; loss and metric rules live in
:mod:`pscluster.model.objective`, which both sides use. The options' own checks and their
wire spec are :mod:`pscluster.client.submit_spec`'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pscluster.client import data_source, dry_run, initial
from pscluster.client.data_source import DataArg
from pscluster.client.errors import InvalidJobError
from pscluster.client.submit_options import LossArg, SubmitOptions
from pscluster.client.submit_spec import (
    PRECISIONS,
    check_consistency,
    check_int,
    check_objective,
    job_spec,
    sparse_options,
)
from pscluster.client.wire_configs import (
    DEFAULT_OPTIMIZER,
    compression_config,
    optimizer_config,
    straggler_config,
)
from pscluster.data.dataset import Dataset
from pscluster.errors import PSError
from pscluster.model import bundle, objective, rebuild, state
from pscluster.transport import wire
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2

# Where these lived before the options, their wire configs and their spec got modules of
# their own.
__all__ = [
    "DEFAULT_OPTIMIZER",
    "PRECISIONS",
    "InitFrom",
    "LossArg",
    "Payload",
    "build_payload",
    "compression_config",
    "optimizer_config",
    "payload_for",
    "straggler_config",
]


@dataclass(frozen=True)
class Payload:
    spec: co_pb2.JobSpec
    dataset: bytes  # the uploaded arrays; b"" when the workers read a data source
    initial_state: bytes

    def chunks(self, chunk_bytes: int) -> Iterator[co_pb2.SubmitJobChunk]:
        """The SubmitJob stream: the spec first, then each blob in chunk-sized pieces, then the
        end message that says the upload is whole."""
        yield co_pb2.SubmitJobChunk(spec=self.spec)
        for name, blob in (("dataset", self.dataset), ("initial_state", self.initial_state)):
            if name == "dataset" and self.spec.data.source:
                continue  # the workers read it from the source
            for piece in wire.chunks(memoryview(blob), chunk_bytes):
                yield co_pb2.SubmitJobChunk(blob=common_pb2.BlobChunk(blob=name, data=piece))
        total = len(self.dataset) + len(self.initial_state)
        yield co_pb2.SubmitJobChunk(end=co_pb2.SubmitEnd(blob_bytes=total))


def build_payload(
    model: type[nn.Module],
    train: tuple[Any, Any] | None,
    test: tuple[Any, Any] | None,
    *,
    init_from: InitFrom | None = None,
    data: DataArg | None = None,
    **options: Any,
) -> Payload:
    """:func:`payload_for` with the options as ``Client.submit``'s keywords (tests and tools
    build payloads without a cluster)."""
    return payload_for(model, (train, test, data), SubmitOptions(**options), init_from)


def payload_for(
    model: type[nn.Module],
    data: tuple[tuple[Any, Any] | None, tuple[Any, Any] | None, DataArg | None],
    options: SubmitOptions,
    init_from: InitFrom | None = None,
) -> Payload:
    """Check what ``Client.submit`` was given and turn it into the wire spec and blobs, after
    a dry run of the model on a few rows (:mod:`pscluster.client.dry_run`). ``data`` is
    (train, test, source): the arrays to upload, or the source the workers read.

    Raises InvalidJobError naming the argument that is wrong.
    """
    _check_model_class(model)
    check_int("seed", options.seed, 2**64 - 1)  # before torch.manual_seed sees it
    check_consistency(options)  # before the model is built and dry-run
    source = _source(*data, options)
    kwargs = dict(options.model_kwargs or {})
    kwargs_json = _kwargs_json(kwargs)
    loss_name, loss_fn = _loss(options.loss)
    extra = [f for f in (loss_fn, source.function if source else None) if f is not None]
    model_spec = _model_spec(model, kwargs_json, extra, options.code_dir)
    start = initial.build(model, kwargs, options.seed, init_from.state if init_from else None)
    params, buffers = rebuild.describe(start.model)
    model_spec.params.extend(params)
    model_spec.buffers.extend(buffers)
    model_spec.tables.extend(t.to_proto() for t in start.tables)
    init_job = init_from.job_id if init_from else ""
    spec = job_spec(options, model_spec, loss_name, loss_fn, init_job)
    sparse_options(spec, options)
    check_objective(spec)
    if source is None:
        arrays: Dataset | None = _dataset(data[0], data[1])
        sample = arrays
    else:
        spec.data.CopyFrom(source.to_proto())
        arrays, sample = None, data_source.sample_here(spec)
    if sample is not None:
        dry_run.check_finite(sample)
        dry_run.dry_run(spec, start.state, sample)
    blob = arrays.to_blob(seed=spec.seed) if arrays else b""
    return Payload(spec, blob, state.dumps(start.state))


def _source(
    train: tuple[Any, Any] | None,
    test: tuple[Any, Any] | None,
    data: DataArg | None,
    options: SubmitOptions,
) -> data_source.ChosenSource | None:
    """The data source ``data`` names (None: upload ``train`` and ``test``)."""
    if data is None:
        if train is None or test is None:
            raise InvalidJobError(
                "pass the data: train=(X, y) and test=(X_test, y_test) to upload arrays, or "
                "data=make_dataset (or 'npy', 'parquet') for data the workers read"
            )
        return None
    if train is not None or test is not None:
        raise InvalidJobError("pass either train and test (uploaded) or data (a source), not both")
    return data_source.choose(
        data, options.data_args, options.loader_workers, options.prefetch_batches
    )


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


def _kwargs_json(kwargs: dict[str, Any]) -> str:
    try:
        return json.dumps(kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidJobError(f"model_kwargs must be JSON-serialisable: {e}") from e


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


def _dataset(train: tuple[Any, Any] | None, test: tuple[Any, Any] | None) -> Dataset:
    for arg, value in (("train", train), ("test", test)):
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise InvalidJobError(
                f"{arg} must be a pair (X, y): X an array, a tuple or a dict of arrays, y an array"
            )
    assert train is not None and test is not None  # checked just above
    try:
        return Dataset.from_arrays((train[0], train[1]), (test[0], test[1]))
    except PSError as e:
        raise InvalidJobError(f"bad data: {e}") from e
