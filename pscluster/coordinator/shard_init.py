"""What each shard of a job is initialised with: its config, its range of the parameters and
of the buffers. Pure functions of the stored job, so a retried initialisation (the monitor,
after a restart) sends exactly what the first attempt did."""

from __future__ import annotations

import torch

from pscluster.coordinator import store as st
from pscluster.coordinator.model_spec import (
    buffer_layout_of,
    buffer_ranges,
    counter_spans_in,
    hold_zero_spans,
    layout_of,
)
from pscluster.coordinator.spec import shard_optimizer
from pscluster.coordinator.tables import shard_tables
from pscluster.model import state
from pscluster.model.partition import Range
from pscluster.server.consistency import starting_consistency
from pscluster.transport import wire
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

Initial = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]


def initial_vectors(job: st.JobRecord, initial_state: bytes) -> Initial:
    """The job's initial parameters (float32), buffers (float64) and the table rows it was
    given (by name; tables not in it start on the shards) from its stored state."""
    spec = co_pb2.JobSpec.FromString(job.spec)
    tensors = state.loads(initial_state, "the model's initial state")
    tables = {t.name: tensors[t.name] for t in spec.model.tables if t.name in tensors}
    return layout_of(spec).flatten(tensors), buffer_layout_of(spec).flatten(tensors), tables


def shard_configs(
    job: st.JobRecord,
    flat: torch.Tensor,
    buffers: torch.Tensor,
    tables: dict[str, torch.Tensor] | None = None,
) -> list[tuple[str, ps_pb2.ShardJobConfig, torch.Tensor]]:
    """(address, config, initial values) of every shard of the job, in plan order; a shard's
    values are its parameter range followed by the given rows of the tables it holds."""
    out = []
    for part, (config, rows) in zip(job.shards, _layout(job, tables or {}), strict=True):
        config.initial_buffers = wire.encode_float64(
            buffers[config.buffer_start : config.buffer_start + config.buffer_length]
        )
        values = flat[part.start : part.start + part.length]
        out.append((part.address, config, torch.cat([values, *rows]) if rows else values))
    return out


def layout_configs(job: st.JobRecord) -> list[ps_pb2.ShardJobConfig]:
    """Every shard's config of the job as its ``shards`` and ``layout_generation`` lay it out,
    without initial values: what a move between shards (pscluster.coordinator.moves) cuts
    the running job's state to."""
    return [config for config, _ in _layout(job, {})]


def _layout(
    job: st.JobRecord, tables: dict[str, torch.Tensor]
) -> list[tuple[ps_pb2.ShardJobConfig, list[torch.Tensor]]]:
    """Per shard, its config and the given rows of ``tables`` it holds (which follow its
    initial values in InitJob; their tables' configs say ``initial_given``)."""
    spec = co_pb2.JobSpec.FromString(job.spec)
    counters = buffer_layout_of(spec).counter_spans()
    zeros = hold_zero_spans(spec, layout_of(spec))
    out = []
    # An auto job's shards start in its first setting; the coordinator switches them later.
    mode, staleness, backup_workers = starting_consistency(
        spec.mode, spec.staleness, spec.backup_workers
    )
    ranges = buffer_ranges(spec, len(job.shards))
    for index, (part, brange) in enumerate(zip(job.shards, ranges, strict=True)):
        table_configs, rows = shard_tables(spec, index, len(job.shards), tables)
        config = ps_pb2.ShardJobConfig(
            job_id=job.job_id,
            start=part.start,
            length=part.length,
            mode=mode,
            staleness=staleness,
            optimizer=shard_optimizer(spec),
            compression=spec.compression,
            backup_workers=backup_workers,
            staleness_aware_lr=spec.staleness_aware_lr,
            buffer_start=brange.start,
            buffer_length=brange.length,
            counters=counter_spans_in(counters, brange),
            tables=table_configs,
            hold_zeros=counter_spans_in(zeros, Range(part.start, part.length)),
            layout_generation=job.layout_generation,
        )
        if table_configs:
            config.sparse_optimizer.CopyFrom(spec.sparse_optimizer)
        out.append((config, rows))
    return out
