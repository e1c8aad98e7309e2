"""The dict-shaped options of a submission (optimizer, compression, stragglers) as the wire's
config messages.

Users write these as plain dicts; only their shape is checked here (a dict, known field names,
values of the field's type), so that a typo fails at submit with the list of fields expected.
Names and ranges are the coordinator's to check: one source of truth for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pscluster.client.errors import InvalidJobError
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2

M = TypeVar("M")

DEFAULT_OPTIMIZER: Mapping[str, Any] = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
_PULL_DTYPES = {
    "float32": common_pb2.DTYPE_FLOAT32,
    "float16": common_pb2.DTYPE_FLOAT16,
    "bfloat16": common_pb2.DTYPE_BFLOAT16,
}


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
