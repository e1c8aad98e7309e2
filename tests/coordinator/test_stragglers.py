"""Straggler detection and the lease-side mitigations, as pure logic (no sockets, no clock)."""

from __future__ import annotations

import itertools

import pytest

from pscluster.coordinator.lease_values import TRAIN
from pscluster.coordinator.leases import LeaseBook, Unit
from pscluster.coordinator.relief import StragglerRelief
from pscluster.coordinator.stragglers import MIN_BATCHES, SpeedTracker, StragglerSettings
from pscluster.errors import InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2


def feed(tracker: SpeedTracker, speeds: dict[str, float], now: float, batches: int = 20) -> None:
    for worker, seconds in speeds.items():
        tracker.record(worker, batches, seconds * batches, seconds * batches, now)


class TestDetection:
    def test_a_worker_k_times_slower_than_the_median_of_the_others_is_flagged(self) -> None:
        tracker = SpeedTracker(StragglerSettings(factor=2.0))
        feed(tracker, {"a": 0.02, "b": 0.021, "c": 0.019, "slow": 0.1}, now=1.0)
        changes = tracker.assess(now=1.0)
        assert [(c.worker_id, c.kind) for c in changes] == [("slow", "straggler")]
        assert "5.0x the median" in changes[0].message
        assert tracker.stragglers() == ["slow"]
        assert tracker.share("slow") == pytest.approx(0.2)
        assert tracker.share("a") == 1.0

    def test_two_workers_are_enough(self) -> None:
        # The median of the *others*: with two workers, the median of both could never flag.
        tracker = SpeedTracker(StragglerSettings(factor=2.0))
        feed(tracker, {"a": 0.02, "slow": 0.1}, now=1.0)
        assert [c.worker_id for c in tracker.assess(now=1.0)] == ["slow"]

    def test_nobody_is_judged_on_too_few_batches_or_alone(self) -> None:
        tracker = SpeedTracker(StragglerSettings())
        feed(tracker, {"a": 0.02, "slow": 0.1}, now=1.0, batches=MIN_BATCHES - 1)
        assert tracker.assess(now=1.0) == []
        alone = SpeedTracker(StragglerSettings())
        feed(alone, {"only": 0.5}, now=1.0)
        assert alone.assess(now=1.0) == []

    def test_a_recovered_worker_is_cleared_below_the_hysteresis_band(self) -> None:
        tracker = SpeedTracker(StragglerSettings(factor=2.0, alpha=1.0))
        feed(tracker, {"a": 0.02, "b": 0.02, "w": 0.1}, now=1.0)
        tracker.assess(now=1.0)
        feed(tracker, {"w": 0.035}, now=2.0)  # 1.75x: inside the band, still flagged
        assert tracker.assess(now=2.0) == [] and tracker.is_straggler("w")
        feed(tracker, {"w": 0.02}, now=3.0)
        assert [(c.worker_id, c.kind) for c in tracker.assess(now=3.0)] == [("w", "recovered")]

    def test_the_ewma_weighs_a_report_of_n_batches_as_n_updates(self) -> None:
        settings = StragglerSettings(alpha=0.5)
        at_once, one_by_one = SpeedTracker(settings), SpeedTracker(settings)
        at_once.record("w", 1, 1.0, 1.0, 0.0)
        one_by_one.record("w", 1, 1.0, 1.0, 0.0)
        at_once.record("w", 3, 6.0, 6.0, 1.0)
        for _ in range(3):
            one_by_one.record("w", 1, 2.0, 2.0, 1.0)
        assert at_once.step_seconds("w") == pytest.approx(one_by_one.step_seconds("w"))

    def test_ssp_exclusion_waits_for_the_grace_period(self) -> None:
        tracker = SpeedTracker(StragglerSettings(grace_seconds=5.0))
        feed(tracker, {"a": 0.02, "b": 0.02, "slow": 0.2}, now=10.0)
        tracker.assess(now=10.0)
        assert tracker.excluded(now=14.9) == []
        assert tracker.excluded(now=15.0) == ["slow"]

    def test_a_silent_worker_leaves_the_median(self) -> None:
        tracker = SpeedTracker(StragglerSettings(), active_seconds=10.0)
        feed(tracker, {"gone": 0.001}, now=0.0)
        feed(tracker, {"a": 0.02, "b": 0.03}, now=20.0)
        # Against the departed fast worker, a and b would both be 20x slower.
        assert tracker.assess(now=20.0) == []

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"factor": 1.0}, "stragglers.factor=1.0"),
            ({"alpha": 2.0}, "stragglers.alpha=2.0"),
            ({"grace_seconds": -3.0}, "stragglers.grace_seconds=-3.0"),
        ],
    )
    def test_settings_are_checked(self, fields: dict[str, float], message: str) -> None:
        args = {"factor": 0.0, "alpha": 0.0, "no_mitigation": False, "grace_seconds": 0.0}
        with pytest.raises(InvalidArgument, match=message):
            StragglerSettings.parse(**{**args, **fields})  # type: ignore[arg-type]

    def test_zeros_mean_the_defaults(self) -> None:
        assert StragglerSettings.parse(0.0, 0.0, False, 0.0) == StragglerSettings()


