"""Which shards the coordinator knows, which of them are live, and where a new job goes.

Decisions only: shards announce themselves (RegisterShard) with a stable id and the address to
dial, again every heartbeat; the registry takes each announcement with the time it arrived and
says what it means. The store and the RPCs belong to the caller
(:mod:`pscluster.coordinator.shard_registrations`), so every rule here is tested without a
socket or a database.

Identity is the id, not the address: a StatefulSet pod rescheduled onto another node, or a
container recreated with a new IP, comes back under its id with its data dir, and so with its
durable jobs. What the registry refuses is two processes claiming one identity at once (the
id live at another address), or two identities at one address.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from pscluster.errors import AlreadyExists, FailedPrecondition, InvalidArgument

# The characters of a DNS label plus '.' and '_': a host name, a pod name, a compose replica.
_SHARD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ADDRESS = re.compile(r"^\S{1,253}:[0-9]{1,5}$")
_ORDINAL = re.compile(r"[0-9]+$")


@dataclass(frozen=True)
class ShardEntry:
    shard_id: str
    address: str
    registered_unix: float  # its first registration (wall clock): what the store keeps
    last_seen: float | None = None  # monotonic; None: not heard from since this process began

    def live(self, now: float, timeout: float) -> bool:
        return self.last_seen is not None and now - self.last_seen <= timeout


@dataclass(frozen=True)
class Registration:
    entry: ShardEntry
    previous_address: str = ""  # the id was at another address before: it moved
    changed: bool = False  # new, or moved: the store must learn it


class ShardRegistry:
    """Not thread-safe: the caller serialises the calls (one lock around each)."""

    def __init__(self, timeout: float, known: Iterable[ShardEntry] = ()) -> None:
        # Known from the store after a restart, but not live until they register again: a
        # shard that died while the coordinator was down must not receive new jobs.
        self.timeout = timeout
        self._entries = {e.shard_id: replace(e, last_seen=None) for e in known}

    def register(
        self, shard_id: str, address: str, now: float, wall: float, leaving: bool = False
    ) -> Registration:
        """Record an announcement at monotonic time ``now`` (``wall`` for a first one).

        AlreadyExists when the id is live at another address, or the address is live under
        another id; InvalidArgument for a malformed id or address. ``leaving`` (a shard that
        stops cleanly) makes the id not live at once, so its successor need not wait out the
        timeout; one from an address the id is not at is ignored (a stale process).
        """
        _check(shard_id, address)
        old = self._entries.get(shard_id)
        if leaving:
            if old is not None and old.address == address:
                self._entries[shard_id] = replace(old, last_seen=None)
            return Registration(old or ShardEntry(shard_id, address, wall))
        if old is not None and old.address != address and old.live(now, self.timeout):
            raise AlreadyExists(
                f"shard id {shard_id!r} is live at {old.address} (heard from "
                f"{now - (old.last_seen or now):.1f} s ago), so {address} may not take it: give "
                "each shard its own PSC_SHARD_ID, or stop the other process (its id is free "
                f"{self.timeout:g} s after its last heartbeat)"
            )
        for other in self._entries.values():
            if (
                other.shard_id != shard_id
                and other.address == address
                and other.live(now, self.timeout)
            ):
                raise AlreadyExists(
                    f"address {address} is live as shard {other.shard_id!r}; one process is "
                    f"one shard: stop it before it registers as {shard_id!r}"
                )
        if old is None:
            entry = ShardEntry(shard_id, address, wall, now)
            self._entries[shard_id] = entry
            return Registration(entry, changed=True)
        entry = replace(old, address=address, last_seen=now)
        self._entries[shard_id] = entry
        moved = old.address != address
        return Registration(entry, old.address if moved else "", changed=moved)

    def entries(self) -> list[ShardEntry]:
        """Every known shard, by id."""
        return [self._entries[k] for k in sorted(self._entries)]

    def live(self, now: float) -> list[ShardEntry]:
        return [e for e in self.entries() if e.live(now, self.timeout)]


def place(live: Iterable[ShardEntry], held: Mapping[str, int]) -> list[ShardEntry]:
    """The shards a new job's ranges go to, in plan order: the least loaded first (``held``:
    active jobs per shard id), ties by id, so a job on fewer shards than are live lands on
    those holding the fewest jobs, and the same state always gives the same plan."""
    return sorted(live, key=lambda e: (held.get(e.shard_id, 0), e.shard_id))


def choose(
    live: Sequence[ShardEntry], count: int, in_use: Collection[str] | None
) -> list[ShardEntry]:
    """The ``count`` live shards to use from now on (ScaleShards): those in use stay (None:
    every live one is), then by the number that ends their id, then the longest registered,
    ties by id. So growing keeps every shard that holds jobs, and shrinking gives up the
    highest-numbered first: the replicas ``kubectl scale`` and ``docker compose --scale``
    remove first ("ps-2" before "ps-1"; ids without a number go after, newest first).
    FailedPrecondition when fewer are live than asked for."""
    if count < 1:
        raise InvalidArgument(f"shards={count}: a cluster needs at least one shard")
    if len(live) < count:
        ids = ", ".join(e.shard_id for e in live) or "none"
        raise FailedPrecondition(
            f"shards={count} but only {len(live)} registered shard(s) are live ({ids}): start "
            f"more first (docker compose up -d --scale ps={count}, or more replicas of the "
            "shard StatefulSet); each registers with the coordinator on start"
        )

    def rank(e: ShardEntry) -> tuple[bool, float, float, str]:
        used = in_use is None or e.shard_id in in_use
        return (not used, _ordinal(e.shard_id), e.registered_unix, e.shard_id)

    return sorted(live, key=rank)[:count]


def _ordinal(shard_id: str) -> float:
    """The number an id ends with (a replica's ordinal), infinity for none."""
    digits = _ORDINAL.search(shard_id)
    return float(digits.group()) if digits else math.inf


def _check(shard_id: str, address: str) -> None:
    if not _SHARD_ID.match(shard_id):
        raise InvalidArgument(
            f"shard_id {shard_id!r} is invalid: expected 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (PSC_SHARD_ID, or the host name by default)"
        )
    if not _ADDRESS.match(address) or int(address.rpartition(":")[2]) > 65535:
        raise InvalidArgument(
            f"address {address!r} is not host:port; expected the address workers and the "
            "coordinator dial (PSC_ADVERTISE)"
        )
