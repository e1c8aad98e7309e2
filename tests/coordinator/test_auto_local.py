"""Mode "auto"'s local steps: the number from the measured phases, with hysteresis, and the
controller choosing them, and leaving them on the loss's verdict."""

from __future__ import annotations

import pytest

from pscluster.coordinator.auto import ASYNC, SYNC, AutoConsistency, Observation
from pscluster.coordinator.auto_local import CommunicationMeter, LocalStepRules, local_steps_for
from pscluster.coordinator.auto_setting import Consistency
from pscluster.coordinator.spec import auto_local_steps
from pscluster.errors import InvalidArgument
from pscluster.server.consistency import TrialStep
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2

RULES = LocalStepRules()
EQUAL = {"a": 0.02, "b": 0.021, "c": 0.019, "d": 0.02}


@pytest.mark.parametrize(
    ("ratio", "current", "expected"),
    [
        (None, 1, 1),  # nothing measured
        (0.3, 1, 1),  # below enter
        (0.5, 1, 2),  # at enter: the least number, 2
        (1.0, 1, 4),  # 1.0 / 4 = aim
        (5.0, 1, 8),  # capped at max_steps
        (0.45, 2, 2),  # between the way out (0.4) and the way in: stays
        (0.35, 4, 1),  # below the way out: ends
        (1.5, 4, 4),  # 6 is less than twice 4: not worth a switch
        (4.0, 2, 8),  # 16, capped: twice 2 at least
    ],
)
def test_the_number_of_local_steps_follows_the_ratio_with_hysteresis(
    ratio: float | None, current: int, expected: int
) -> None:
    assert local_steps_for(ratio, current, RULES)[0] == expected


def test_the_reason_names_the_ratio_and_the_number() -> None:
    _, why = local_steps_for(1.0, 1, RULES)

    assert why == "a window's pull and push take 1.00x a batch's compute, so 4 local steps per push"


def test_the_meter_counts_one_pull_and_push_per_window_of_local_steps() -> None:
    meter = CommunicationMeter(alpha=1.0)
    phases = {"pull": 0.03, "push": 0.05, "forward": 0.02, "backward": 0.02, "wait": 9.0}

    meter.add(phases, batches=8, windows=2, local_steps=4)  # two windows of four

    assert meter.window_seconds == pytest.approx(0.04)
    assert meter.batch_seconds == pytest.approx(0.005)
    assert meter.ratio == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("windows", "local_steps", "per_window"),
    [
        # 8 local steps in force, but leases of 3 batches: 4 windows, each ended at its
        # lease's end (12 / 8 = 1.5 windows would make each look 2.7x as long)
        (4, 8, 0.02),
        (0, 8, 0.0533),  # a worker that does not count them: 12 / 8 windows, as in force
        (12, 1, 0.00667),  # one step per push
    ],
)
def test_the_meter_takes_the_windows_the_worker_counted(
    windows: int, local_steps: int, per_window: float
) -> None:
    meter = CommunicationMeter(alpha=1.0)
    phases = {"pull": 0.04, "push": 0.04, "forward": 0.006, "backward": 0.006}

    meter.add(phases, batches=12, windows=windows, local_steps=local_steps)

    assert meter.window_seconds == pytest.approx(per_window, rel=1e-2)
    assert meter.batch_seconds == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("batch_counts", "compression", "expected"),
    [
        ([4, 4, 3], "", 4),  # a window ends at its lease's end: 8 would be a number only
        ([40, 39], "", 8),  # PSC_AUTO_MAX_LOCAL_STEPS rules
        (None, "", 8),  # a data source not sized yet: the setting alone
        ([40], "dgc", 1),  # dgc's own momentum on the workers: none
    ],
)
def test_auto_gives_no_more_local_steps_than_a_partition_has_batches(
    batch_counts: list[int] | None, compression: str, expected: int
) -> None:
    spec = co_pb2.JobSpec(compression=common_pb2.CompressionConfig(name=compression))

    assert auto_local_steps(spec, 8, batch_counts) == expected


