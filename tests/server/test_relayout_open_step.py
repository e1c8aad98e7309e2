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
from pscluster.shard_client import JobShards, PushExtras, ShardClient, ShardRange
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


def _push(job: JobShards, worker: str, seq: int, outcome: int, local_steps: int = 0) -> None:
    """``worker``'s gradient ``seq`` (with ``local_steps``: its change of that many local
    steps, over lr) over the job's ranges, each answered ``outcome``."""
    update, base = _values((20 if local_steps else 10) + seq), job.pull(worker, None, 5.0)
    parts = {i: wire.encode(update[r.start : r.start + r.length]) for i, r in enumerate(job.ranges)}
    extras = PushExtras(local_steps=local_steps)
    for reply in job.push(worker, seq, parts, "none", base, 1, 10.0, extras).values():
        assert isinstance(reply, ps_pb2.PushReply), reply
        assert reply.outcome == outcome, reply


def _split_in_halves(
    shards: ShardClient, first: str, second: str, job_id: str, skeleton: dn.State
) -> JobShards:
    """The coordinator's cut of the held job over two shards: the first keeps its half, the
    second reads the other half (values, optimizer state, the step's sums) from the first."""
    configs = [_config(0, HALF, job_id), _config(HALF, HALF, job_id)]
    halves = recut_skeletons([skeleton], configs, 1)
    for index, (address, local) in enumerate([(first, True), (second, False)]):
        segment = ps_pb2.DenseSegment(
            start=index * HALF, length=HALF, local=local, source="" if local else first
        )
        image = state_to_bytes(*halves[index])
        shards.adopt_job(address, job_id, 1, image, [segment], source_generation=0)
    ranges = [ShardRange(first, 0, HALF), ShardRange(second, HALF, HALF)]
    for address in (first, second):
        shards.hold_job(address, job_id, RELEASE, 1)
    return JobShards(shards, job_id, ranges, 1)


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

    # Execute: the coordinator's cut over two shards (the second reads values, momentum and
    # the step's sum from the first)
    moved = _split_in_halves(shards, first, second, "j", skeleton)

    # Assert: w2's push closes the step on both new shards, as on the twin; one step more
    for each in (moved, twin):
        _push(each, "w2", 1, APPLIED)
        _push(each, "w1", 2, BUFFERED)
        _push(each, "w2", 2, APPLIED)
    after, expected = moved.pull("", None, 5.0), twin.pull("", None, 5.0)
    assert after.versions == [2, 2] and expected.versions == [2]
    assert torch.equal(after.values, expected.values)


def _switch_local_steps(shards: ShardClient, address: str, job_id: str) -> None:
    """Mode auto's switch to sync with 4 local steps per push."""
    request = ps_pb2.SetConsistencyRequest(job_id=job_id, mode="sync", revision=2, local_steps=4)
    shards.stub(address).SetConsistency(request, timeout=10.0)


def test_an_open_step_of_gradients_and_local_changes_moves_with_the_local_steps(
    shards: ShardClient, first: str, second: str
) -> None:
    # Prepare: local steps in force; of three members w1 pushed a gradient, w2 a change
    jobs = []
    for job_id in ("l", "ltwin"):
        shards.init_job([(first, _config(0, N, job_id), _values(1))])
        shards.set_members([first], job_id, ["w1", "w2", "w3"], 1)
        _switch_local_steps(shards, first, job_id)
        jobs.append(view(shards, first, job_id, N))
    job, twin = jobs
    for each in (job, twin):
        _push(each, "w1", 1, BUFFERED)
        _push(each, "w2", 1, BUFFERED, local_steps=3)
    shards.hold_job(first, "l", HOLD)
    skeleton = state_from_bytes(shards.export_job(first, "l", skeleton=True))
    assert {"policy.sum", "policy.change_sum"} <= set(dn.dense_dtypes(skeleton[1]) or {})

    # Execute: split over the two shards as above
    moved = _split_in_halves(shards, first, second, "l", skeleton)

    # Assert: the new shards still ask for 4 local steps, and w3's push closes the step with
    # each part applied as what it is, as on the twin
    pulled = moved.pull("w3", None, 5.0)
    assert pulled.local_steps == 4
    for each in (moved, twin):
        _push(each, "w3", 1, APPLIED)
    after, expected = moved.pull("", None, 5.0), twin.pull("", None, 5.0)
    assert after.versions == [1, 1] and expected.versions == [1]
    assert torch.equal(after.values, expected.values)
