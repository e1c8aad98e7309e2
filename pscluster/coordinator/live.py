"""A running job read live from its shards: its parameters as a model, its counters.

Completion saves exactly what :func:`model` returns, so a model fetched mid-run and the saved
one are built by the same code.
"""

from __future__ import annotations

import torch

from pscluster.coordinator import blobs
from pscluster.coordinator import store as st
from pscluster.coordinator.model_spec import buffer_layout_of, buffer_ranges, layout_of
from pscluster.coordinator.runtime import Runtime
from pscluster.coordinator.stats import aggregate
from pscluster.coordinator.tables import read_tables
from pscluster.model import state
from pscluster.shard_client import ShardError, ShardRange
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2


def model(rt: Runtime, job: st.JobRecord) -> dict[str, torch.Tensor]:
    """The current state_dict: what a user loads with ``model.load_state_dict``."""
    return model_and_versions(rt, job)[0]


def model_and_versions(
    rt: Runtime, job: st.JobRecord
) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """The current parameters and buffers from the shards, with the initial state's other
    entries (frozen parameters, boolean buffers) beside them, and each shard's version."""
    spec = co_pb2.JobSpec.FromString(job.spec)
    layout, buffers = layout_of(spec), buffer_layout_of(spec)
    ranges = [
        ShardRange(p.address, p.start, p.length, b.start, b.length)
        for p, b in zip(job.shards, buffer_ranges(spec, len(job.shards)), strict=True)
    ]
    live = rt.shards.pull_all(job.job_id, ranges)  # every shard at once, received in place
    initial = state.loads(rt.blobs.read(job.job_id, blobs.INITIAL_STATE), "initial_state")
    initial.update(layout.unflatten(live.values))
    initial.update(buffers.unflatten(live.buffers))
    if spec.model.tables:  # read after the dense values: a running job's rows move meanwhile
        addresses = [p.address for p in job.shards]
        initial.update(read_tables(rt.shards, job.job_id, spec, addresses))
    return initial, tuple(live.versions)


def stats(rt: Runtime, job: st.JobRecord) -> co_pb2.JobMetrics:
    """Every shard's counters, summed; ShardError if one of them cannot answer."""
    found: list[common_pb2.ShardJobStats] = []
    for s in rt.shards.job_stats([p.address for p in job.shards], job.job_id):
        if isinstance(s, ShardError):
            raise s
        found.append(s)
    return aggregate(job.job_id, found)
