"""A pruned model's fine-tune as the coordinator handles it: the spec's hold_zeros names are
checked against the model's trainable parameters, and each shard is sent the spans of its own
range that they cover."""

from __future__ import annotations

import pytest

from pscluster.coordinator import store as st
from pscluster.coordinator.shard_init import initial_vectors, shard_configs
from pscluster.coordinator.spec import read_submission, validate_job
from pscluster.errors import InvalidArgument
from tests.support import TinyJob, tiny_job


def submitted(job: TinyJob) -> st.JobRecord:
    spec, blobs = read_submission(job.chunks())
    valid = validate_job(spec, blobs, configured_shards=2, default_partitions=4).spec
    # Plain: fc.weight 12 values at 0, fc.bias 3 at 12; two shards of 8 and 7 values.
    shards = [st.ShardSlice("a:1", 0, 8), st.ShardSlice("b:1", 8, 7)]
    blob = valid.SerializeToString()
    return st.JobRecord("j", "", blob, valid.mode, valid.epochs, valid.partitions, 15, shards)


def test_each_shard_gets_the_spans_of_its_range_that_hold_zeros() -> None:
    # Prepare
    job = tiny_job(model="Plain")
    job.spec.hold_zeros.append("fc.weight")
    record = submitted(job)
    flat, buffers, _ = initial_vectors(record, job.blobs["initial_state"])

    # Execute
    configs = shard_configs(record, flat, buffers)

    # Assert
    spans = [[(s.start, s.length) for s in config.hold_zeros] for _, config, _ in configs]
    assert spans == [[(0, 8)], [(0, 4)]]  # fc.weight is 0..12: all of the first, 4 of the second


@pytest.mark.parametrize(
    ("names", "message"),
    [(["fc2.weight"], "not trainable parameters"), (["fc.weight", "fc.weight"], "twice")],
)
def test_hold_zeros_must_name_trainable_parameters_once(names: list[str], message: str) -> None:
    job = tiny_job(model="Plain")
    job.spec.hold_zeros.extend(names)

    with pytest.raises(InvalidArgument, match=message):
        submitted(job)
