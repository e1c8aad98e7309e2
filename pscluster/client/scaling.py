"""What ``Client.scale_shards`` reports: the shards in use, and each running job's move."""

from __future__ import annotations

from dataclasses import dataclass

from pscluster.v1 import coordinator_pb2 as co_pb2


@dataclass(frozen=True)
class JobMove:
    """One running job's move onto the shards in use (see pscluster.coordinator.moves)."""

    job_id: str
    moved: bool  # False: it stayed where it was, for ``reason``
    reason: str
    layout_generation: int
    shard_ids: tuple[str, ...]  # where its ranges are now, in plan order
    quiesce_seconds: float  # until every worker was between two steps
    pause_seconds: float  # then, until its pulls went on at the new shards
    state_bytes: int  # sent: the skeletons, and the ranges and table rows that changed shard
    # Where the pause went: the old states read, cut again, and taken by the new shards.
    export_seconds: float = 0.0
    recut_seconds: float = 0.0
    adopt_seconds: float = 0.0

    @classmethod
    def from_proto(cls, m: co_pb2.JobMove) -> JobMove:
        return cls(
            m.job_id,
            m.moved,
            m.reason,
            m.layout_generation,
            tuple(m.shard_ids),
            m.quiesce_seconds,
            m.pause_seconds,
            m.state_bytes,
            m.export_seconds,
            m.recut_seconds,
            m.adopt_seconds,
        )


@dataclass(frozen=True)
class ShardScaling:
    shard_ids: tuple[str, ...]
    jobs: tuple[JobMove, ...]

    @classmethod
    def from_proto(cls, reply: co_pb2.ScaleShardsReply) -> ShardScaling:
        return cls(tuple(reply.shard_ids), tuple(JobMove.from_proto(m) for m in reply.jobs))
