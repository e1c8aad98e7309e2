"""What a shard keeps and checks for a live re-layout, beside the jobs themselves.

:class:`MovedJobs` remembers the jobs that moved away, so that a worker still on the old plan
hears "layout moved" (fetch the plan again) rather than NOT_FOUND, which workers read as "the
job is gone" and abandon it. :func:`adopted_job` builds a job from the state an AdoptJob
carries (:mod:`pscluster.server.adopted_state` reads it), restored with the same code recovery
uses, and checked first, since it comes over the network rather than from this shard's own
disk.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from pscluster.errors import FailedPrecondition, InvalidArgument, LayoutMoved
from pscluster.server.domain import JobConfig
from pscluster.server.durability.image import State, restore
from pscluster.server.shard_job import ShardJob

# Jobs remembered as moved away: enough for every job a shard held in weeks of re-layouts; an
# older one answers NOT_FOUND again (its workers long since have the new plan).
MOVED_KEPT = 1000
# An adopted state's bytes per value it announces, at most: the values, three float32
# copies of them (optimizer moments, a sync step's sum) and room for float64 buffers.
STATE_BYTES_PER_VALUE = 24
STATE_OVERHEAD_BYTES = 64 << 20  # metadata (clocks, push ledger, counters), small tensors


class MovedJobs:
    """Job id -> the layout generation it moved to, the newest ``kept``. Not thread-safe:
    the shard calls it under its lock."""

    def __init__(self, kept: int = MOVED_KEPT) -> None:
        self._kept = kept
        self._moved: OrderedDict[str, int] = OrderedDict()

    def add(self, job_id: str, generation: int) -> None:
        self._moved.pop(job_id, None)
        self._moved[job_id] = generation
        while len(self._moved) > self._kept:
            self._moved.popitem(last=False)

    def get(self, job_id: str) -> int | None:
        return self._moved.get(job_id)

    def forget(self, job_id: str) -> None:
        """The id is in use here again (InitJob, AdoptJob) or was dropped."""
        self._moved.pop(job_id, None)

    def check(self, job_id: str) -> None:
        """LayoutMoved if the job moved away from this shard."""
        generation = self._moved.get(job_id)
        if generation is not None:
            raise LayoutMoved(job_id, generation, f"moved to layout generation {generation}")


def check_newer(job_id: str, generation: int, here: int | None, what: str) -> None:
    """An AdoptJob (or MOVED) must name a layout generation newer than the job's ``here``
    (None: the job is not here)."""
    if here is not None and generation <= here:
        raise FailedPrecondition(
            f"job {job_id} is at layout generation {here} on this shard; {what} must name a "
            f"newer one, not {generation}"
        )


def adopted_job(job_id: str, generation: int, state: State) -> ShardJob:
    """The job an AdoptJob's state (read by :mod:`pscluster.server.adopted_state`)
    describes: InvalidArgument if it is not a state of job ``job_id`` (its config unreadable,
    or its tensors not the lengths its config says), FailedPrecondition if its config's
    layout generation is not ``generation``."""
    tensors, meta = state
    try:
        config = JobConfig.from_json(meta["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"the state adopted for job {job_id} cannot be read: {exc}") from None
    if config.job_id != job_id:
        raise InvalidArgument(f"the state adopted for job {job_id} is of job {config.job_id}")
    if config.layout_generation != generation:
        raise FailedPrecondition(
            f"the state adopted for job {job_id} is of layout generation "
            f"{config.layout_generation}; the AdoptJob header names {generation}"
        )
    _check_lengths(config, tensors, meta)
    try:
        return restore(tensors, meta)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise InvalidArgument(
            f"the state adopted for job {job_id} does not describe a job: "
            f"{type(exc).__name__}: {exc}"
        ) from None


def _check_lengths(
    config: JobConfig, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """The dense tensors against the config: a state cut for another range would otherwise
    be broadcast into this one, or fail only at the first push."""
    if meta.get("delta") or meta.get("delta_of") is not None:
        raise InvalidArgument(f"the state adopted for job {config.job_id} is a delta, not whole")
    expected = {"values": ((config.length,), torch.float32)}
    if config.buffer_length:
        expected["buffers"] = ((config.buffer_length,), torch.float64)
    for name, (shape, dtype) in expected.items():
        tensor = tensors.get(name)
        if tensor is None or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            found = "none" if tensor is None else f"{tuple(tensor.shape)} {tensor.dtype}"
            raise InvalidArgument(
                f"the state adopted for job {config.job_id} has {name} {found}; its config "
                f"says {shape} {dtype}"
            )
    for name, tensor in tensors.items():
        if name.startswith("opt.") and tensor.dim() and tuple(tensor.shape) != (config.length,):
            raise InvalidArgument(
                f"the state adopted for job {config.job_id} has {name} of shape "
                f"{tuple(tensor.shape)}; its range has {config.length} values"
            )
