"""Prometheus series of a shard's embedding tables, labelled by job and table.

Rows per shard (a table's imbalance is the spread of ``pscluster_shard_table_rows`` over its
shards), the rows and bytes looked up and pushed, and a dynamic table's admitted and evicted
rows. The hot ids are in ``pscluster metrics`` rather than here: ids as label values would
make a new series for every id that was ever hot.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from pscluster.server.domain import JobStats

_LABELS = ["job_id", "table"]
# (name, documentation, TableStats field); CounterMetricFamily adds the _total suffix.
TABLE_GAUGES = (
    ("pscluster_shard_table_rows", "Rows of an embedding table held by this shard.", "rows"),
    (
        "pscluster_shard_table_bytes",
        "Memory of a table's rows here, with their optimizer state and index.",
        "bytes",
    ),
)
TABLE_COUNTERS = (
    ("pscluster_shard_table_lookups", "Lookup calls answered for a table.", "lookups"),
    ("pscluster_shard_table_rows_looked_up", "Rows sent in lookups.", "rows_looked_up"),
    ("pscluster_shard_table_looked_up_bytes", "Row bytes sent in lookups.", "bytes_looked_up"),
    ("pscluster_shard_table_rows_pushed", "Rows stepped by the sparse optimizer.", "rows_pushed"),
    ("pscluster_shard_table_pushed_bytes", "Row-block bytes received in pushes.", "bytes_pushed"),
    ("pscluster_shard_table_rows_admitted", "Rows a dynamic table created.", "admitted"),
    ("pscluster_shard_table_rows_evicted", "Rows a dynamic table dropped.", "evicted"),
    (
        "pscluster_shard_table_gradients_dropped",
        "Row gradients dropped because their id was not admitted.",
        "dropped",
    ),
)


def table_families(stats: list[JobStats]) -> Iterator[Metric]:
    kinds = ((GaugeMetricFamily, TABLE_GAUGES), (CounterMetricFamily, TABLE_COUNTERS))
    for kind, series in kinds:
        for name, doc, field in series:
            family = kind(name, doc, labels=_LABELS)
            for s in stats:
                for t in s.tables:
                    family.add_metric([s.job_id, t.name], float(getattr(t, field)))
            yield family
