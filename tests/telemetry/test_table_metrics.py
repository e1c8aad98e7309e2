"""A shard's embedding tables in its Prometheus series: rows held, rows and bytes looked up
and pushed, labelled by job and table."""

from __future__ import annotations

import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pscluster.model.optimizer import OptimizerSpec
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.domain import JobConfig, PushHeader
from pscluster.server.shard import Shard
from pscluster.server.tables.rows import encode_rows
from pscluster.server.tables.spec import TableSpec
from pscluster.server.telemetry import shard_registry
from pscluster.transport import wire
from pscluster.v1 import common_pb2

N, ROWS, DIM = 4, 10, 2


def test_table_series_count_what_was_looked_up_and_pushed() -> None:
    # Prepare: shard 0 of 2 holds the even ids of a 10-row table.
    shard = Shard()
    config = JobConfig(
        "tm",
        0,
        N,
        "async",
        0,
        OptimizerSpec(name="sgd", lr=0.1),
        tables=(TableSpec("emb.weight", ROWS, DIM, 2, 0),),
        sparse_optimizer=SparseOptimizerSpec("sgd", 0.1),
    )
    job = shard.init_job(config, [bytes(wire.encode(torch.zeros(N)))])
    job.set_members(["w"], 1)

    # Execute: a lookup of 3 rows, and a push of 2 rows' gradients.
    job.lookup(0, torch.tensor([0, 4, 4]))
    infos, rows = encode_rows({0: (torch.tensor([2, 8]), torch.ones(2, DIM))})
    header = PushHeader("tm", "w", 1, 0, 0, N, common_pb2.DTYPE_FLOAT32, rows=tuple(infos))
    job.push(header, [bytes(wire.encode(torch.zeros(N))), rows])
    registry, _ = shard_registry(shard)
    text = generate_latest(registry).decode()

    # Assert
    samples = {
        (s.name, s.labels.get("table")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("job_id") == "tm"
    }
    table = "emb.weight"
    assert samples[("pscluster_shard_table_rows", table)] == 5
    assert samples[("pscluster_shard_table_rows_looked_up_total", table)] == 3
    assert samples[("pscluster_shard_table_looked_up_bytes_total", table)] == 3 * DIM * 4
    assert samples[("pscluster_shard_table_rows_pushed_total", table)] == 2
    assert samples[("pscluster_shard_table_pushed_bytes_total", table)] == 2 * (8 + DIM * 4)
    assert samples[("pscluster_shard_table_bytes", table)] >= 5 * DIM * 4
