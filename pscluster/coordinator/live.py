"""A running job read live from its shards: its parameters as a model, its counters.

Completion saves exactly what :func:`model_entries` describes, so a model fetched mid-run and
the saved one are built by the same code. The model is a stream of safetensors entries: the
dense state in memory (it is small), each table read from the shards a block of rows at a
time as the file is written or sent, so a 3 GB table is never held whole.
"""

from __future__ import annotations

from pscluster.coordinator import blobs
from pscluster.coordinator import store as st
from pscluster.coordinator.model_spec import buffer_layout_of, buffer_ranges, layout_of
from pscluster.coordinator.runtime import Runtime
from pscluster.coordinator.stats import aggregate
from pscluster.coordinator.tables import table_entries
from pscluster.model import state
from pscluster.model.safetensors_stream import Entry
from pscluster.shard_client import ShardError, ShardRange
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2


def model_entries(rt: Runtime, job: st.JobRecord) -> tuple[list[Entry], tuple[int, ...]]:
    """The current state_dict as safetensors entries (what a user loads with
    ``model.load_state_dict``), and each shard's version: the parameters and buffers from the
    shards, the initial state's other entries (frozen parameters, boolean buffers) beside
    them, and the tables, read block by block when the entries are streamed."""
    spec = co_pb2.JobSpec.FromString(job.spec)
    layout, buffers = layout_of(spec), buffer_layout_of(spec)
    ranges = [
        ShardRange(p.address, p.start, p.length, b.start, b.length)
        for p, b in zip(job.shards, buffer_ranges(spec, len(job.shards)), strict=True)
    ]
    live = rt.shards.pull_all(job.job_id, ranges)  # every shard at once, received in place
    initial = state.loads(rt.blobs.read(job.job_id, blobs.INITIAL_STATE), "initial_state")
    for table in spec.model.tables:  # given initial rows: the shards hold the trained ones
        initial.pop(table.name, None)
    initial.update(layout.unflatten(live.values))
    initial.update(buffers.unflatten(live.buffers))
    entries = [Entry.of(name, tensor) for name, tensor in initial.items()]
    # Read after the dense values: a running job's rows move meanwhile.
    addresses = [p.address for p in job.shards]
    entries += table_entries(rt.shards, job.job_id, spec, addresses)
    return entries, tuple(live.versions)


def stats(rt: Runtime, job: st.JobRecord) -> co_pb2.JobMetrics:
    """Every shard's counters, summed; ShardError if one of them cannot answer."""
    found: list[common_pb2.ShardJobStats] = []
    for s in rt.shards.job_stats([p.address for p in job.shards], job.job_id):
        if isinstance(s, ShardError):
            raise s
        found.append(s)
    metrics = aggregate(job.job_id, found)
    metrics.timeline.extend(rt.timelines.points(job.job_id))
    return metrics
