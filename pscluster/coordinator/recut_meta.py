"""The job-wide parts of a re-cut's state (:mod:`pscluster.coordinator.recut`): the members'
clocks, the push ledger and the counters, merged from the old shards' states.

Each shard keeps its own copy of what is really the job's (members, clocks, the answers to
the last pushes). At a step boundary the copies agree; where they may legitimately differ
(a push refused on one shard only, e.g. for a non-finite slice) the merge takes what lets
every worker go on: nothing a worker was told is contradicted, and nothing is applied twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from pscluster.server.clocks import MemberClocks
from pscluster.server.stats import JobCounters

# Counters that hold a maximum or a moment, not a count: merged by max, never summed.
_NOT_SUMMED = ("max_clock_lead", "last_update_unix")


def merge_clocks(generations: Sequence[int], clocks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One clocks state for every new shard; ValueError unless the old shards agree on the
    membership (generation, members, excluded): a SetMembers that reached only some shards
    is still in flight, and the caller retries the move once it has landed.

    Each member's clock, and the floor, is the highest on any old shard. They are equal at a
    step boundary; a push refused on one shard alone leaves its sender one clock behind
    there. The highest keeps the shard clock at or above every clock a worker has read (a
    pull never waits for a clock that will not come), and a worker's next push, based on its
    pull from a new shard, is judged against the clock that pull gave it.
    """
    if len(set(generations)) != 1:
        raise ValueError(f"the old shards are at membership generations {sorted(set(generations))}")
    memberships = {(tuple(sorted(c["clocks"])), tuple(sorted(c["excluded"]))) for c in clocks}
    if len(memberships) != 1:
        raise ValueError(f"the old shards disagree on the members (and excluded): {memberships}")
    members, excluded = memberships.pop()
    merged = MemberClocks()
    merged.load_state(
        {
            "clocks": {w: max(int(c["clocks"][w]) for c in clocks) for w in members},
            "excluded": list(excluded),
            "reentering": sorted({str(w) for c in clocks for w in c["reentering"]}),
            "floor": max(int(c["floor"]) for c in clocks),
        }
    )
    # A re-entering worker whose highest clock has caught up counts again, as on any shard.
    merged.set_members(members, excluded)
    return merged.state()


def merge_ledgers(ledgers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per worker, the remembered answer with the highest seq (then the highest version; the
    first shard in plan order among equals).

    A worker numbers its pushes once for all shards, so at a boundary each shard remembers
    the same last seq, unless a push was refused on a shard before its decision (nothing
    applied there). Keeping the highest seq means any retry of a push already decided
    anywhere is answered (the same push again, or UNKNOWN for an older one) and never
    applied a second time; every worker's next push has a higher seq and is decided afresh.
    """
    merged: dict[str, Any] = {}
    for ledger in ledgers:
        for worker, entry in ledger.items():
            held = merged.get(worker)
            key = (int(entry["seq"]), int(entry["version"]))
            if held is None or key > (int(held["seq"]), int(held["version"])):
                merged[worker] = dict(entry)
    return merged


def summed_counters(
    counters: Sequence[dict[str, Any]], homes: Sequence[int], shards: int
) -> list[dict[str, Any]]:
    """Each new shard's counters: the sum of the old shards' whose home it is
    (:func:`~pscluster.coordinator.recut_ranges.homes`), zero where none is.

    The coordinator reports a job's counters as sums over its shards
    (:func:`pscluster.coordinator.stats.aggregate`): moving each old shard's counters whole
    to one new shard keeps every sum (pushes applied, rejected by reason, bytes, the
    staleness histograms); splitting or copying them would halve or double the job's
    history. Maxima and moments (the largest clock lead, the last update's time) are merged
    by max.
    """
    out = [JobCounters() for _ in range(shards)]
    for state, home in zip(counters, homes, strict=True):
        part = JobCounters()
        part.load_state(state)
        into = out[home]
        for name, value in vars(part).items():
            held = getattr(into, name)
            if isinstance(value, Counter):
                held.update(value)
            elif name in _NOT_SUMMED:
                setattr(into, name, max(held, value))
            else:
                setattr(into, name, held + value)
    return [c.state() for c in out]
