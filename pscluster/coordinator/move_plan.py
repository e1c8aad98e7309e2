"""What a move of a job between shards is (:mod:`pscluster.coordinator.moves` carries it out):
the job's record before and after, and the cut of its exported skeletons over the new ranges
with the pieces each new shard keeps or reads; and how a move ends when it does not happen.
Pure: no RPCs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from pscluster.coordinator import recut_moves
from pscluster.coordinator import store as st
from pscluster.coordinator.recut import State, recut_skeletons
from pscluster.coordinator.recut_moves import Piece
from pscluster.coordinator.shard_directory import Slot
from pscluster.coordinator.shard_init import layout_configs
from pscluster.model.partition import BalancedRanges, Range
from pscluster.server.durability import dense as dn
from pscluster.server.durability.checkpoint import state_to_bytes


class MoveFailed(Exception):
    """The move did not happen; the job goes on where it was (the message says why)."""


class LostRange(Exception):
    """A move cannot be undone: a shard lost the copy of the job's old range it kept (it
    restarted after its adoption replaced it), so the job cannot go on."""


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


@dataclass(frozen=True)
class Cut:
    """A move's cut: each new shard's skeleton image and the pieces of its range (kept, or
    read from an old shard); ``tables``: the job has embedding tables, whose rows each new
    shard reads from every old shard."""

    images: list[bytes]
    pieces: list[list[Piece]]
    # The images, and the per-value bytes that change shard (table rows are picked out by
    # the old shards, not counted here).
    sent_bytes: int
    tables: bool = False

    @classmethod
    def of(cls, skeletons: Sequence[State], plan: MovePlan) -> Cut:
        """MoveFailed if the old skeletons cannot be cut over the new layout."""
        new = plan.new
        try:
            cut = recut_skeletons(skeletons, layout_configs(new), new.layout_generation)
            dtypes = dn.dense_dtypes(cut[0][1]) or {}
            olds = [Range(s.start, s.length) for s in plan.job.shards]
            news = [Range(s.start, s.length) for s in new.shards]
            pieces = recut_moves.pieces(olds, news, plan.old_addresses, plan.new_addresses)
        except ValueError as e:
            raise MoveFailed(f"its state cannot be moved: {e}") from e
        images = [state_to_bytes(*s) for s in cut]
        sent = recut_moves.sent_values(pieces) * dn.bytes_per_value(dtypes.values())
        tables = bool(cut[0][1].get("tables"))
        return cls(images, pieces, sum(len(i) for i in images) + sent, tables)
