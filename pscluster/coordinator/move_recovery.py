"""A coordinator that stopped in the middle of moving a job between shards finishes the move
or undoes it when it starts again.

The mover records each move in the store (:class:`~pscluster.coordinator.store.MoveRecord`:
the job's new slices and layout generation) before the first shard adopts, and removes the
record once the job's own record says where it is. A record still there at start means the
move was cut short somewhere between; where exactly, the shards tell: each is asked the layout
generation it holds the job at.

- The job's record already has a generation at or past the move's: the decision was stored;
  only the calls that follow it (drop, settle) may be missing, and they are made again.
- Every shard of the new layout holds the job at the move's generation: each adopted its
  part, and adoption is durable, so the move is committed (rolled forward).
- Otherwise some did not adopt: the move is undone. A shard in both layouts that did adopt
  takes back the copy its adoption replaced, which it keeps in memory until the move settles;
  one that restarted since has lost that copy, and with it the job's old range, so the job
  fails saying so rather than training on a state with a hole in it.
- A shard in both layouts that does not answer leaves the question open: asked again until
  it does, or the deadline passes (the job is left as it is, and the error says why). One
  only in the new layout that does not answer counts as not having adopted: undoing the move
  needs nothing of it, and a copy it may hold is of a generation no plan names again.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import replace

from pscluster.coordinator import store as st
from pscluster.coordinator.move_calls import Held, MoveCalls
from pscluster.coordinator.move_plan import LostRange, MovePlan
from pscluster.coordinator.moves import JobMover

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    COMMITTED = "committed"  # the job's record has the move: finish its calls
    UNDONE = "undone"  # the job's record went back past the move: finish those calls
    FORWARD = "forward"  # every new shard adopted: commit the move
    BACK = "back"  # some new shard did not: undo the move
    ASK_AGAIN = "ask again"  # a shard did not answer


def decide(job: st.JobRecord, move: st.MoveRecord, held: Sequence[int | Held]) -> Verdict:
    """What to do about ``move`` of ``job`` (its stored record), given what each shard of
    the move's new layout holds the job at, in the move's order."""
    if job.layout_generation >= move.layout_generation:
        same = [s.address for s in job.shards] == [s.address for s in move.shards]
        return Verdict.COMMITTED if same else Verdict.UNDONE
    old = {s.address for s in job.shards}
    kept = [h for s, h in zip(move.shards, held, strict=True) if s.address in old]
    if any(h is Held.UNKNOWN for h in kept):
        return Verdict.ASK_AGAIN  # it may have replaced the job (or may yet, from its log)
    if all(h == move.layout_generation for h in held):
        return Verdict.FORWARD
    return Verdict.BACK


def recover(
    mover: JobMover, calls: MoveCalls, job: st.JobRecord, move: st.MoveRecord
) -> tuple[Verdict, str]:
    """Finish or undo ``move``: the verdict and what was done (for ASK_AGAIN: whom it waits
    for). Raises LostRange when the move cannot be undone."""
    new = replace(job, shards=move.shards, layout_generation=move.layout_generation)
    plan = MovePlan(job, new)
    held = calls.generations(plan.new_addresses, job.job_id)
    verdict = decide(job, move, held)
    if verdict is Verdict.ASK_AGAIN:
        silent = [a for a, h in zip(plan.new_addresses, held, strict=True) if h is Held.UNKNOWN]
        return verdict, f"waiting for {', '.join(silent)} to say whether it adopted the job"
    if verdict is Verdict.FORWARD:
        mover.finish(plan)
        return verdict, f"every new shard had adopted it: now at generation {new.layout_generation}"
    if verdict is Verdict.COMMITTED:
        mover.finish(plan)  # committing again changes nothing; the calls after it may
        return verdict, "the move was committed; its last calls were made again"
    if verdict is Verdict.UNDONE:
        fresh = [a for a in plan.new_addresses if a not in plan.old_addresses]
        calls.drop(fresh, job.job_id, job.layout_generation)
        calls.settle(plan.old_addresses, job.job_id, job.layout_generation)
        mover.forget(job.job_id)
        return verdict, "the move had been undone; its last calls were made again"
    kept = [
        (a, h) for a, h in zip(plan.new_addresses, held, strict=True) if a in plan.old_addresses
    ]
    replaced = [a for a, h in kept if h == move.layout_generation]
    # One already past the move took its copy back before the coordinator stopped.
    went_back = any(isinstance(h, int) and h > move.layout_generation for _, h in kept)
    lost = mover.undo(plan, replaced, went_back)
    if lost:
        raise LostRange(
            f"a move between shards was cut short by a coordinator restart, and shard(s) "
            f"{', '.join(lost)} restarted too after taking their new part: the job's old "
            "range they held is gone, so it cannot go on (resubmit it, or fine-tune from its "
            "last fetched model)"
        )
    return verdict, "not every new shard had adopted it: moved back to its old shards"
