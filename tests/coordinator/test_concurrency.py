"""Many workers at once: each partition is leased once, and every trainer is a member on
every shard by the time its task arrives."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.coordinator.conftest import HandWorker, Running, Shards, plan_of, submit
from tests.support import tiny_job


def test_simultaneous_acquires_lease_each_partition_once_with_membership_in_place(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, tiny_job(mode="sync", partitions=4))
    plan = plan_of(running.stub, info.job_id)
    workers = [HandWorker(running.stub, shards) for _ in range(6)]

    # Execute: all six ask at once; then every trainer pushes for the first sync step.
    with ThreadPoolExecutor(len(workers)) as pool:
        tasks = list(pool.map(lambda w: w.acquire(), workers))
        trainers = [
            w for w, t in zip(workers, tasks, strict=True) if t.kind == co_pb2.TASK_KIND_TRAIN
        ]
        replies = [r for rs in pool.map(lambda w: w.push_ones(plan), trainers) for r in rs]

    # Assert
    kinds = sorted(t.kind for t in tasks)
    assert kinds == [co_pb2.TASK_KIND_WAIT] * 2 + [co_pb2.TASK_KIND_TRAIN] * 4
    partitions = sorted(t.partition for t in tasks if t.kind == co_pb2.TASK_KIND_TRAIN)
    assert partitions == [0, 1, 2, 3]
    expected = sorted(w.worker_id for w in trainers)
    for address in shards.addresses:
        stats = shards.stats(address, info.job_id)
        assert sorted(stats.members) == expected
        # Four members, four pushes: exactly one barrier step, nothing refused.
        assert (stats.steps_applied, dict(stats.pushes_rejected)) == (1, {})
    outcomes = sorted(r.outcome for r in replies)
    assert set(outcomes) <= {ps_pb2.PUSH_OUTCOME_APPLIED, ps_pb2.PUSH_OUTCOME_BUFFERED}