def test_rules_out_of_range_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        LocalStepRules(enter=0.2, aim=0.5)


def observe_talky(
    auto: AutoConsistency, start: float, seconds: float, losses: list[float], talk: float = 2.0
) -> list[Consistency]:
    """Reports every 0.25 s whose pull + push per window are ``talk`` times the compute of a
    batch (at the local steps in force); the settings switched to."""
    switched = []
    per_report = 4
    for i in range(int(seconds / 0.25)):
        k = auto.current.local_steps
        compute = 0.01 * per_report
        phases = {"pull": talk * 0.01 * per_report / k / 2, "push": 0.0, "forward": compute}
        phases["push"] = phases["pull"]
        chunk = losses[i * per_report : (i + 1) * per_report]
        switch = auto.observe(Observation(start + i * 0.25, EQUAL, chunk, 4, (), phases, 4))
        if switch is not None and switch.reason:
            switched.append(switch.to)
    return switched


FALLING = [2.3 * 0.99**i for i in range(2000)]
SYNC8, ASYNC8 = Consistency("sync", local_steps=8), Consistency("async", local_steps=8)


def test_a_job_whose_pulls_and_pushes_outweigh_compute_starts_in_sync_with_local_steps() -> None:
    # Prepare
    auto = AutoConsistency(0.0)

    # Execute: 45 s of reports, the loss falling all along
    switched = observe_talky(auto, 0.0, 45.0, FALLING)

    # Assert: sync with 8 local steps at the first report, and async (with them) only once
    # the staleness-free and bounded rungs have each held for 20 s
    assert switched == [SYNC8, ASYNC8]
    assert auto.current.describe() == "async with 8 local steps"


def test_the_first_reason_says_why_local_steps_and_why_sync() -> None:
    auto = AutoConsistency(0.0)

    first = auto.observe(
        Observation(0.0, {}, [2.3], 4, (), {"pull": 0.02, "push": 0.02, "forward": 0.01}, 1)
    )

    assert first is not None and first.to == SYNC8 and first.trial is TrialStep.BEGIN
    assert first.reason == (
        "sync -> sync with 8 local steps: a window's pull and push take 4.00x a batch's "
        "compute, so 8 local steps per push; with a barrier once per 8 batches sync waits little"
    )


def test_a_straggler_gets_no_backup_worker_beside_local_steps_but_does_without_them() -> None:
    # Prepare: a job in sync with local steps, one worker 3x the others
    auto = AutoConsistency(0.0)
    busy = {"a": 0.02, "b": 0.021, "c": 0.019, "slow": 0.06}
    talky = {"pull": 0.02, "push": 0.02, "forward": 0.01}
    quiet = {"pull": 0.0002, "push": 0.0002, "forward": 0.01}
    auto.observe(Observation(0.0, {}, [2.3], 4, ("a", "b", "c", "slow"), talky, 1))

    # Execute: 5 s of reports with communication that calls for local steps; then 15 s more
    # once it no longer does (the smoothed ratio comes down over a few reports)
    talking = [auto.observe(Observation(t / 4, busy, [2.2], 4, (), talky, 4)) for t in range(20)]
    after_talking = auto.current
    quieter = [
        s.to
        for t in range(20, 80)
        if (s := auto.observe(Observation(t / 4, busy, [2.2], 4, (), quiet, 4))) and s.reason
    ]

    # Assert: no backup while local steps last (a late push would waste their window); the
    # backup for the straggler comes with one step per push
    assert all(s is None or not s.reason for s in talking) and after_talking == SYNC8
    assert all(c.backup_workers == 0 for c in quieter if c.local_steps > 1)
    assert quieter[-1] == Consistency("sync", backup_workers=1)


