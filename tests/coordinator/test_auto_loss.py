"""Mode auto's loss judge (pscluster.coordinator.auto_loss) on its own: a change counts only
when it stands clear of the noise of the blocks it compares, and a stall, like a rise, only
when two blocks in a row show it against the same older one."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pscluster.coordinator.auto_loss import Block, LossJudge, LossRules
from pscluster.errors import InvalidArgument

BLOCK = 32


def block(mean: float, spread: float) -> list[float]:
    """A block of step losses with the given mean, half of them ``spread`` above it and half
    below (a standard deviation of about ``spread``)."""
    return [mean + (spread if i % 2 else -spread) for i in range(BLOCK)]


def verdicts(means: list[float], spread: float, stalls: bool = True) -> list[str]:
    """Feed blocks of the given means, each of the given spread; the verdicts, in order."""
    judge = LossJudge(LossRules(block=BLOCK))
    said = []
    for mean in means:
        verdict = judge.feed(block(mean, spread), judged=True, stalls=stalls)
        if verdict is not None:
            said.append(verdict)
            judge.restart()
    return said


# Block means as measured (bench/auto_judge.py): digits at lr 0.2 under async, its outputs
# near uniform (each step within about 0.15 of 2.0), and wine with 15% of its labels flipped
# at batch 8 under async, learning, each step's loss spread about as wide as its mean.
STALE = [2.49, 2.07, 2.27, 1.97, 1.99, 2.07]
NOISY_LEARNER = [0.84, 1.03, 0.74, 0.63, 0.71, 0.70, 0.65, 0.57, 0.57, 0.59]


@pytest.mark.parametrize(
    ("means", "spread", "expected"),
    [
        (STALE, 0.15, True),  # tight steps: a stall near the start is staleness
        (NOISY_LEARNER, 0.6, False),  # the same flattening within the noise: no verdict
        (NOISY_LEARNER, 0.01, True),  # and those means, were the steps tight, would be one
    ],
)
def test_a_stall_is_a_verdict_only_clear_of_the_blocks_noise(
    means: list[float], spread: float, expected: bool
) -> None:
    said = verdicts(means, spread)

    assert bool(said) is expected, said
    if expected:
        assert "over two blocks of 32 steps" in said[0]


def test_one_stalled_block_is_no_verdict_two_in_a_row_are() -> None:
    # Digits at batch 8 under async paused for a block, then learned on (1.44, 1.47, then
    # down; bench/auto_judge.py): one block is no verdict, even where the steps are tight
    paused = verdicts([1.97, 1.44, 1.47, 1.0, 0.68], 0.05)
    stuck = verdicts([1.97, 1.44, 1.47, 1.46], 0.05)

    assert paused == []
    assert len(stuck) == 1 and "did not fall (1.44 to 1.46) over two blocks" in stuck[0]


@pytest.mark.parametrize(("spread", "expected"), [(0.05, True), (1.5, False)])
def test_a_rise_is_a_verdict_only_clear_of_the_blocks_noise(spread: float, expected: bool) -> None:
    # Two blocks up from 0.3 to 0.9: a climb when every step says so, a few spikes when the
    # steps spread three times that wide (a model with BatchNorm on noisy rows)
    said = verdicts([1.0, 0.3, 0.9, 0.9], spread, stalls=False)

    assert bool(said) is expected, said
    if expected:
        assert "rose from 0.3 to 0.9 over two blocks of 32 steps" in said[0]


def test_where_the_loss_began_is_the_first_blocks_median_not_a_blow_up_within_it() -> None:
    # Digits at lr 0.2 under async blew up within its first block (a mean of 5.7), then sat
    # at chance (2.35): measured from the mean it would count as settled, and never stall
    judge = LossJudge(LossRules(block=BLOCK))
    judge.feed([2.3] * 28 + [40.0] * 4, judged=True)
    said = [judge.feed(block(mean, 0.06), judged=True) for mean in (2.4, 2.35, 2.36)]

    assert judge.first == 2.3
    assert said[:2] == [None, None]
    assert said[2] is not None and "while still at 103% of where it began" in said[2]


@pytest.mark.parametrize(
    ("means", "expected"),
    [
        ([-1.0, -2.0, -2.0, -2.01, -2.0], None),  # flat below zero: no rise, and no stall
        ([-1.0, -2.0, -0.5, -0.4], "rose from -2 to -0.4"),  # climbing back towards zero
    ],
)
def test_a_negative_loss_is_judged_by_its_size_and_on_rises_only(
    means: list[float], expected: str | None
) -> None:
    # A user's loss may be negative (the log-likelihood of a density)
    said = verdicts(means, 0.01)

    assert said == [] if expected is None else expected in said[0], said


def test_after_a_block_that_rose_or_stalled_none_passes_until_a_restart() -> None:
    # What passes is where mode auto's trial copy may move up to: parameters a stale setting
    # has once set back are no place to go back to, however low a later block's loss
    judge = LossJudge(LossRules(block=BLOCK))
    for mean in (2.3, 2.25, 1.0):  # a stall (doubted), then a fall
        judge.feed(block(mean, 0.01), judged=True)
    troubled = judge.passed
    judge.restart()
    for mean in (0.9, 0.4):
        judge.feed(block(mean, 0.01), judged=True)

    assert troubled is None
    assert judge.passed is not None and judge.passed.mean == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("mean", "spread", "expected"),
    [(0.9, 0.01, True), (1.2, 0.01, False), (0.9, 0.5, False)],
)
def test_a_copy_moves_only_for_a_loss_clearly_below_half(
    mean: float, spread: float, expected: bool
) -> None:
    judge = LossJudge(LossRules(block=BLOCK))

    assert judge.clearly_below(Block.of(block(mean, spread)), loss=2.0) is expected


def test_a_non_finite_loss_is_a_verdict_at_once_whatever_the_noise() -> None:
    judge = LossJudge(LossRules(block=4))

    said = judge.feed([0.5, 0.1, 0.9, 0.4, 0.5, math.inf, 0.4, 0.3], judged=True)

    assert said is not None and "not finite" in said


def test_a_block_holds_its_mean_and_the_standard_error_of_it() -> None:
    measured = Block.of([1.0, 3.0, 1.0, 3.0])

    assert measured.mean == 2.0
    assert measured.error == pytest.approx(math.sqrt(4 / 3) / 2)
    assert Block.of([1.0, math.nan]).error == 0.0


@settings(max_examples=200, deadline=None)
@given(
    level=st.floats(0.05, 5.0),
    spread=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_a_loss_that_only_wanders_within_its_noise_never_rises(
    level: float, spread: float, seed: int
) -> None:
    # Stationary noise around one level: no rise can stand clear of it (stalls aside)
    import random

    rng = random.Random(seed)
    judge = LossJudge(LossRules(block=BLOCK, z=3.0))
    losses = [level * (1 + spread * rng.uniform(-1, 1)) for _ in range(BLOCK * 12)]

    said = judge.feed(losses, judged=True, stalls=False)

    assert said is None


def test_rules_out_of_range_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="out of range"):
        LossRules(z=-1.0)
