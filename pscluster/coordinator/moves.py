"""Moving a running job's ranges to other shards, between two of its steps.

The steps, each over every shard of the job at once:

1. **Hold.** The old shards hold every member's next pull (pushes still land); the mover polls
   until no member is in the middle of a step on any shard (each waits in a pull, or has had
   its push decided since its last pull). The job is then between two steps everywhere: no
   push is in flight and every worker has what it pushed acknowledged (a sync step may still
   be open, waiting for a member's next push: it moves too, cut like the rest).
2. **Export** each old shard's *skeleton*: its state for the job but the per-value tensors
   (values, optimizer moments: nearly all of a dense job) and the tables' rows, which stay on
   the shards for now.
3. **Cut again** (:func:`~pscluster.coordinator.recut.recut_skeletons`) over the new ranges,
   and **adopt** on every new shard at once under the next layout generation, durably: each
   gets its skeleton, keeps the part of its new range it held already, and reads the rest
   itself from the old shards that hold it (:mod:`pscluster.coordinator.recut_moves`), and
   the rows of each table it owns now from every old shard
   (:mod:`pscluster.server.tables.moving_rows`); the bytes never pass through here. A shard
   in both layouts keeps the copy its adoption replaced, retired.
4. **Commit.** The store points the job at its new slices and generation; the shards it left
   drop it (MOVED) and the others their retired copies (SETTLED). Their held pulls, and the
   replaced ones, answer "layout moved": each worker fetches the new plan and pulls again.

A failure before any old shard's job was replaced (a worker never reached the boundary, a new
shard unreachable, a state that cannot be cut) rolls back: the new shards drop what they
adopted and the old ones let their pulls go. After a replacement it rolls back by having each
replaced shard take its retired copy back under a still newer generation. Either way no push
a worker had acknowledged is lost: every acknowledged push is in the old shards' copies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from pscluster.coordinator import store as st
from pscluster.coordinator.move_calls import MoveCalls
from pscluster.coordinator.move_plan import Cut, LostRange, MoveFailed, MovePlan
from pscluster.coordinator.recut import State, boundary_mismatch
from pscluster.server.durability.checkpoint import CheckpointError
from pscluster.shard_client import ShardClient, ShardError
from pscluster.shard_client.layout import state_from_bytes
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_SECONDS = 0.005
# How long a job whose shards were not at one step boundary trains between two holds.
GO_ON_SECONDS = 0.05


class JobMover:
    """Moves one job at a time; ``commit`` writes the store and tells the membership sender
    where the job is now (both the caller's). ``journal`` records each move from before its
    first adoption until it is committed or undone, for a coordinator that stops meanwhile
    (:mod:`pscluster.coordinator.move_recovery`)."""

    def __init__(
        self,
        shards: ShardClient,
        commit: Callable[[st.JobRecord], None],
        quiesce_seconds: float,
        journal: st.JobStore,
    ) -> None:
        self._shards = shards
        self._calls = MoveCalls(shards)
        self._commit = commit
        self._quiesce_seconds = quiesce_seconds
        self._journal = journal

    def move(self, plan: MovePlan) -> co_pb2.JobMove:
        job, new = plan.job, plan.new
        reply = co_pb2.JobMove(job_id=job.job_id, layout_generation=job.layout_generation)
        reply.shard_ids.extend(s.shard_id or s.address for s in job.shards)
        began = time.perf_counter()
        try:
            skeletons, held = self._quiet_skeletons(plan)
            exported = time.perf_counter()
            reply.quiesce_seconds = held - began
            reply.export_seconds = exported - held
            reply.state_bytes = self._adopt(plan, skeletons, reply)
            reply.adopt_seconds = time.perf_counter() - exported - reply.recut_seconds
        except MoveFailed as e:
            reply.reason = str(e)
            log.warning("job %s stays on its shards: %s", job.job_id, e)
            return reply
        reply.pause_seconds = time.perf_counter() - held
        reply.moved = True
        reply.layout_generation = new.layout_generation
        del reply.shard_ids[:]
        reply.shard_ids.extend(s.shard_id or s.address for s in new.shards)
        return reply

    def _quiet_skeletons(self, plan: MovePlan) -> tuple[list[State], float]:
        """The old shards' skeletons once every member is between two steps on every one and
        the shards are at one step boundary (:func:`~pscluster.coordinator.recut.
        boundary_mismatch`), and when the last hold began to export. Until then the hold is
        let go for :data:`GO_ON_SECONDS`, so that what brings the shards together can land (a
        SetMembers on its way, the pushes a step waits for), and taken again."""
        deadline = time.monotonic() + self._quiesce_seconds
        while True:
            self._hold(plan, deadline)
            held = time.perf_counter()
            skeletons = self._exported(plan)
            mismatch = boundary_mismatch(skeletons)
            if mismatch is None:
                return skeletons, held
            self._release(plan)
            if time.monotonic() >= deadline:
                raise MoveFailed(
                    f"{mismatch} for {self._quiesce_seconds:.0f}s; the job goes on on its old "
                    "shards"
                )
            time.sleep(GO_ON_SECONDS)

    def _exported(self, plan: MovePlan) -> list[State]:
        """The old shards' skeletons (the job held on them); released on failure."""
        job_id = plan.job.job_id
        try:
            return self._parallel(
                lambda a: state_from_bytes(self._shards.export_job(a, job_id, skeleton=True)),
                plan.old_addresses,
            )
        except MoveFailed:
            self._release(plan)
            raise

    def _hold(self, plan: MovePlan, deadline: float) -> None:
        """Hold the job's pulls on its shards until every member is between two steps on
        every one (MoveFailed, released, past ``deadline``)."""
        job_id, addresses = plan.job.job_id, plan.old_addresses
        hold = ps_pb2.HOLD_ACTION_HOLD
        while True:
            try:
                replies = self._parallel(
                    lambda a: self._shards.hold_job(a, job_id, hold), addresses
                )
            except MoveFailed:
                self._release(plan)
                raise
            missing = sorted({m for r in replies for m in r.members if m not in r.waiting})
            if not missing:
                return
            if time.monotonic() >= deadline:
                self._release(plan)
                raise MoveFailed(
                    f"worker(s) {', '.join(missing)} did not reach the end of a step within "
                    f"{self._quiesce_seconds:.0f}s; the job goes on on its old shards"
                )
            time.sleep(POLL_SECONDS)

    def _adopt(self, plan: MovePlan, skeletons: list[State], reply: co_pb2.JobMove) -> int:
        """Adopt the cut states on every new shard at once, commit, and drop the job from the
        shards it left; the bytes sent, table rows included (``reply`` gets the recut's
        time)."""
        began = time.perf_counter()
        try:
            cut = Cut.of(skeletons, plan)
        except MoveFailed:
            self._release(plan)
            raise
        reply.recut_seconds = time.perf_counter() - began
        new = plan.new
        self._journal.begin_move(st.MoveRecord(new.job_id, new.layout_generation, new.shards))
        results = self._shards.each(
            [(a, partial(self._install, plan, cut, i)) for i, a in enumerate(plan.new_addresses)]
        )
        failed = [r for r in results if isinstance(r, ShardError)]
        if failed:
            replaced = [
                a for a, r in zip(plan.new_addresses, results, strict=True)
                if a in plan.old_addresses and not isinstance(r, ShardError)
            ]  # fmt: skip
            lost = self.undo(plan, replaced)
            if lost:
                raise LostRange(
                    f"a move between shards failed ({failed[0]}), and shard(s) "
                    f"{', '.join(lost)} could not take back the copy of the job's old range "
                    "they kept (restarted since their adoption): that range is gone, so the "
                    "job cannot go on (resubmit it, or fine-tune from its last fetched model)"
                ) from failed[0]
            back = "; moved back to its old shards" if replaced else ""
            raise MoveFailed(f"{failed[0]}{back}") from failed[0]
        self.finish(plan)
        return cut.sent_bytes + sum(r.rows_bytes for r in results if not isinstance(r, ShardError))

    def finish(self, plan: MovePlan) -> None:
        """Every new shard adopted: commit, drop the job from the shards it left, and let the
        shards in both layouts forget the copy their adoption replaced."""
        job_id, generation = plan.job.job_id, plan.new.layout_generation
        self._commit(plan.new)
        self._journal.end_move(job_id)
        left = [a for a in plan.old_addresses if a not in plan.new_addresses]
        self._calls.drop(left, job_id, generation)
        kept = [a for a in plan.new_addresses if a in plan.old_addresses]
        self._calls.settle(kept, job_id, generation)

    def forget(self, job_id: str) -> None:
        """The job's move is resolved: its record in the journal goes."""
        self._journal.end_move(job_id)

    def undo(self, plan: MovePlan, replaced: list[str], went_back: bool = False) -> list[str]:
        """The move does not happen: the job stays on (or goes back to) its old shards, and
        the shards only in the new layout drop what they adopted. ``went_back``: some old
        shard already took its copy back (a recovery's), so the job goes on under the newer
        generation too. Returns the replaced shards that could not take their copy back
        (:meth:`MoveCalls.move_back`)."""
        job_id = plan.job.job_id
        fresh = [a for a in plan.new_addresses if a not in plan.old_addresses]
        lost: list[str] = []
        if replaced or went_back:
            newer = plan.new.layout_generation + 1
            lost = self._calls.move_back(plan.job, newer, replaced, fresh, self._commit)
        else:
            self._calls.drop(fresh, job_id, plan.new.layout_generation)
            self._calls.release(plan.old_addresses, job_id)
        self._journal.end_move(job_id)
        return lost

    def _install(self, plan: MovePlan, cut: Cut, index: int) -> ps_pb2.AdoptJobReply:
        """New shard ``index`` adopts its skeleton, keeping its local pieces and reading the
        others itself from the old shards that hold them, and the rows of the job's tables it
        owns now from every old shard (the bytes do not pass through here)."""
        job = plan.job
        segments = [
            ps_pb2.DenseSegment(
                start=p.start,
                length=p.length,
                local=p.local,
                source="" if p.local else plan.old_addresses[p.source],
            )
            for p in cut.pieces[index]
        ]
        address = plan.new_addresses[index]
        tables = [
            ps_pb2.TableSource(address=a, local=a == address) for a in plan.old_addresses
        ] if cut.tables else []  # fmt: skip
        return self._shards.adopt_job(
            address,
            job.job_id,
            plan.new.layout_generation,
            cut.images[index],
            segments,
            source_generation=job.layout_generation,
            table_sources=tables,
        )

    def _release(self, plan: MovePlan) -> None:
        self._calls.release(plan.old_addresses, plan.job.job_id)

    def _parallel(self, fn: Callable[[str], T], addresses: Sequence[str]) -> list[T]:
        """``fn`` on every address at once on the shard client's threads, in order, once all
        have ended; MoveFailed with the first failure (a ShardError names its shard)."""
        try:
            results = self._shards.each([(a, partial(fn, a)) for a in addresses])
        except CheckpointError as e:  # an exported state that does not parse
            raise MoveFailed(f"a shard's exported state cannot be read: {e}") from e
        done: list[T] = []
        for result in results:
            if isinstance(result, ShardError):
                raise MoveFailed(str(result)) from result
            done.append(result)
        return done
