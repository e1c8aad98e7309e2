"""The job the worker users train on, created directly on the shards for the load test.

In a real cluster the coordinator creates a job's slices (InitJob) when the job is submitted
and names its members (SetMembers) as workers lease its tasks. A load test needs a job whose
members are the locust users, which the coordinator cannot know about, so this module does
the coordinator's two calls itself, through the shard client the coordinator uses
(:class:`pscluster.shard_client.ShardClient`) and the coordinator's partitioner:
the shards see exactly the calls and the slices a submitted job would give them. The job is
async (pushes applied as they come, as most workers run), SGD with a tiny learning rate so
the parameters stay finite however long the soak, and is dropped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pscluster.config import Settings
from pscluster.model.partition import BalancedRanges
from pscluster.shard_client import ShardClient, ShardRange
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

FLOAT32_BYTES = 4
MAX_MODEL_MB = 1024


def values_for_mb(model_mb: float) -> int:
    """How many float32 parameters a model of ``model_mb`` MiB has."""
    if not 0 < model_mb <= MAX_MODEL_MB:
        raise ValueError(f"model size {model_mb} MB is out of range; expected (0, {MAX_MODEL_MB}]")
    return max(1, int(model_mb * (1 << 20)) // FLOAT32_BYTES)


def member_ids(run_id: str, count: int) -> list[str]:
    """The worker ids of the locust users of one run, in the order users claim them."""
    return [f"locust-{run_id}-{i}" for i in range(count)]


@dataclass
class LoadJob:
    """A job on the shards: its id, its shard ranges (as a worker's JobShards wants them)."""

    job_id: str
    size: int
    codec: str
    ranges: list[ShardRange]
    members: list[str]


def create_job(
    settings: Settings, shards: Sequence[str], model_mb: float, codec: str, members: int
) -> LoadJob:
    """InitJob on every shard (random initial values) and SetMembers with ``members`` ids."""
    if not shards:
        raise ValueError("no shard addresses; pass --shards host:port,... or a coordinator")
    if members < 1:
        raise ValueError(f"members must be at least 1, got {members}")
    run_id = uuid.uuid4().hex[:8]
    job_id = f"locust-{run_id}"
    size = values_for_mb(model_mb)
    parts = BalancedRanges().split(size, len(shards))
    flat = torch.randn(size, generator=torch.Generator().manual_seed(0)) * 0.01
    clients = ShardClient(settings)
    ranges = [ShardRange(a, p.start, p.length) for a, p in zip(shards, parts, strict=True)]
    inits = [
        (
            r.address,
            ps_pb2.ShardJobConfig(
                job_id=job_id,
                start=r.start,
                length=r.length,
                mode="async",
                optimizer=common_pb2.OptimizerConfig(name="sgd", lr=1e-6),
                compression=common_pb2.CompressionConfig(name=codec),
            ),
            flat[r.start : r.start + r.length],
        )
        for r in ranges
    ]
    try:
        clients.init_job(inits)  # every shard at once
        ids = member_ids(run_id, members)
        clients.set_members(list(shards), job_id, ids, generation=1)
    except BaseException:
        clients.drop_job(list(shards), job_id)
        clients.close()
        raise
    clients.close()
    return LoadJob(job_id, size, codec, ranges, ids)


def drop_job(settings: Settings, job: LoadJob) -> list[str]:
    """Free the job on every shard; the problems, if any shard could not."""
    clients = ShardClient(settings)
    try:
        return [str(e) for e in clients.drop_job([r.address for r in job.ranges], job.job_id)]
    finally:
        clients.close()