def counter() -> LeaseBook:
    ids = itertools.count()
    return LeaseBook(new_id=lambda: f"l{next(ids)}")


class TestLeaseUnits:
    def test_a_straggler_gets_its_share_and_the_rest_stays_free(self) -> None:
        book = counter()
        book.add_job("j", epochs=1, partitions=2, batch_counts=[10, 10])
        lease = book.acquire("slow", share=lambda job: 0.25)
        assert lease is not None
        assert (lease.partition, lease.first_batch, lease.end_batch) == (0, 0, 2)
        fast = book.acquire("fast")
        assert fast is not None
        assert (fast.partition, fast.first_batch, fast.end_batch) == (0, 2, 10)

    def test_an_epoch_closes_only_when_every_unit_of_every_partition_is_done(self) -> None:
        book = counter()
        book.add_job("j", epochs=2, partitions=1, batch_counts=[4])
        head = book.acquire("slow", share=lambda job: 0.5)
        tail = book.acquire("fast")
        assert head is not None and tail is not None
        assert book.complete("fast", tail.lease_id).epoch_closed is None
        assert book.complete("slow", head.lease_id).epoch_closed == 0
        nxt = book.acquire("fast")
        assert nxt is not None and nxt.kind != TRAIN  # the evaluation of epoch 0 comes first

    def test_a_split_hands_the_rest_of_a_running_lease_on(self) -> None:
        book = counter()
        book.add_job("j", epochs=1, partitions=1, batch_counts=[10])
        slow = book.acquire("slow")
        assert slow is not None and book.acquire("fast") is None
        assert book.split(slow.lease_id, 3) == Unit(0, 3, 10)
        shortened = book.lease(slow.lease_id)
        assert shortened is not None and shortened.end_batch == 3
        rest = book.acquire("fast")
        assert rest is not None and (rest.first_batch, rest.end_batch) == (3, 10)
        assert book.split(slow.lease_id, 3) is None  # nothing left to hand on
        book.complete("fast", rest.lease_id)
        assert book.complete("slow", slow.lease_id).epoch_closed == 0

    def test_a_released_lease_keeps_the_batches_reported_but_redoes_the_last(self) -> None:
        book = counter()
        book.add_job("j", epochs=1, partitions=1, batch_counts=[10])
        lease = book.acquire("dies")
        assert lease is not None
        book.release_worker("dies", "timed out", position=6)
        again = book.acquire("other")
        assert again is not None and (again.first_batch, again.end_batch) == (6, 10)
        book.release_worker("other", "timed out", position=10)
        last = book.acquire("third")
        assert last is not None and (last.first_batch, last.end_batch) == (9, 10)

    def test_batch_counts_must_fit_the_partitions(self) -> None:
        with pytest.raises(InvalidArgument, match="batch_counts"):
            counter().add_job("j", epochs=1, partitions=2, batch_counts=[3])


def progress(lease_id: str, position: int, batches: int, seconds: float) -> co_pb2.LeaseProgress:
    return co_pb2.LeaseProgress(
        lease_id=lease_id,
        position=position,
        batches=batches,
        busy_seconds=batches * seconds,
        step_seconds=batches * seconds,
    )


