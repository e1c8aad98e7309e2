"""An open sync step moved between real shards over gRPC: one member has pushed for the step,
the other not, when the job is held and split over two shards. The step's summed gradient is
per value, so it leaves the skeleton and travels with the values, read by the new shard from
the old one; on the new shards the step closes with the other member's push exactly as it
does on the unmoved twin."""

from __future__ import annotations

import torch

from pscluster.coordinator.recut import recut_skeletons
from pscluster.server.durability import dense as dn
from pscluster.server.durability.checkpoint import state_from_bytes, state_to_bytes
from pscluster.shard_client import JobShards, ShardClient, ShardRange
from pscluster.transport import wire
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.server import relayout
from tests.server.relayout import HOLD, RELEASE, momentum_sgd, view

N, HALF = 3000, 1500
APPLIED, BUFFERED = ps_pb2.PUSH_OUTCOME_APPLIED, ps_pb2.PUSH_OUTCOME_BUFFERED

settings_fixture = relayout.settings_fixture
first_fixture = relayout.first_fixture
second_fixture = relayout.second_fixture
shards_fixture = relayout.shards_fixture


def _values(seed: int) -> torch.Tensor:
    return torch.randn(N, generator=torch.Generator().manual_seed(seed))


def _config(start: int, length: int, job_id: str = "j") -> ps_pb2.ShardJobConfig:
    return ps_pb2.ShardJobConfig(
        job_id=job_id, start=start, length=length, mode="sync", optimizer=momentum_sgd()
    )


def _sync_job(shards: ShardClient, address: str, job_id: str) -> JobShards:
    shards.init_job([(address, _config(0, N, job_id), _values(1))])
    shards.set_members([address], job_id, ["w1", "w2"], 1)
    return view(shards, address, job_id, N)


def _push(job: JobShards, worker: str, seq: int, outcome: int) -> None:
    """``worker``'s gradient ``seq`` over the job's ranges, each answered ``outcome``."""
    grad, base = _values(10 + seq), job.pull(worker, None, 5.0)
    parts = {i: wire.encode(grad[r.start : r.start + r.length]) for i, r in enumerate(job.ranges)}
    for reply in job.push(worker, seq, parts, "none", base, 1, timeout=10.0).values():
        assert isinstance(reply, ps_pb2.PushReply), reply
        assert reply.outcome == outcome, reply


def test_an_open_steps_sum_moves_shard_to_shard_and_the_step_closes_there(
    shards: ShardClient, first: str, second: str
) -> None:
    # Prepare: w1 has pushed for step 0 of the job and of its unmoved twin; w2 has not
    job, twin = _sync_job(shards, first, "j"), _sync_job(shards, first, "twin")
    for each in (job, twin):
        _push(each, "w1", 1, BUFFERED)
    shards.hold_job(first, "j", HOLD)
    skeleton = state_from_bytes(shards.export_job(first, "j", skeleton=True))
    assert "policy.sum" not in skeleton[0]
    assert "policy.sum" in (dn.dense_dtypes(skeleton[1]) or {})

    # Execute: the coordinator's cut; the first shard keeps its half, the second reads the
    # other half (values, momentum, the step's sum) from the first
    halves = recut_skeletons([skeleton], [_config(0, HALF), _config(HALF, HALF)], 1)
    for index, (address, local) in enumerate([(first, True), (second, False)]):
        segment = ps_pb2.DenseSegment(
            start=index * HALF, length=HALF, local=local, source="" if local else first
        )
        image = state_to_bytes(*halves[index])
        shards.adopt_job(address, "j", 1, image, [segment], source_generation=0)
    moved = JobShards(shards, "j", [ShardRange(first, 0, HALF), ShardRange(second, HALF, HALF)], 1)
    for address in (first, second):
        shards.hold_job(address, "j", RELEASE, 1)

    # Assert: w2's push closes the step on both new shards, as on the twin; one step more
    for each in (moved, twin):
        _push(each, "w2", 1, APPLIED)
        _push(each, "w1", 2, BUFFERED)
        _push(each, "w2", 2, APPLIED)
    after, expected = moved.pull("", None, 5.0), twin.pull("", None, 5.0)
    assert after.versions == [2, 2] and expected.versions == [2]
    assert torch.equal(after.values, expected.values)
