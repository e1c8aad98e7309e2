"""The one client of parameter-server shards: workers, the coordinator, tests and benches.

:class:`ShardClient` makes every call (InitJob, SetMembers, Pull, Push, GetJobStats, DropJob,
health, and a live re-layout's HoldJob, ExportJob and AdoptJob), to all of a job's shards at
once, each with a deadline, tensors on the hand-framed fast path; :class:`JobShards` is a
worker's view of one job. Every failure is a :class:`ShardError` naming the shard and the
status it answered (a :class:`LayoutMovedError` when the job moved between shards).
"""

from pscluster.shard_client.client import ShardClient, ShardInit
from pscluster.shard_client.errors import LayoutMovedError, ShardError
from pscluster.shard_client.job import JobShards
from pscluster.shard_client.ranges import PushExtras, ShardRange, Snapshot, vector_sizes

__all__ = [
    "JobShards",
    "LayoutMovedError",
    "PushExtras",
    "ShardClient",
    "ShardError",
    "ShardInit",
    "ShardRange",
    "Snapshot",
    "vector_sizes",
]