class TestRelief:
    def make(self, mode: str = "async", mitigate: bool = True) -> tuple[LeaseBook, StragglerRelief]:
        book = counter()
        book.add_job("j", epochs=1, partitions=4, batch_counts=[40] * 4)
        relief = StragglerRelief(progress_seconds=0.05)
        relief.add_job("j", mode, StragglerSettings(mitigate=mitigate, grace_seconds=1.0))
        return book, relief

    def run(self, book: LeaseBook, relief: StragglerRelief, now: float) -> dict[str, str]:
        """Workers a, b, c at 10 ms a batch and slow at 100 ms, each on a lease."""
        leases = {}
        for worker in ("a", "b", "c", "slow"):
            lease = book.acquire(worker)
            assert lease is not None
            relief.granted(lease, 0.0)
            leases[worker] = lease.lease_id
        for worker, seconds in (("a", 0.01), ("b", 0.01), ("c", 0.01), ("slow", 0.1)):
            lease = book.lease(leases[worker])
            relief.on_progress("j", worker, lease, progress(leases[worker], 20, 20, seconds), now)
        return leases

    def test_an_idle_worker_takes_over_the_rest_of_a_stragglers_lease(self) -> None:
        book, relief = self.make()
        leases = self.run(book, relief, now=2.0)
        assert relief.stragglers("j") == ["slow"]
        split = relief.pick_split("j", book.train_leases("j"), "idle", now=2.0)
        assert split is not None and split.lease.lease_id == leases["slow"]
        # The straggler keeps the batches it reaches before it hears (one report interval).
        assert split.new_end == 20 + 1 + 1  # 100 ms a batch, a report every 50 ms
        assert "straggler" in split.why
        assert relief.pick_split("j", book.train_leases("j"), "slow", now=2.0) is None

    def test_no_mitigation_detects_but_does_not_act(self) -> None:
        book, relief = self.make(mode="ssp", mitigate=False)
        self.run(book, relief, now=2.0)
        assert relief.stragglers("j") == ["slow"]
        assert relief.pick_split("j", book.train_leases("j"), "idle", now=2.0) is None
        assert relief.share("j", "slow", now=2.0) == 1.0
        assert relief.excluded("j", now=10.0) == []

    def test_ssp_exclusion_is_reported_once_per_change(self) -> None:
        book, relief = self.make(mode="ssp")
        self.run(book, relief, now=2.0)
        assert relief.exclusion_changed("j", now=2.5) is None  # within the grace period
        assert relief.exclusion_changed("j", now=3.0) == (["slow"], [])
        assert relief.exclusion_changed("j", now=3.5) is None
        speeds = {s.worker_id: s for s in relief.speeds("j", now=3.5)}
        assert speeds["slow"].straggler and speeds["slow"].excluded
        assert speeds["slow"].slowdown == pytest.approx(10.0)

    def test_in_plain_sync_a_straggler_gets_nothing_but_probes(self) -> None:
        book, relief = self.make(mode="sync")
        self.run(book, relief, now=2.0)  # leases granted at t=0
        assert relief.share("j", "slow", now=2.0) == 0.0
        assert relief.share("j", "slow", now=5.0) == pytest.approx(0.1)  # a probe
        assert relief.share("j", "a", now=2.0) == 1.0

    def test_a_straggler_alone_is_cleared_and_gets_work(self) -> None:
        book, relief = self.make(mode="sync")
        self.run(book, relief, now=2.0)
        # The fast workers go quiet (left the job): nobody is left to be slower than.
        lease = book.lease_of("slow")
        changes = relief.on_progress("j", "slow", lease, progress("x", 30, 10, 0.1), now=13.0)
        assert [(c.worker_id, c.kind) for c in changes] == [("slow", "recovered")]
        assert relief.share("j", "slow", now=13.0) == 1.0

    def test_removing_a_job_forgets_its_leases(self) -> None:
        book, relief = self.make()
        leases = self.run(book, relief, now=2.0)
        speeds = relief.remove_job("j", now=2.0)
        assert [s.worker_id for s in speeds] == ["a", "b", "c", "slow"]
        assert all(relief.position(lease_id) == 0 for lease_id in leases.values())
        assert relief.job_ids() == []

    def test_a_lease_past_its_deadline_is_split_without_a_flag(self) -> None:
        book, relief = self.make()
        leases = self.run(book, relief, now=2.0)
        # c's lease: 40 batches at 10 ms take 0.4 s; the deadline is 2x that plus 2 s slack.
        lease = book.lease(leases["c"])
        assert lease is not None
        assert relief.pick_split("j", [lease], "idle", now=2.7) is None
        late = relief.pick_split("j", [lease], "idle", now=3.0)
        assert late is not None and "deadline" in late.why
