"""Everything ``Client.submit`` sends, built and checked before the first byte leaves.

A mistake found here (a float64 model, X and y of different lengths, an unknown optimizer
field) costs the user nothing; the same mistake found by a worker costs a failed job. Checks
that need the cluster's knowledge (mode, optimizer and loss names, shard count) are left to
the coordinator, so there is one source of truth for them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from pscluster.client.errors import InvalidJobError
from pscluster.data.dataset import Dataset
from pscluster.model import source, state
from pscluster.model.layout import ParamLayout
from pscluster.transport import wire
from pscluster.transport.errors import PSError
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2

M = TypeVar("M")

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
    loss: str,
    partitions: int,
    shards: int,
    seed: int,
    name: str,
    compression: Mapping[str, Any] | None = None,
    backup_workers: int = 0,
    stragglers: Mapping[str, Any] | None = None,
    staleness_aware_lr: bool = False,
    local_steps: int = 0,
) -> Payload:
    """Check the arguments of ``Client.submit`` and turn them into the wire spec and blobs.

    Raises InvalidJobError naming the argument that is wrong.
    """
    if not isinstance(model, type) or not issubclass(model, nn.Module):
        got = type(model).__name__
        hint = f" (pass the class {got}, not an instance)" if isinstance(model, nn.Module) else ""
        raise InvalidJobError(f"model must be an nn.Module subclass, got {got}{hint}")
    if model.__qualname__ != model.__name__:
        raise InvalidJobError(
            f"model {model.__qualname__} is nested inside another object; define it at the top "
            "level of a .py file so that workers can rebuild it from the file's source"
        )
    kwargs = dict(model_kwargs or {})
    try:
        kwargs_json = json.dumps(kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidJobError(f"model_kwargs must be JSON-serialisable: {e}") from e
    try:
        model_source = source.module_source(model)
    except PSError as e:
        raise InvalidJobError(str(e)) from e

    initial, layout = _initial_state(model, kwargs, seed)
    dataset = _dataset(train, test)
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
        model=co_pb2.ModelSpec(
            source=model_source,
            class_name=model.__name__,
            kwargs_json=kwargs_json,
            params=[co_pb2.ParamInfo(name=s.name, shape=s.shape) for s in layout.slots],
        ),
        mode=mode,
        optimizer=optimizer_config(optimizer),
        compression=compression_config(compression),
        loss=loss,
        seed=seed,
        staleness=ints["staleness"],
        epochs=ints["epochs"],
        batch_size=ints["batch_size"],
        partitions=ints["partitions"],
        shards=ints["shards"],
        backup_workers=ints["backup_workers"],
        stragglers=straggler_config(stragglers),
        staleness_aware_lr=staleness_aware_lr,
        local_steps=ints["local_steps"],
    )
    return Payload(spec, dataset, initial)


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


def _initial_state(
    model: type[nn.Module], kwargs: dict[str, Any], seed: int
) -> tuple[bytes, ParamLayout]:
    # Seeded so that resubmitting the same job starts from the same parameters; fork_rng keeps
    # the caller's own random stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            instance = model(**kwargs)
        except Exception as e:  # the user's constructor: any error is theirs to see
            raise InvalidJobError(
                f"could not build {model.__name__}(**{kwargs!r}): {type(e).__name__}: {e}"
            ) from e
    params = list(instance.named_parameters())
    if not params:
        raise InvalidJobError(f"{model.__name__} has no parameters to train")
    wrong = [f"{n} ({p.dtype})" for n, p in params if p.dtype != torch.float32]
    if wrong:
        raise InvalidJobError(
            f"{model.__name__}'s parameters must be float32 (the servers keep float32 vectors); "
            f"these are not: {', '.join(wrong)}. Remove .double()/.half() from the model"
        )
    return state.dumps(instance.state_dict()), ParamLayout.of_module(instance)


def _dataset(train: tuple[Any, Any], test: tuple[Any, Any]) -> bytes:
    for arg, value in (("train", train), ("test", test)):
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise InvalidJobError(f"{arg} must be a pair (X, y) of arrays or tensors")
    try:
        return Dataset.from_arrays((train[0], train[1]), (test[0], test[1])).to_blob()
    except PSError as e:
        raise InvalidJobError(f"bad data: {e}") from e


def _check_int(arg: str, value: object, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobError(f"{arg} must be an integer, got {value!r}")
    if not 0 <= value <= maximum:
        raise InvalidJobError(f"{arg} must be between 0 and {maximum}, got {value}")
