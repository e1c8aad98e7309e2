"""The executor's two queues on their own: memberships batched per job, writes per commit."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from pscluster.coordinator.members import RESERVE, MembershipPump
from pscluster.coordinator.sqlite_store import SqliteStore
from pscluster.coordinator.store import JobRecord, LeaseRecord
from pscluster.coordinator.store_writer import StoreWriter
from pscluster.coordinator.writes import LeaseDropped, LeaseSaved, ProgressSaved, Write
from pscluster.errors import Unavailable
from tests.support import wait_for


class Shards:
    """A stand-in for SetMembers on a job's shards: records what was sent, can be slow or
    refuse."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sent: list[tuple[int, list[str]]] = []
        self.fail = False
        self.persisted: list[int] = []

    def send(
        self,
        addresses: Sequence[str],
        job_id: str,
        members: Sequence[str],
        generation: int,
        excluded: Sequence[str],
    ) -> None:
        time.sleep(self.delay)  # a slow round, which changes pile up behind
        if self.fail:
            raise Unavailable("shard ps-0 unreachable")
        assert self.persisted and self.persisted[-1] >= generation, "durable before sent"
        self.sent.append((generation, list(members)))


def pump_for(shards: Shards, roster: dict[str, list[str]]) -> MembershipPump:
    pump = MembershipPump(
        shards.send,
        lambda job_id: (list(roster[job_id]), []) if job_id in roster else None,
        lambda job_id, generation: shards.persisted.append(generation),
    )
    pump.add_job("j", ["ps-0", "ps-1"], generation=7)
    return pump


def test_many_changes_during_one_send_ride_on_the_next_one() -> None:
    # Prepare: each SetMembers round takes 50 ms.
    shards = Shards(delay=0.05)
    roster = {"j": ["a"]}
    pump = pump_for(shards, roster)
    try:
        # Execute: 40 workers join while the first round is under way.
        first = pump.request("j")
        tickets = []
        for i in range(40):
            roster["j"] = sorted([*roster["j"], f"w{i}"])
            tickets.append(pump.request("j"))
        errors = [pump.wait("j", t, timeout=5) for t in [first, *tickets]]

        # Assert: every ticket landed, in far fewer rounds than changes, generations rising.
        assert errors == [None] * 41
        assert len(shards.sent) <= 3
        assert shards.sent[-1][1] == roster["j"]
        generations = [g for g, _ in shards.sent]
        assert generations == sorted(generations) and generations[0] == 8
        # One durable write reserved a block of generations for all these rounds.
        assert shards.persisted == [8 + RESERVE]
    finally:
        pump.close()


def test_an_unchanged_roster_is_not_sent_again() -> None:
    shards = Shards()
    pump = pump_for(shards, {"j": ["a"]})
    try:
        assert pump.wait("j", pump.request("j"), timeout=5) is None
        assert pump.wait("j", pump.request("j"), timeout=5) is None
        assert len(shards.sent) == 1
    finally:
        pump.close()


def test_a_refused_round_is_reported_to_its_waiters_and_retried() -> None:
    # Prepare
    shards = Shards()
    shards.fail = True
    pump = pump_for(shards, {"j": ["a"]})
    try:
        # Execute / Assert: the waiter hears the shard's error...
        error = pump.wait("j", pump.request("j"), timeout=5)
        assert error is not None and "unreachable" in str(error)
        # ...and once the shard answers again, the pump lands the roster on its own.
        shards.fail = False
        wait_for(lambda: shards.sent, 5, what="the pump to send the roster again")
        assert shards.sent[-1][1] == ["a"]
        assert pump.pending() == []
    finally:
        pump.close()


def job(job_id: str) -> JobRecord:
    return JobRecord(job_id, "n", b"", "async", 2, 3, 10, [])


def lease(lease_id: str) -> LeaseRecord:
    return LeaseRecord(lease_id, "j-1", "w", "train", 0, 1, 3, 0, 0)


def test_writes_of_many_callers_share_commits_and_all_land(tmp_path: Path) -> None:
    # Prepare: a store that counts its transactions.
    store = SqliteStore(tmp_path / "state.db")
    store.create_job(job("j-1"))
    commits: list[int] = []
    apply = store.apply

    def counted(writes: Sequence[Write]) -> None:
        commits.append(len(writes))
        time.sleep(0.01)  # a commit's fsync
        apply(writes)

    store.apply = counted  # type: ignore[method-assign]
    writer = StoreWriter(store)

    # Execute: 20 threads each grant and drop leases, waiting for durability every time.
    def worker(i: int) -> None:
        for k in range(5):
            writer.write([LeaseSaved(lease(f"l-{i}-{k}"))])
            writer.write([LeaseDropped(f"l-{i}-{k}"), ProgressSaved("j-1", 0, [k % 3], [])])
        writer.write([LeaseSaved(lease(f"kept-{i}"))])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()

    # Assert: everything is stored, in fewer commits than calls.
    assert sorted(r.lease_id for r in store.leases()) == sorted(f"kept-{i}" for i in range(20))
    assert len(commits) < 20 * 11
    store.close()


def test_a_failed_commit_is_raised_to_its_waiters(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")

    def broken(writes: Sequence[Write]) -> None:
        raise OSError("disk full")

    store.apply = broken  # type: ignore[method-assign]
    writer = StoreWriter(store)
    with pytest.raises(Unavailable, match="disk full"):
        writer.write([LeaseSaved(lease("l-1"))])
    writer.close()
    store.close()


def test_a_batch_is_compacted_to_the_same_end_state() -> None:
    # Prepare: progress saved three times, steps in two pieces, a lease granted then dropped.
    from pscluster.coordinator.store import StepRecord
    from pscluster.coordinator.writes import StepsAppended, compact

    step = StepRecord(0, 1.0, 4, "w", 0, 1.0)
    writes: list[Write] = [
        ProgressSaved("j-1", 0, [0], []),
        LeaseSaved(lease("l-1")),
        StepsAppended("j-1", [step]),
        ProgressSaved("j-1", 0, [0, 1], []),
        LeaseDropped("l-1"),
        StepsAppended("j-1", [step, step]),
        LeaseSaved(lease("l-2")),
        ProgressSaved("j-1", 1, [], [0]),
    ]

    # Execute
    out = compact(writes)

    # Assert: the last progress, the last word on each lease, the steps merged in order.
    assert [type(w).__name__ for w in out] == [
        "StepsAppended",
        "LeaseDropped",
        "LeaseSaved",
        "ProgressSaved",
    ]
    merged = out[0]
    assert isinstance(merged, StepsAppended) and len(merged.steps) == 3
    assert out[-1] == ProgressSaved("j-1", 1, [], [0])
