"""The store contract, run against every store; plus what only a durable store can do."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from pscluster.coordinator.blobs import BlobStore
from pscluster.coordinator.sqlite_store import SqliteStore
from pscluster.coordinator.store import (
    COMPLETED,
    RUNNING,
    EpochRecord,
    EventRecord,
    JobRecord,
    JobStore,
    LeaseRecord,
    ShardSlice,
    StepRecord,
)
from pscluster.errors import AlreadyExists, InvalidArgument, NotFound


def job(job_id: str, created: float = 1.0) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        name=f"name of {job_id}",
        spec=b"\x01spec",
        mode="async",
        epochs=3,
        partitions=4,
        num_params=10,
        shards=[ShardSlice("a:1", 0, 5), ShardSlice("b:2", 5, 5)],
        created_unix=created,
    )


def step(loss: float, worker: str = "w-1", samples: int = 4) -> StepRecord:
    return StepRecord(0, loss, samples, worker, 0, 100.0)


class TestStoreContract:
    def test_a_created_job_reads_back_whole(self, store: JobStore) -> None:
        store.create_job(job("j-1"))
        assert store.get_job("j-1") == job("j-1")
        assert store.get_job("j-missing") is None

    def test_ids_are_unique(self, store: JobStore) -> None:
        store.create_job(job("j-1"))
        with pytest.raises(AlreadyExists):
            store.create_job(job("j-1"))

    def test_jobs_list_oldest_first(self, store: JobStore) -> None:
        for i in (3, 1, 2):
            store.create_job(job(f"j-{i}", created=float(i)))
        assert [j.job_id for j in store.list_jobs()] == ["j-3", "j-1", "j-2"]  # submission order
        store.update_job("j-1", state=RUNNING)
        store.update_job("j-2", state=RUNNING)
        assert [j.job_id for j in store.list_jobs(RUNNING)] == ["j-1", "j-2"]
        assert [j.job_id for j in store.list_jobs(COMPLETED)] == []

    def test_update_changes_only_the_named_fields(self, store: JobStore) -> None:
        store.create_job(job("j-1"))
        updated = store.update_job(
            "j-1", state=RUNNING, epoch=1, done_partitions=[2, 0], pending_evals=[0], generation=7
        )
        assert (updated.state, updated.epoch, updated.done_partitions) == (RUNNING, 1, [0, 2])
        assert (updated.pending_evals, updated.generation) == ([0], 7)
        assert updated.name == "name of j-1" and updated.shards == job("j-1").shards
        assert store.get_job("j-1") == updated

    def test_update_refuses_unknown_jobs_and_fixed_fields(self, store: JobStore) -> None:
        store.create_job(job("j-1"))
        with pytest.raises(NotFound):
            store.update_job("j-2", state=RUNNING)
        with pytest.raises(ValueError, match="epochs"):
            store.update_job("j-1", epochs=9)

    def test_steps_are_numbered_job_wide_in_order_of_arrival(self, store: JobStore) -> None:
        store.create_job(job("j-1"))
        store.create_job(job("j-2"))
        store.append_steps("j-1", [step(3.0, "w-a"), step(2.0, "w-b")])
        store.append_steps("j-2", [step(9.0)])
        after = store.append_steps("j-1", [step(1.0, "w-a", samples=2)])
        assert [(s.step, s.loss, s.worker_id) for s in store.steps("j-1")] == [
            (1, 3.0, "w-a"),
            (2, 2.0, "w-b"),
            (3, 1.0, "w-a"),
        ]
        assert (after.steps, after.last_loss, after.samples) == (3, 1.0, 10)
        assert [s.step for s in store.steps("j-1", after=2)] == [3]
        assert store.steps_by_worker("j-1") == {"w-a": 2, "w-b": 1}
        with pytest.raises(NotFound):
            store.append_steps("j-404", [step(1.0)])

    def test_a_diverged_loss_reads_back_as_nan(self, store: JobStore) -> None:
        store.create_job(job("j-1"))
        updated = store.append_steps("j-1", [step(math.nan)])
        assert math.isnan(updated.last_loss)
        assert math.isnan(store.steps("j-1")[0].loss)

    def test_evaluations_by_epoch_and_latest_accuracy(self, store: JobStore) -> None:
        store.create_job(job("j-1"))
        assert store.get_job("j-1").test_accuracy == -1  # type: ignore[union-attr]
        store.record_epoch("j-1", EpochRecord(1, 0.8, 0.5, 10.0, 100))
        # An older epoch's evaluation arriving late is kept but is not the latest.
        late = store.record_epoch("j-1", EpochRecord(0, 0.6, 0.9, 11.0, 50))
        assert late.test_accuracy == 0.8
        redo = store.record_epoch("j-1", EpochRecord(1, 0.85, 0.4, 12.0, 120))
        assert redo.test_accuracy == 0.85
        assert [(e.epoch, e.test_accuracy) for e in store.epochs("j-1")] == [(0, 0.6), (1, 0.85)]
        with pytest.raises(NotFound):
            store.record_epoch("j-404", EpochRecord(0, 0.5, 1.0, 1.0, 1))

    def test_events_read_back_in_order_per_job(self, store: JobStore) -> None:
        store.create_job(job("j-1"))
        store.create_job(job("j-2"))
        first = EventRecord(5.0, "straggler", "w-1", "worker w-1 is a straggler")
        second = EventRecord(4.0, "recovered", "w-1", "worker w-1 is no longer a straggler")
        store.append_event("j-1", first)
        store.append_event("j-2", EventRecord(1.0, "split", "w-2", "other job"))
        store.append_event("j-1", second)
        # In order of arrival, not of timestamp: clocks of different hosts may disagree.
        assert store.events("j-1") == [first, second]
        assert store.events("j-404") == []
        with pytest.raises(NotFound):
            store.append_event("j-404", first)

    def test_dropped_batches_add_up_per_job_and_reason(self, store: JobStore) -> None:
        store.create_job(job("j-1"))
        store.create_job(job("j-2"))
        store.add_dropped("j-1", {"stale": 2, "nonfinite": 1})
        store.add_dropped("j-2", {"late": 5})
        store.add_dropped("j-1", {"stale": 3})
        assert store.dropped("j-1") == {"stale": 5, "nonfinite": 1}
        assert store.dropped("j-2") == {"late": 5}
        assert store.dropped("j-404") == {}
        with pytest.raises(NotFound):
            store.add_dropped("j-404", {"stale": 1})

    def test_saved_leases_replace_the_previous_ones(self, store: JobStore) -> None:
        train = LeaseRecord("l-1", "j-1", "w-1", "train", 0, 2, 4, 3, 9)
        evaluation = LeaseRecord("l-2", "j-1", "w-2", "eval", 0, -1, 4, 0, 0)
        assert store.leases() == []
        store.save_leases([train, evaluation])
        assert store.leases() == [train, evaluation]
        store.save_leases([evaluation])
        assert store.leases() == [evaluation]

    def test_concurrent_appends_get_contiguous_numbers(self, store: JobStore) -> None:
        store.create_job(job("j-1"))

        def report(worker: str) -> None:
            for i in range(25):
                store.append_steps("j-1", [step(float(i), worker), step(float(i), worker)])

        threads = [threading.Thread(target=report, args=(f"w-{t}",)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        numbers = [s.step for s in store.steps("j-1")]
        assert numbers == list(range(1, 201))
        assert store.get_job("j-1").steps == 200  # type: ignore[union-attr]


def test_sqlite_keeps_everything_across_a_reopen(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "state" / "db.sqlite"
    first = SqliteStore(path)
    first.create_job(job("j-1"))
    first.append_steps("j-1", [step(0.5)])
    first.record_epoch("j-1", EpochRecord(0, 0.7, 0.3, 5.0, 4))
    first.update_job("j-1", state=COMPLETED, final_stats=b"\x00stats")
    first.append_event("j-1", EventRecord(6.0, "straggler", "w-1", "slow"))
    lease = LeaseRecord("l-1", "j-1", "w-1", "train", 0, 2, 4, 3, 9)
    first.save_leases([lease])
    first.close()
    # Execute
    second = SqliteStore(path)
    # Assert
    restored = second.get_job("j-1")
    assert restored is not None
    assert (restored.state, restored.final_stats, restored.steps) == (COMPLETED, b"\x00stats", 1)
    assert [e.test_accuracy for e in second.epochs("j-1")] == [0.7]
    assert second.steps("j-1")[0].loss == 0.5
    assert [e.kind for e in second.events("j-1")] == ["straggler"]
    assert second.leases() == [lease]
    second.close()


def test_blobs_are_written_whole_and_read_in_chunks(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "jobs")
    data = bytes(range(256)) * 10
    path = blobs.write("j-1", "dataset", data)
    assert path == tmp_path / "jobs" / "j-1" / "dataset.safetensors"
    assert [p.name for p in path.parent.iterdir()] == ["dataset.safetensors"]  # no temp left
    assert blobs.read("j-1", "dataset") == data
    assert b"".join(blobs.iter_chunks("j-1", "dataset", 1000)) == data
    assert [len(c) for c in blobs.iter_chunks("j-1", "dataset", 1000)] == [1000, 1000, 560]
    with pytest.raises(NotFound, match="no model blob"):
        blobs.iter_chunks("j-1", "model", 1000)
    with pytest.raises(InvalidArgument, match="unknown blob"):
        blobs.read("j-1", "../../etc/passwd")
    with pytest.raises(InvalidArgument, match="not a valid job id"):
        blobs.read("../j-1", "dataset")
