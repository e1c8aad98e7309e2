"""A submission's options as the wire's ``JobSpec``, each option checked on the way.

:mod:`pscluster.client.payload` builds everything ``Client.submit`` sends (the model's code
and initial state, the data, the dry run); this module is the options' part of it: the counts
that must fit a uint32, the precision, the sparse optimizer that goes with hosted tables, and
the consistency and loss rules the coordinator applies too (checked here first, with the
coordinator's own code, so that a wrong combination fails before the model is built). Apart
from the payload because none of it needs the model or the data, only the options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pscluster.client.errors import InvalidJobError
from pscluster.client.submit_options import SubmitOptions
from pscluster.client.wire_configs import compression_config, optimizer_config, straggler_config
from pscluster.errors import PSError
from pscluster.model import objective
from pscluster.model.bundle import shipped_module
from pscluster.model.sparse_optimizer import sparse_optimizer_config
from pscluster.server.consistency import validate_job_consistency
from pscluster.v1 import coordinator_pb2 as co_pb2

PRECISIONS = ("fp32", "bf16", "fp16")
_UINT32_MAX = 2**32 - 1
# The options that are uint32 counts on the wire, in the order their errors are reported.
_COUNTS = (
    "staleness",
    "epochs",
    "batch_size",
    "partitions",
    "shards",
    "backup_workers",
    "local_steps",
)


def job_spec(
    options: SubmitOptions,
    model_spec: co_pb2.ModelSpec,
    loss_name: str,
    loss_fn: Callable[..., Any] | None,
    init_from_job: str,
) -> co_pb2.JobSpec:
    """The wire spec of the options, each checked (InvalidJobError naming the one wrong)."""
    counts = {name: getattr(options, name) for name in _COUNTS}
    if not isinstance(options.staleness_aware_lr, bool):
        raise InvalidJobError(
            "staleness_aware_lr must be True or False, got "
            f"{type(options.staleness_aware_lr).__name__}"
        )
    for arg, value in counts.items():
        check_int(arg, value, _UINT32_MAX)
    return co_pb2.JobSpec(
        name=options.name,
        model=model_spec,
        mode=options.mode,
        optimizer=optimizer_config(options.optimizer),
        compression=compression_config(options.compression),
        loss=loss_name,
        loss_function=_shipped_ref(loss_fn) if loss_fn else "",
        metric=options.metric,
        precision=_precision(options.precision),
        init_from=init_from_job,
        seed=options.seed,
        stragglers=straggler_config(options.stragglers),
        staleness_aware_lr=options.staleness_aware_lr,
        **counts,
    )


def sparse_options(spec: co_pb2.JobSpec, options: SubmitOptions) -> None:
    """The sparse optimizer goes with hosted tables, and only with them."""
    names = [t.name for t in spec.model.tables]
    if not names:
        if options.sparse_optimizer is not None:
            raise InvalidJobError(
                "sparse_optimizer is set but the model has no sparse table: build its "
                "embeddings with nn.Embedding(..., sparse=True) to host them on the shards"
            )
        return
    if options.sparse_optimizer is None:
        raise InvalidJobError(
            f"the model's tables {names} live on the shards (sparse=True): pass "
            "sparse_optimizer, e.g. {'name': 'adagrad', 'lr': 0.05}"
        )
    if options.local_steps > 1:
        raise InvalidJobError(
            "local_steps cannot be used with tables on the shards: each step looks up the "
            "rows it touches, so there is no local copy to take steps on"
        )
    try:
        spec.sparse_optimizer.CopyFrom(sparse_optimizer_config(dict(options.sparse_optimizer)))
    except PSError as e:
        raise InvalidJobError(str(e)) from e


def check_consistency(options: SubmitOptions) -> None:
    """The coordinator's own rules for mode, staleness, backup_workers and local_steps (mode
    "auto" included), checked here so that a wrong combination fails before any work is done."""
    try:
        validate_job_consistency(
            options.mode, options.staleness, options.backup_workers, options.local_steps
        )
    except PSError as e:
        raise InvalidJobError(str(e)) from e


def check_objective(spec: co_pb2.JobSpec) -> None:
    try:
        objective.check_objective(spec.loss, spec.metric, spec.loss_function)
    except PSError as e:
        raise InvalidJobError(str(e)) from e


def _precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidJobError(
            f"precision {precision!r} is unknown; expected one of {list(PRECISIONS)}"
        )
    return precision


def _shipped_ref(fn: Callable[..., Any]) -> str:
    return f"{shipped_module(fn)}:{fn.__name__}"


def check_int(arg: str, value: object, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobError(f"{arg} must be an integer, got {value!r}")
    if not 0 <= value <= maximum:
        raise InvalidJobError(f"{arg} must be between 0 and {maximum}, got {value}")
