"""Moving a running job's ranges to other shards, between two of its steps.

The steps, each over every shard of the job at once:

1. **Hold.** The old shards hold every member's next pull (pushes still land); the mover polls
   until no member is in the middle of a step on any shard (each waits in a pull, or has had
   its push decided since its last pull). The job is then between two steps everywhere: no
   push is in flight and every worker has what it pushed acknowledged (a sync step may still
   be open, waiting for a member's next push: it moves too, cut like the rest).
2. **Export.** Each old shard's whole state for the job (its checkpoint image).
3. **Cut again** (:func:`~pscluster.coordinator.recut.recut`) over the new ranges, and
   **adopt** on the new shards under the next layout generation, durably. Shards only in the
   new layout adopt first; a shard in both has its job replaced last.
4. **Commit.** The store points the job at its new slices and generation; the shards it left
   drop it (MOVED). Their held pulls, and the replaced ones, answer "layout moved": each
   worker fetches the new plan and pulls again.

A failure before a shard's job was replaced (a worker never reached the boundary, a new shard
unreachable, a state that cannot be cut) rolls back: the new shards drop what they adopted
and the old ones let their pulls go. After a replacement it rolls back by moving the exported
states back onto the old shards under a still newer generation. Either way no push a worker
had acknowledged is lost: every acknowledged push is in the exported states.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

from pscluster.coordinator import store as st
from pscluster.coordinator.recut import State, recut
from pscluster.coordinator.shard_directory import Slot
from pscluster.coordinator.shard_init import layout_configs
from pscluster.model.partition import BalancedRanges
from pscluster.server.durability.checkpoint import CheckpointError
from pscluster.shard_client import ShardClient, ShardError
from pscluster.shard_client.layout import state_from_bytes, state_to_bytes
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_SECONDS = 0.005


class MoveFailed(Exception):
    """The move did not happen; the job goes on where it was (the message says why)."""


@dataclass(frozen=True)
class MovePlan:
    job: st.JobRecord
    new: st.JobRecord  # the same job on its new slices, at the next layout generation

    @property
    def old_addresses(self) -> list[str]:
        return [s.address for s in self.job.shards]

    @property
    def new_addresses(self) -> list[str]:
        return [s.address for s in self.new.shards]


def plan_move(job: st.JobRecord, slots: Sequence[Slot]) -> MovePlan | None:
    """The job cut over ``slots`` (None: it is there already)."""
    if [(s.shard_id, s.address) for s in job.shards] == [(s.shard_id, s.address) for s in slots]:
        return None
    ranges = BalancedRanges().split(job.num_params, len(slots))
    slices = [
        st.ShardSlice(slot.address, r.start, r.length, slot.shard_id)
        for slot, r in zip(slots, ranges, strict=True)
    ]
    new = replace(job, shards=slices, layout_generation=job.layout_generation + 1)
    return MovePlan(job, new)


class JobMover:
    """Moves one job at a time; ``commit`` writes the store and tells the membership sender
    where the job is now (both the caller's)."""

    def __init__(
        self,
        shards: ShardClient,
        commit: Callable[[st.JobRecord], None],
        quiesce_seconds: float,
    ) -> None:
        self._shards = shards
        self._commit = commit
        self._quiesce_seconds = quiesce_seconds

    def move(self, plan: MovePlan) -> co_pb2.JobMove:
        job, new = plan.job, plan.new
        reply = co_pb2.JobMove(job_id=job.job_id, layout_generation=job.layout_generation)
        reply.shard_ids.extend(s.shard_id or s.address for s in job.shards)
        began = time.perf_counter()
        try:
            self._hold(plan)
            held = time.perf_counter()
            reply.quiesce_seconds = held - began
            states = self._exported(plan)
            exported = time.perf_counter()
            reply.export_seconds = exported - held
            reply.state_bytes = self._adopt(plan, states, reply)
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

    def _exported(self, plan: MovePlan) -> list[State]:
        """The old shards' states (the job held on them); released on failure."""
        try:
            return self._parallel(
                lambda a: state_from_bytes(self._shards.export_job(a, plan.job.job_id)),
                plan.old_addresses,
            )
        except MoveFailed:
            self._release(plan)
            raise

    def _hold(self, plan: MovePlan) -> None:
        """Hold the job's pulls on its shards until every member is between two steps on
        every one."""
        job_id, addresses = plan.job.job_id, plan.old_addresses
        deadline = time.monotonic() + self._quiesce_seconds
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

    def _adopt(self, plan: MovePlan, old_states: list[State], reply: co_pb2.JobMove) -> int:
        """Adopt the cut states (shards only in the new layout first), commit, and drop the
        job from the shards it left; the bytes adopted (``reply`` gets the recut's time)."""
        job_id, generation = plan.job.job_id, plan.new.layout_generation
        began = time.perf_counter()
        try:
            cut = recut_states(old_states, plan.new)
        except MoveFailed:
            self._release(plan)
            raise
        reply.recut_seconds = time.perf_counter() - began
        states = dict(zip(plan.new_addresses, cut, strict=True))
        fresh = [a for a in plan.new_addresses if a not in set(plan.old_addresses)]
        kept = [a for a in plan.new_addresses if a in set(plan.old_addresses)]

        def install(address: str) -> None:
            self._shards.adopt_job(address, job_id, generation, states[address])

        try:
            self._parallel(install, fresh)
        except MoveFailed:
            self._drop(fresh, job_id, generation)
            self._release(plan)
            raise
        try:
            self._parallel(install, kept)
        except MoveFailed as e:
            self._move_back(plan, old_states, fresh)
            raise MoveFailed(f"{e}; moved back to its old shards") from e
        self._commit(plan.new)
        self._drop([a for a in plan.old_addresses if a not in states], job_id, generation)
        return sum(len(s) for s in cut)

    def _move_back(self, plan: MovePlan, old_states: list[State], fresh: list[str]) -> None:
        """A shard in both layouts may have been replaced already: put every old state back
        on its old shard under a still newer generation and point the job there. A shard
        that does not take it was not replaced (or is down, and recovers its own copy): it
        holds the old state of its old range, which it serves to the newer plan (a shard
        fences off only older generations), with its pulls let go."""
        back = replace(plan.job, layout_generation=plan.new.layout_generation + 1)
        states = [state_to_bytes(*with_generation(s, back.layout_generation)) for s in old_states]
        for address, state in zip(plan.old_addresses, states, strict=True):
            try:
                self._shards.adopt_job(address, back.job_id, back.layout_generation, state)
            except ShardError as e:  # not replaced, or down: its own copy is the old state
                log.error("job %s: %s did not take its state back: %s", back.job_id, address, e)
                self._release_one(address, back.job_id)
        self._commit(back)
        self._drop(fresh, back.job_id, back.layout_generation)

    def _release(self, plan: MovePlan) -> None:
        for address in plan.old_addresses:
            self._release_one(address, plan.job.job_id)

    def _release_one(self, address: str, job_id: str) -> None:
        try:
            self._shards.hold_job(address, job_id, ps_pb2.HOLD_ACTION_RELEASE)
        except ShardError as e:  # a shard that restarts holds nothing
            log.warning("job %s: %s did not release its pulls: %s", job_id, address, e)

    def _drop(self, addresses: Sequence[str], job_id: str, generation: int) -> None:
        """The job left these shards (MOVED): their copies are stale and hold nothing a
        worker had acknowledged that the job's new shards do not."""
        for address in addresses:
            try:
                self._shards.hold_job(address, job_id, ps_pb2.HOLD_ACTION_MOVED, generation)
            except ShardError as e:
                log.warning("job %s: %s did not drop the moved job: %s", job_id, address, e)

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


def recut_states(states: Sequence[State], new: st.JobRecord) -> list[bytes]:
    """The old states cut over the new layout, serialised for AdoptJob."""
    try:
        cut = recut(states, layout_configs(new), new.layout_generation)
    except ValueError as e:
        raise MoveFailed(f"its state cannot be moved: {e}") from e
    return [state_to_bytes(*s) for s in cut]


def with_generation(state: State, generation: int) -> State:
    """The state as it is, under another layout generation."""
    tensors, meta = state
    return tensors, {**meta, "config": {**meta["config"], "layout_generation": generation}}


def release_holds(shards: ShardClient, jobs: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Let go of the pulls of each (job, its shards' addresses) that a move left held: a
    coordinator that stopped mid-move left them so; a shard not holding them ignores it."""
    for job_id, addresses in jobs:
        for address in addresses:
            try:
                shards.hold_job(address, job_id, ps_pb2.HOLD_ACTION_RELEASE)
            except ShardError as e:
                log.debug("job %s: %s kept no hold to release: %s", job_id, address, e)
