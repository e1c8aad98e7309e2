"""Protos to the shard's plain objects and back: the servicer's decode and encode steps."""

from __future__ import annotations

from dataclasses import asdict

import torch

from pscluster.compression import parse_settings
from pscluster.errors import InvalidArgument
from pscluster.model.optimizer import parse_optimizer
from pscluster.model.sparse_optimizer import parse_sparse_optimizer
from pscluster.server.consistency import TrialStep
from pscluster.server.domain import (
    JobConfig,
    JobStats,
    Outcome,
    PullSnapshot,
    PushHeader,
    PushResult,
)
from pscluster.server.layout_gate import HoldAction, HoldStatus
from pscluster.server.tables.rows import F32, RowBlockInfo
from pscluster.server.tables.spec import table_spec
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

_OUTCOMES = {
    Outcome.UNKNOWN: ps_pb2.PUSH_OUTCOME_UNSPECIFIED,
    Outcome.APPLIED: ps_pb2.PUSH_OUTCOME_APPLIED,
    Outcome.BUFFERED: ps_pb2.PUSH_OUTCOME_BUFFERED,
    Outcome.STALE: ps_pb2.PUSH_OUTCOME_STALE,
    Outcome.LATE: ps_pb2.PUSH_OUTCOME_LATE,
    Outcome.ALREADY_PUSHED: ps_pb2.PUSH_OUTCOME_ALREADY_PUSHED,
}

_HOLD_ACTIONS: dict[int, HoldAction] = {
    ps_pb2.HOLD_ACTION_HOLD: HoldAction.HOLD,
    ps_pb2.HOLD_ACTION_RELEASE: HoldAction.RELEASE,
    ps_pb2.HOLD_ACTION_MOVED: HoldAction.MOVED,
    ps_pb2.HOLD_ACTION_SETTLED: HoldAction.SETTLED,
}


def job_config(config: ps_pb2.ShardJobConfig) -> JobConfig:
    """Decode (and validate the optimizer of) a job config; the shard checks the mode and the
    buffers. Its ``initial_buffers`` are the job's first state, not config: the servicer hands
    them to the shard beside it."""
    return JobConfig(
        job_id=config.job_id,
        start=config.start,
        length=config.length,
        mode=config.mode,
        staleness=config.staleness,
        optimizer=parse_optimizer(config.optimizer),
        codec=parse_settings(config.compression).name,
        backup_workers=config.backup_workers,
        staleness_aware_lr=config.staleness_aware_lr,
        buffer_start=config.buffer_start,
        buffer_length=config.buffer_length,
        counters=tuple((span.start, span.length) for span in config.counters),
        hold_zeros=tuple((span.start, span.length) for span in config.hold_zeros),
        tables=tuple(table_spec(t) for t in config.tables),
        sparse_optimizer=(
            parse_sparse_optimizer(config.sparse_optimizer) if config.tables else None
        ),
        layout_generation=config.layout_generation,
    )


def push_header(header: ps_pb2.PushHeader) -> PushHeader:
    return PushHeader(
        job_id=header.job_id,
        worker_id=header.worker_id,
        seq=header.seq,
        base_version=header.base_version,
        base_clock=header.base_clock,
        length=header.length,
        dtype=header.dtype,
        batch_size=header.batch_size,
        codec=header.codec or "none",
        payload_bytes=header.payload_bytes,
        grad_scale=header.grad_scale,
        buffer_delta=header.buffer_delta,
        rows=tuple(RowBlockInfo(b.table, b.count, b.dtype or F32) for b in header.rows),
        bucket_bytes=header.bucket_bytes,
        local_steps=header.local_steps,
    )


def push_reply(result: PushResult) -> ps_pb2.PushReply:
    return ps_pb2.PushReply(
        outcome=_OUTCOMES[result.outcome],
        version=result.version,
        clock=result.clock,
        duplicate=result.duplicate,
        reason=result.reason,
        next_version=result.next_version,
    )


def pull_header(snapshot: PullSnapshot) -> ps_pb2.PullChunk:
    return ps_pb2.PullChunk(
        header=ps_pb2.PullHeader(
            version=snapshot.version,
            clock=snapshot.clock,
            start=snapshot.start,
            length=snapshot.length,
            # An unspecified request dtype is answered as what it means: float32.
            dtype=common_pb2.DType.ValueType(snapshot.dtype or common_pb2.DTYPE_FLOAT32),
            waited_seconds=snapshot.waited_seconds,
            buffers=snapshot.buffers,
            revision=snapshot.revision,
            local_steps=snapshot.local_steps,
        )
    )


def job_stats(stats: JobStats, shard: str) -> common_pb2.ShardJobStats:
    return common_pb2.ShardJobStats(shard=shard, **asdict(stats))


def lookup_ids(data: bytes) -> torch.Tensor:
    """A Lookup's ids (int64 little-endian bytes); InvalidArgument if they are not whole."""
    if len(data) % 8:
        raise InvalidArgument(f"ids are {len(data)} bytes, not a whole number of int64 values")
    if not data:
        return torch.zeros(0, dtype=torch.int64)
    return torch.frombuffer(bytearray(data), dtype=torch.int64)


def lookup_header(rows: torch.Tensor, dtype: int, version: int) -> ps_pb2.PullChunk:
    return ps_pb2.PullChunk(
        header=ps_pb2.PullHeader(
            version=version,
            rows=rows.shape[0],
            dim=rows.shape[1] if rows.dim() == 2 else 0,
            length=rows.numel(),
            dtype=common_pb2.DType.ValueType(dtype),
        )
    )


def hold_action(action: int) -> HoldAction:
    """A HoldJob's action; InvalidArgument for an unspecified or unknown one."""
    found = _HOLD_ACTIONS.get(action)
    if found is None:
        raise InvalidArgument(f"HoldJob action {action} is not HOLD, RELEASE, MOVED or SETTLED")
    return found


def hold_reply(status: HoldStatus) -> ps_pb2.HoldJobReply:
    return ps_pb2.HoldJobReply(
        members=status.members,
        waiting=status.waiting,
        version=status.version,
        layout_generation=status.layout_generation,
    )


# The proto's Trial for each step: the coordinator sends it, the shard reads it back.
TRIAL_PROTO: dict[TrialStep, ps_pb2.Trial.ValueType] = {
    TrialStep.NONE: ps_pb2.TRIAL_UNSPECIFIED,
    TrialStep.BEGIN: ps_pb2.TRIAL_BEGIN,
    TrialStep.UNDO: ps_pb2.TRIAL_UNDO,
    TrialStep.UNDO_KEEP: ps_pb2.TRIAL_UNDO_KEEP,
    TrialStep.END: ps_pb2.TRIAL_END,
}
_TRIAL_STEPS: dict[int, TrialStep] = {proto: step for step, proto in TRIAL_PROTO.items()}


def trial_step(trial: int) -> TrialStep:
    """A SetConsistencyRequest's trial; InvalidArgument for a value this shard does not know."""
    try:
        return _TRIAL_STEPS[trial]
    except KeyError:
        raise InvalidArgument(f"unknown trial step {trial}: expected 0-3") from None
