"""The epoch schedule: partitions, evaluations, one lease per worker, leases going back."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pscluster.coordinator.lease_values import EVAL, TRAIN, Lease
from pscluster.coordinator.leases import LeaseBook
from pscluster.errors import FailedPrecondition, InvalidArgument


def book() -> LeaseBook:
    counter = itertools.count()
    return LeaseBook(new_id=lambda: f"l-{next(counter)}")


def take(b: LeaseBook, worker: str) -> Lease:
    lease = b.acquire(worker)
    assert lease is not None, f"{worker} got nothing"
    return lease


def test_partitions_are_leased_once_each_then_nothing_is_left() -> None:
    # Prepare
    b = book()
    b.add_job("j", epochs=2, partitions=3)
    # Execute
    leases = [take(b, f"w{i}") for i in range(3)]
    # Assert
    assert [(le.kind, le.epoch, le.partition, le.partitions) for le in leases] == [
        (TRAIN, 0, 0, 3),
        (TRAIN, 0, 1, 3),
        (TRAIN, 0, 2, 3),
    ]
    assert b.acquire("w3") is None
    assert b.members("j") == ["w0", "w1", "w2"]


def test_a_worker_holds_one_lease_at_a_time() -> None:
    b = book()
    b.add_job("j", epochs=1, partitions=3)
    take(b, "w")
    with pytest.raises(FailedPrecondition, match="still holds lease"):
        b.acquire("w")


def test_closing_an_epoch_owes_its_evaluation_and_starts_the_next() -> None:
    # Prepare
    b = book()
    b.add_job("j", epochs=2, partitions=2)
    first, second = take(b, "a"), take(b, "b")
    # Execute
    assert b.complete("a", first.lease_id).epoch_closed is None
    outcome = b.complete("b", second.lease_id)
    # Assert: the evaluation of epoch 0 comes before epoch 1's partitions.
    assert outcome.epoch_closed == 0
    assert b.schedule("j").epoch == 1
    evaluation = take(b, "a")
    assert (evaluation.kind, evaluation.epoch, evaluation.partition) == (EVAL, 0, -1)
    train = take(b, "b")
    assert (train.kind, train.epoch, train.partition) == (TRAIN, 1, 0)
    assert b.members("j") == ["b"]  # evaluators are not members
    assert b.holders("j") == ["a", "b"]


def test_the_last_evaluation_finishes_the_job_and_older_ones_still_count() -> None:
    # Prepare: two epochs of one partition; epoch 0's evaluation is held back.
    b = book()
    b.add_job("j", epochs=2, partitions=1)
    b.complete("a", take(b, "a").lease_id)
    slow_eval = take(b, "slow")
    b.complete("a", take(b, "a").lease_id)
    assert b.schedule("j").training_done
    final_eval = take(b, "a")
    assert (final_eval.kind, final_eval.epoch) == (EVAL, 1)
    # Execute / Assert: the older evaluation completing later is still a normal completion.
    assert not b.complete("slow", slow_eval.lease_id).final
    assert b.complete("a", final_eval.lease_id).final
    assert b.acquire("a") is None


def test_several_owed_evaluations_go_oldest_first() -> None:
    b = book()
    b.add_job("j", epochs=5, partitions=1, epoch=3, evals=[2, 0, 1])
    assert [take(b, w).epoch for w in ("a", "b", "c")] == [0, 1, 2]
    assert take(b, "d").kind == TRAIN


def test_jobs_are_served_first_come_first_served() -> None:
    b = book()
    b.add_job("first", epochs=1, partitions=1)
    b.add_job("second", epochs=1, partitions=2)
    assert [take(b, w).job_id for w in ("a", "b", "c")] == ["first", "second", "second"]


def test_an_abandoned_partition_is_free_again() -> None:
    b = book()
    b.add_job("j", epochs=1, partitions=2)
    lease = take(b, "a")
    released = b.release_worker("a")
    assert released == lease
    assert b.members("j") == []
    assert take(b, "b").partition == lease.partition
    # Silently abandoned (no revoke reason): the old id is simply unknown.
    with pytest.raises(FailedPrecondition, match="no such lease"):
        b.complete("a", lease.lease_id)


def test_a_dead_workers_evaluation_is_owed_again_and_its_lease_is_revoked() -> None:
    # Prepare
    b = book()
    b.add_job("j", epochs=1, partitions=1, epoch=1, evals=[0])
    lease = take(b, "dead")
    # Execute
    b.release_worker("dead", "worker dead timed out")
    # Assert
    with pytest.raises(FailedPrecondition, match="no longer valid: worker dead timed out"):
        b.complete("dead", lease.lease_id)
    assert b.take_revoked("dead") == [lease.lease_id]
    assert b.take_revoked("dead") == []  # told once
    again = take(b, "other")
    assert (again.kind, again.epoch) == (EVAL, 0)


def test_removing_a_job_revokes_its_leases_only() -> None:
    b = book()
    b.add_job("gone", epochs=1, partitions=1)
    b.add_job("stays", epochs=1, partitions=1)
    gone, stays = take(b, "a"), take(b, "b")
    revoked = b.remove_job("gone", "job cancelled")
    assert revoked == [gone]
    assert b.take_revoked("a") == [gone.lease_id]
    assert b.lease_of("b") == stays
    with pytest.raises(FailedPrecondition, match="job cancelled"):
        b.complete("a", gone.lease_id)


def test_only_the_holder_may_complete_a_lease() -> None:
    b = book()
    b.add_job("j", epochs=1, partitions=1)
    lease = take(b, "a")
    with pytest.raises(FailedPrecondition, match="belongs to worker a"):
        b.complete("b", lease.lease_id)
    assert b.lease_of("a") == lease


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0, "partitions": 1}, "must be >= 1"),
        ({"epochs": 2, "partitions": 2, "epoch": 3}, "outside 0..2"),
        ({"epochs": 2, "partitions": 2, "done": [2]}, "invalid"),
        ({"epochs": 2, "partitions": 2, "evals": [2]}, "outside 0..1"),
    ],
)
def test_restored_progress_is_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        book().add_job("j", **kwargs)  # type: ignore[arg-type]


def test_restored_progress_resumes_where_it_stopped() -> None:
    b = book()
    b.add_job("j", epochs=3, partitions=3, epoch=1, done=[0, 2], evals=[0])
    assert (take(b, "a").kind, take(b, "b").partition) == (EVAL, 1)
    assert b.acquire("c") is None


def test_restored_leases_are_held_again_and_only_when_they_still_fit() -> None:
    # Prepare: a coordinator that had leased part of partition 1 and evaluation 0, then
    # restarted with its saved progress.
    b = book()
    b.add_job("j", epochs=3, partitions=3, epoch=1, done=[0], evals=[0], batch_counts=[8, 8, 8])
    train = Lease("l-a", "j", "a", TRAIN, 1, 1, 3, 2, 6)
    evaluation = Lease("l-b", "j", "b", EVAL, 0, -1, 3)
    # Execute
    restored = [
        b.restore(train),
        b.restore(evaluation),
        b.restore(Lease("l-c", "j", "c", TRAIN, 0, 2, 3, 0, 8)),  # an epoch that has closed
        b.restore(Lease("l-d", "j", "d", TRAIN, 1, 0, 3, 0, 8)),  # a partition done
        b.restore(Lease("l-e", "j", "a", TRAIN, 1, 2, 3, 0, 8)),  # its worker holds one
    ]
    # Assert: the rest of partition 1 and partition 2 are still free; completing the restored
    # leases and the free units closes the epoch.
    assert restored == [True, True, False, False, False]
    assert b.lease_of("a") == train and b.members("j") == ["a"]
    free = [(le.partition, le.first_batch, le.end_batch) for le in (take(b, w) for w in "xyz")]
    assert sorted(free) == [(1, 0, 2), (1, 6, 8), (2, 0, 8)]
    for worker, lease in [("a", train), ("b", evaluation)]:
        b.complete(worker, lease.lease_id)
    outcomes = [b.complete(w, b.lease_of(w).lease_id) for w in "xyz"]  # type: ignore[union-attr]
    assert [o.epoch_closed for o in outcomes][-1] == 1


@settings(max_examples=60, deadline=None)
@given(
    epochs=st.integers(1, 4),
    partitions=st.integers(1, 5),
    workers=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_interleaving_trains_every_partition_and_evaluates_every_epoch(
    epochs: int, partitions: int, workers: int, seed: int
) -> None:
    """Workers acquire, complete, abandon and die at random: the job still ends with every
    (epoch, partition) trained exactly once and the final evaluation last."""
    rng = random.Random(seed)
    b = book()
    b.add_job("j", epochs=epochs, partitions=partitions)
    trained: list[tuple[int, int]] = []
    evaluated: set[int] = set()
    finished = False
    names = [f"w{i}" for i in range(workers)]
    for _ in range(10_000):
        w = rng.choice(names)
        lease = b.lease_of(w)
        if lease is None:
            b.acquire(w)
            continue
        action = rng.random()
        if action < 0.15:
            b.release_worker(w, "died" if action < 0.07 else None)
            continue
        # Training leases are always for the current epoch and a partition not yet done.
        if lease.kind == TRAIN:
            assert lease.epoch == b.schedule("j").epoch
            assert lease.partition not in b.schedule("j").done
        outcome = b.complete(w, lease.lease_id)
        if lease.kind == TRAIN:
            trained.append((lease.epoch, lease.partition))
        else:
            evaluated.add(lease.epoch)
        if outcome.final:
            finished = True
            break
    assert finished
    assert sorted(trained) == [(e, p) for e in range(epochs) for p in range(partitions)]
    assert epochs - 1 in evaluated
