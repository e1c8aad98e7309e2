"""AcquireTask as a long poll: a worker with nothing to do is held until a lease frees up.

Without it, a worker that had just finished its partition asked again at once and took the
next epoch's partitions, while the other slept between polls: with short epochs one worker
did all the training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.coordinator.conftest import HandWorker, Running, Shards, submit
from tests.support import tiny_job


def test_a_held_worker_gets_the_lease_that_frees_up_while_it_waits(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # Prepare: one partition, held by the first worker.
    running = make_coordinator(shards.addresses, acquire_hold_seconds=5.0)
    submit(running.stub, tiny_job(partitions=1, epochs=2))
    first, second = HandWorker(running.stub, shards), HandWorker(running.stub, shards)
    task = first.acquire()
    assert task.kind == co_pb2.TASK_KIND_TRAIN

    # Execute: the second worker asks while there is nothing to hand out; then the first
    # completes its partition, which opens the evaluation and the next epoch.
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(second.acquire)
        # Let the call reach the coordinator (if not, it finds the lease). A sleep: nothing
        # outside the coordinator shows that a call is being held.
        time.sleep(0.5)
        in_flight = not waiting.done()
        first.complete(task)
        held = waiting.result(timeout=30)

    # Assert: the same call answered with work, not "wait".
    assert in_flight, "the second worker was answered before anything was free"
    assert held.kind in (co_pb2.TASK_KIND_TRAIN, co_pb2.TASK_KIND_EVAL)


def test_a_held_worker_with_nothing_to_do_is_told_to_ask_again_at_once(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses, acquire_hold_seconds=0.2)
    submit(running.stub, tiny_job(partitions=1, epochs=2))
    first, second = HandWorker(running.stub, shards), HandWorker(running.stub, shards)
    assert first.acquire().kind == co_pb2.TASK_KIND_TRAIN

    task = second.acquire()

    # It was held for the whole hold already: no extra sleep on the worker's side.
    assert (task.kind, task.wait_seconds) == (co_pb2.TASK_KIND_WAIT, 0.0)


def test_without_a_hold_a_worker_is_told_to_wait_before_asking_again(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    running = make_coordinator(shards.addresses, acquire_hold_seconds=0.0)
    worker = HandWorker(running.stub, shards)

    task = worker.acquire()

    assert task.kind == co_pb2.TASK_KIND_WAIT and task.wait_seconds > 0


def test_only_half_the_server_threads_hold_workers_at_once(
    shards: Shards, make_coordinator: Callable[..., Running]
) -> None:
    # 4 threads: at most 2 held calls; the others are answered at once with a wait.
    running = make_coordinator(shards.addresses, acquire_hold_seconds=2.0, grpc_threads=4)
    workers = [HandWorker(running.stub, shards) for _ in range(3)]

    with ThreadPoolExecutor(3) as pool:
        tasks = list(pool.map(lambda w: w.acquire(), workers))

    waits = sorted(t.wait_seconds for t in tasks)
    assert all(t.kind == co_pb2.TASK_KIND_WAIT for t in tasks)
    assert waits[0] == 0.0 and waits[-1] > 0  # some held, at least one sent away
