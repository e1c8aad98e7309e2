"""A job's shard counters summed over its shards: one picture of its parameter traffic."""

from __future__ import annotations

from collections.abc import Sequence

from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2


def aggregate(job_id: str, stats: Sequence[common_pb2.ShardJobStats]) -> co_pb2.JobMetrics:
    """Counters and histograms summed; per-shard detail (clocks, maxima) kept in ``shards``."""
    m = co_pb2.JobMetrics(job_id=job_id)
    for s in stats:
        m.pushes_applied += s.pushes_applied
        m.bytes_pushed += s.bytes_pushed
        m.bytes_pushed_raw += s.bytes_pushed_raw
        m.bytes_pulled += s.bytes_pulled
        m.pulls += s.pulls
        for reason, n in s.pushes_rejected.items():
            m.pushes_rejected[reason] += n
        for lag, n in s.staleness.items():
            m.staleness[lag] += n
        for lag, n in s.clock_staleness.items():
            m.clock_staleness[lag] += n
        m.shards.append(s)
    return m


def shard_part(metrics: co_pb2.JobMetrics) -> bytes:
    """The shard-derived part of a job's metrics, as persisted once the shards drop the job."""
    kept = co_pb2.JobMetrics()
    kept.CopyFrom(metrics)
    del kept.steps[:]
    del kept.epochs[:]
    kept.pushes_by_worker.clear()
    return kept.SerializeToString()
