"""CompleteTask hands out the worker's next lease in its reply (``acquire_next``).

Through a real coordinator's RPCs: the next partition comes with the completion while one is
free, nothing comes when none is (the worker then calls AcquireTask, which may hold it), and
a lease handed out in a reply that never reached its worker goes back to the pool at that
worker's next AcquireTask.
"""

from __future__ import annotations

from collections.abc import Callable

from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.coordinator.conftest import RPC_TIMEOUT, HandWorker, Running, Shards, submit
from tests.support import tiny_job


def complete_and_acquire(worker: HandWorker, task: co_pb2.Task) -> co_pb2.CompleteTaskReply:
    request = co_pb2.CompleteTaskRequest(
        worker_id=worker.worker_id, lease_id=task.lease_id, samples=8, acquire_next=True
    )
    reply: co_pb2.CompleteTaskReply = worker.stub.CompleteTask(request, timeout=RPC_TIMEOUT)
    return reply


def test_the_next_partition_comes_with_the_completion_while_one_is_free(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: one epoch of three partitions, one worker
    running = make_coordinator(shards.addresses)
    info = submit(running.stub, tiny_job(partitions=3, epochs=1))
    worker = HandWorker(running.stub, shards, worker_id="w")
    first = worker.acquire()

    # Execute: hand each lease in, taking the next from the reply
    got = [first]
    while True:
        reply = complete_and_acquire(worker, got[-1])
        if not reply.HasField("next"):
            break
        got.append(reply.next)

    # Assert: the three partitions, then the epoch's evaluation, each from a reply; after the
    # evaluation the job has nothing left to hand out
    kinds = [(t.kind, t.partition) for t in got]
    assert kinds == [
        (co_pb2.TASK_KIND_TRAIN, 0),
        (co_pb2.TASK_KIND_TRAIN, 1),
        (co_pb2.TASK_KIND_TRAIN, 2),
        (co_pb2.TASK_KIND_EVAL, 0),
    ], kinds
    assert all(t.job_id == info.job_id and t.lease_seconds > 0 for t in got)


def test_a_completion_without_acquire_next_hands_out_nothing(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses)
    submit(running.stub, tiny_job(partitions=3, epochs=1))
    worker = HandWorker(running.stub, shards, worker_id="w")
    task = worker.acquire()

    reply = worker.stub.CompleteTask(
        co_pb2.CompleteTaskRequest(worker_id="w", lease_id=task.lease_id, samples=8),
        timeout=RPC_TIMEOUT,
    )

    assert not reply.HasField("next")
    assert worker.acquire().partition == 1  # still free


def test_a_next_lease_whose_reply_was_lost_goes_back_at_the_next_acquire(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: the reply handing out partition 1 is "lost" (the worker never uses it)
    running = make_coordinator(shards.addresses)
    submit(running.stub, tiny_job(partitions=2, epochs=1))
    worker = HandWorker(running.stub, shards, worker_id="w")
    lost = complete_and_acquire(worker, worker.acquire()).next
    assert lost.partition == 1

    # Execute: the worker, knowing of no lease, asks for work
    again = worker.acquire()

    # Assert: it is given partition 1 afresh, under a new lease
    assert (again.kind, again.partition) == (co_pb2.TASK_KIND_TRAIN, 1)
    assert again.lease_id != lost.lease_id