def test_a_verdict_under_sync_with_local_steps_ends_them_for_a_hold_and_goes_back() -> None:
    # Prepare: a job in sync with local steps
    auto = AutoConsistency(0.0)
    observe_talky(auto, 0.0, 5.0, FALLING)
    assert auto.current == SYNC8

    # Execute: the loss climbs under them (two blocks of 32 steps); then 25 s more
    switch = auto.observe(Observation(6.0, EQUAL, [0.5] * 32 + [3.0] * 64, 4))
    later = observe_talky(auto, 6.25, 25.0, FALLING[200:])

    # Assert: back to the copy, one step per push for 20 s, then local steps again
    assert switch is not None and switch.to == SYNC and switch.trial is TrialStep.UNDO
    assert switch.reason.startswith("sync with 8 local steps -> sync: the mean training loss rose")
    assert "one step per push for 20 s; the parameters go back to where" in switch.reason
    assert later == [SYNC8]


def test_a_verdict_under_async_with_local_steps_keeps_them_in_sync_and_the_copy() -> None:
    # Prepare: a job that reached async with local steps
    auto = AutoConsistency(0.0)
    observe_talky(auto, 0.0, 45.0, FALLING)
    assert auto.current == ASYNC8 and auto.trial_since is not None
    copied = auto.trial_since

    # Execute: a verdict under async; then another under sync with local steps
    first = auto.observe(Observation(46.0, EQUAL, [0.5] * 32 + [3.0] * 64, 4))
    kept = auto.trial_since
    second = auto.observe(Observation(47.0, EQUAL, [0.5] * 32 + [3.0] * 64, 4))

    # Assert: staleness goes first, the copy stays for the trial of the local steps; then
    # they go too, back to the same copy
    assert first is not None and first.to == SYNC8 and first.trial is TrialStep.UNDO_KEEP
    assert "no staleness for 20 s" in first.reason
    assert kept == copied and second is not None
    assert second.to == SYNC and second.trial is TrialStep.UNDO
    assert "one step per push for 20 s" in second.reason and auto.trial_since is None


def test_a_job_that_cannot_take_local_steps_is_never_given_them() -> None:
    auto = AutoConsistency(0.0, local_steps=1)

    switched = observe_talky(auto, 0.0, 5.0, [2.3 * 0.99**i for i in range(400)])

    assert switched == [ASYNC]


def test_cheap_communication_keeps_one_step_per_push() -> None:
    auto = AutoConsistency(0.0)

    switched = observe_talky(auto, 0.0, 5.0, [2.3 * 0.99**i for i in range(400)], talk=0.2)

    assert switched == [ASYNC]


def test_a_slow_start_under_sync_with_local_steps_is_no_verdict_but_a_rise_is() -> None:
    # Prepare: a job in sync with local steps
    auto = AutoConsistency(0.0)
    observe_talky(auto, 0.0, 0.5, FALLING)
    assert auto.current == SYNC8

    # Execute: two blocks that fall 10% (digits at lr 0.05 did), then two that climb
    slow = auto.observe(Observation(1.0, EQUAL, [2.3] * 32 + [2.07] * 32, 4))
    climb = auto.observe(Observation(1.1, EQUAL, [2.07] * 32 + [4.0] * 64, 4))

    # Assert
    assert slow is None or not slow.reason
    assert climb is not None and climb.to == SYNC and "rose" in climb.reason


def test_a_resumed_job_that_calls_for_local_steps_resumes_in_sync_with_them() -> None:
    auto = AutoConsistency(0.0, resumed=True, start=ASYNC)

    first = auto.observe(
        Observation(0.0, {}, [0.4], 4, (), {"pull": 0.02, "push": 0.02, "forward": 0.01}, 1)
    )

    # A copy taken anew: a verdict under them goes back to this point
    assert first is not None and first.to == SYNC8 and first.trial is TrialStep.BEGIN
    assert first.reason.startswith("async -> sync with 8 local steps: the coordinator restarted")
