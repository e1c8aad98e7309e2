"""The shards a coordinator places jobs on: its static list (PSC_SHARDS), or the shards that
registered themselves, kept in the store so that a restarted coordinator knows them and the
jobs each holds.

The rules (who may register, who is live, where a job goes) are
:mod:`~pscluster.coordinator.shard_registry`; this class adds the clock, the lock and the
store around them.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pscluster.config import Settings
from pscluster.coordinator import store as st
from pscluster.coordinator.shard_registry import (
    Registration,
    ShardEntry,
    ShardRegistry,
    choose,
    place,
)
from pscluster.errors import FailedPrecondition
from pscluster.v1 import coordinator_pb2 as co_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """Where one range of a new job goes."""

    shard_id: str  # "" for a shard of the static list
    address: str


class ShardDirectory:
    """Thread-safe: RegisterShard calls, submissions and status reads come on any thread."""

    def __init__(
        self,
        settings: Settings,
        store: st.JobStore,
        mono: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.static = settings.shard_list()
        self._store = store
        self._mono = mono
        self._wall = wall
        self._lock = threading.Lock()
        known = [ShardEntry(r.shard_id, r.address, r.registered_unix) for r in store.shards()]
        self._registry = ShardRegistry(settings.shard_timeout_seconds, known)
        # The shards ScaleShards chose (ids); None: every live one. Stored, so that a
        # restarted coordinator does not place new jobs on a shard drained before it stopped.
        chosen = store.shards_in_use()
        self._in_use: set[str] | None = None if chosen is None else set(chosen)

    def register(
        self, shard_id: str, address: str, leaving: bool = False
    ) -> tuple[Registration, list[str]]:
        """Record a shard's announcement; with it, the ids of the pending and running jobs
        whose slices followed it to a new address (empty unless it moved)."""
        with self._lock:
            reg = self._registry.register(shard_id, address, self._mono(), self._wall(), leaving)
            moved: list[str] = []
            if reg.changed:
                e = reg.entry
                self._store.save_shard(st.ShardRecord(e.shard_id, e.address, e.registered_unix))
            if reg.previous_address:
                moved = self._store.readdress_shard(shard_id, address)
        if reg.previous_address:
            log.info(
                "shard %s moved from %s to %s; %d active job(s) follow it",
                shard_id,
                reg.previous_address,
                address,
                len(moved),
            )
        elif reg.changed:
            log.info("shard %s registered at %s", shard_id, address)
        elif leaving:
            log.info("shard %s at %s is leaving", shard_id, address)
        return reg, moved

    def placement(self) -> list[Slot]:
        """Where a new job's ranges go, in plan order; FailedPrecondition when there is
        nowhere (no static list and no live registered shard)."""
        if self.static:
            return [Slot("", a) for a in self.static]
        with self._lock:
            now = self._mono()
            live, known = self._registry.live(now), self._registry.entries()
            in_use = self._in_use
        live = [e for e in live if in_use is None or e.shard_id in in_use]
        if not live:
            seen = f"{len(known)} registered, none live" if known else "none has registered"
            raise FailedPrecondition(
                f"the coordinator has no live shards ({seen}): start shards with "
                "PSC_COORDINATOR set to this coordinator (each registers, under PSC_SHARD_ID or "
                "its host name), or start the coordinator with --shards (PSC_SHARDS)"
            )
        held = Counter(sid for slices in self._active_slices() for sid, _ in slices)
        return [Slot(e.shard_id, e.address) for e in place(live, held)]

    def use(self, count: int) -> list[Slot]:
        """Use ``count`` of the live registered shards from now on (new jobs go there; the
        caller moves the running ones), in plan order; FailedPrecondition with a static list
        or too few live shards (:func:`~pscluster.coordinator.shard_registry.choose`)."""
        if self.static:
            raise FailedPrecondition(
                f"the coordinator places jobs on a static shard list ({len(self.static)} "
                "shards, PSC_SHARDS): start it without --shards and let the shards register "
                "(PSC_COORDINATOR) to scale them while jobs run"
            )
        with self._lock:
            chosen = choose(self._registry.live(self._mono()), count, self._in_use)
            self._in_use = {e.shard_id for e in chosen}
            self._store.save_shards_in_use(sorted(self._in_use))
        return [Slot(e.shard_id, e.address) for e in chosen]

    def addresses(self) -> list[str]:
        """Every shard to health-check: the static list, or the registered shards that are
        live or hold an active job. One that left and holds none (drained, then removed by
        ``--scale``) concerns nobody: probing it would only add its timeout to every status
        call and an alarming "unreachable" to the listing."""
        if self.static:
            return list(self.static)
        holding = {sid for slices in self._active_slices() for sid, _ in slices}
        with self._lock:
            now, timeout = self._mono(), self._registry.timeout
            entries = self._registry.entries()
        return [e.address for e in entries if e.live(now, timeout) or e.shard_id in holding]

    def listing(self) -> co_pb2.ListShardsReply:
        reply = co_pb2.ListShardsReply(static_list=bool(self.static))
        jobs: dict[str, list[str]] = {}
        for job_id, slices in self._active_jobs():
            for key in {sid or address for sid, address in slices}:
                jobs.setdefault(key, []).append(job_id)
        if self.static:
            for address in self.static:
                reply.shards.add(address=address, live=True, last_seen_age=-1.0)
                reply.shards[-1].jobs.extend(jobs.get(address, []))
            return reply
        with self._lock:
            now, timeout = self._mono(), self._registry.timeout
            entries = self._registry.entries()
        for e in entries:
            age = -1.0 if e.last_seen is None else max(0.0, now - e.last_seen)
            shard = reply.shards.add(
                shard_id=e.shard_id,
                address=e.address,
                live=e.live(now, timeout),
                last_seen_age=age,
            )
            shard.jobs.extend(jobs.get(e.shard_id, []))
        return reply

    def _active_jobs(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """(job id, its slices as (shard id, address)) of every pending or running job."""
        jobs = self._store.list_jobs(st.PENDING) + self._store.list_jobs(st.RUNNING)
        return [(j.job_id, [(s.shard_id, s.address) for s in j.shards]) for j in jobs]

    def _active_slices(self) -> list[list[tuple[str, str]]]:
        return [slices for _, slices in self._active_jobs()]
