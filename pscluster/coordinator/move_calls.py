"""The calls that end a move on its shards, once it is decided: let the pulls go, drop the job
from the shards it left, let the shards in both layouts forget the copy an adoption replaced,
or take those copies back when the move is undone; and asking each shard which layout
generation it holds a job at, which is how a restarted coordinator tells how far a move got
(:mod:`pscluster.coordinator.move_recovery`).

Shared by the mover (:mod:`pscluster.coordinator.moves`) and that recovery. Every call but
the last is best effort: it is logged, not raised, when a shard does not answer, because the
decision it carries out is already taken and stored; a shard that was down meanwhile holds
no pulls, and sorts out the rest from its own log.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

import grpc

from pscluster.coordinator import store as st
from pscluster.shard_client import LayoutMovedError, ShardClient, ShardError
from pscluster.v1 import parameter_server_pb2 as ps_pb2

log = logging.getLogger(__name__)


class Held(enum.Enum):
    """What a shard says of a job when asked its layout generation, besides a number."""

    NOTHING = "nothing"  # the shard has no such job (never adopted it, or dropped it)
    UNKNOWN = "unknown"  # the shard did not answer


class MoveCalls:
    def __init__(self, shards: ShardClient) -> None:
        self._shards = shards

    def release(self, addresses: Sequence[str], job_id: str) -> None:
        """Let the job's held pulls go on these shards (a move that did not happen)."""
        for address in addresses:
            self._tell(address, job_id, ps_pb2.HOLD_ACTION_RELEASE, 0, "release its pulls")

    def drop(self, addresses: Sequence[str], job_id: str, generation: int) -> None:
        """The job left these shards (MOVED): their copies are stale and hold nothing a
        worker had acknowledged that the job's new shards do not."""
        for address in addresses:
            self._tell(address, job_id, ps_pb2.HOLD_ACTION_MOVED, generation, "drop the job")

    def settle(self, addresses: Sequence[str], job_id: str, generation: int) -> None:
        """The move to ``generation`` is committed: the copies retired on these shards go."""
        for address in addresses:
            self._tell(address, job_id, ps_pb2.HOLD_ACTION_SETTLED, generation, "let its copy go")

    def move_back(
        self,
        job: st.JobRecord,
        newer: int,
        replaced: Sequence[str],
        fresh: Sequence[str],
        commit: Callable[[st.JobRecord], None],
    ) -> list[str]:
        """Undo a move of ``job`` (its record before the move) whose adoptions replaced the
        job on the shards ``replaced``: each takes its retired copy back under generation
        ``newer``, the others of its old shards let their pulls go (they hold the old state
        of their old range, which they serve to the newer plan: a shard fences off only
        older generations), ``commit`` stores the job there, and the ``fresh`` shards drop
        what they adopted. Returns the replaced shards that did not take their copy back
        (down or restarted since: the part of the job they held is no longer anywhere)."""
        back = replace(job, layout_generation=newer)
        lost: list[str] = []
        for address in [s.address for s in job.shards]:
            if address in replaced:
                try:
                    self._shards.restore_job(address, job.job_id, newer)
                    continue
                except ShardError as e:
                    log.error("job %s: %s did not take its copy back: %s", job.job_id, address, e)
                    lost.append(address)
            self.release([address], job.job_id)
        commit(back)
        self.drop(fresh, job.job_id, newer)
        self.settle([s.address for s in job.shards], job.job_id, newer)
        return lost

    def generations(self, addresses: Sequence[str], job_id: str) -> list[int | Held]:
        """The layout generation each shard holds the job at (letting its pulls go, should a
        move have left them held), or what it said instead."""
        calls = [(a, partial(self._generation, a, job_id)) for a in addresses]
        return [Held.UNKNOWN if isinstance(r, ShardError) else r for r in self._shards.each(calls)]

    def _generation(self, address: str, job_id: str) -> int | Held:
        try:
            reply = self._shards.hold_job(address, job_id, ps_pb2.HOLD_ACTION_RELEASE)
        except LayoutMovedError:
            return Held.NOTHING  # it left this shard
        except ShardError as e:
            if e.status == grpc.StatusCode.NOT_FOUND:
                return Held.NOTHING
            raise
        return int(reply.layout_generation)

    def _tell(
        self,
        address: str,
        job_id: str,
        action: ps_pb2.HoldAction.ValueType,
        generation: int,
        what: str,
    ) -> None:
        try:
            self._shards.hold_job(address, job_id, action, generation)
        except ShardError as e:  # a shard that restarts holds nothing
            log.warning("job %s: %s did not %s: %s", job_id, address, what, e)


def release_holds(shards: ShardClient, jobs: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Let go of the pulls of each (job, its shards' addresses) that a move left held: a
    coordinator that stopped mid-move left them so; a shard not holding them ignores it."""
    for job_id, addresses in jobs:
        for address in addresses:
            try:
                shards.hold_job(address, job_id, ps_pb2.HOLD_ACTION_RELEASE)
            except ShardError as e:
                log.debug("job %s: %s kept no hold to release: %s", job_id, address, e)
