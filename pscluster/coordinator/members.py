"""Telling a job's shards which workers train on it: batched, off the RPC threads, in order.

Sync barriers wait for every member and ssp clocks measure the slowest one, so a worker must
be a member on every shard before its first pull, and a departed worker must stop being one.
With hundreds of workers a job's membership changes many times a second (twice per lease);
sending each change from the RPC that caused it, one shard round trip per lease under a per-
job lock, is what made the coordinator collapse at a few hundred workers.

So each job has one pump thread. A change only *requests* a sync and gets a ticket; the pump
sends the roster as it is when it gets round to it (every change requested meanwhile rides on
that one SetMembers round), numbered with the next generation (durable first, in reserved
blocks, so a restarted coordinator keeps numbering above what the shards have seen; shards
ignore an older generation, so a late message cannot undo a newer one). An AcquireTask that
grants a train lease waits for its ticket to land before answering, as it must; nothing else
waits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pscluster.errors import DeadlineExceeded, PSError

log = logging.getLogger(__name__)

Roster = tuple[list[str], list[str]]  # (members, excluded members)
Send = Callable[[Sequence[str], str, Sequence[str], int, Sequence[str]], None]
# After a failed send, the pump waits this long before trying again.
RETRY_SECONDS = 0.5


# Generations are made durable in blocks of this many: one store write per block rather than
# one per round, and a restarted coordinator starts above the block's end (the shards only
# need generations to go up, not to be consecutive).
RESERVE = 1000


@dataclass
class _Pump:
    job_id: str
    addresses: list[str]
    generation: int
    reserved: int = 0  # the durable upper bound of the generations sent
    cond: threading.Condition = field(default_factory=threading.Condition)
    requested: int = 0
    covered: int = 0  # every request up to this one has landed
    failed_upto: int = 0  # requests up to this one failed (error says why)
    error: PSError | None = None
    last_sent: Roster | None = None
    stopped: bool = False
    thread: threading.Thread | None = None


class MembershipPump:
    def __init__(
        self,
        send: Send,
        roster: Callable[[str], Roster | None],
        persist: Callable[[str, int], None],
    ) -> None:
        """``send(addresses, job_id, members, generation, excluded)`` raises a PSError when a
        shard did not take it; ``roster(job_id)`` is the membership now (None: job gone);
        ``persist(job_id, generation)`` makes the generation durable."""
        self._send = send
        self._roster = roster
        self._persist = persist
        self._lock = threading.Lock()
        self._pumps: dict[str, _Pump] = {}

    def add_job(self, job_id: str, addresses: Sequence[str], generation: int) -> None:
        """``generation``: the durable one (the last reserved), which every send exceeds."""
        pump = _Pump(job_id, list(addresses), generation, reserved=generation)
        pump.thread = threading.Thread(
            target=self._run, args=(pump,), name=f"members-{job_id}", daemon=True
        )
        with self._lock:
            old = self._pumps.get(job_id)
            self._pumps[job_id] = pump
        if old is not None:
            self._stop(old)
        pump.thread.start()

    def forget(self, job_id: str) -> None:
        with self._lock:
            pump = self._pumps.pop(job_id, None)
        if pump is not None:
            self._stop(pump)

    def close(self) -> None:
        with self._lock:
            pumps, self._pumps = list(self._pumps.values()), {}
        for pump in pumps:
            self._stop(pump)

    def request(self, job_id: str) -> int:
        """Ask for the job's current roster to be sent; a ticket for :meth:`wait` (0: no such
        job, nothing to wait for)."""
        with self._lock:
            pump = self._pumps.get(job_id)
        if pump is None:
            return 0
        with pump.cond:
            pump.requested += 1
            pump.cond.notify_all()
            return pump.requested

    def wait(self, job_id: str, ticket: int, timeout: float) -> PSError | None:
        """None once a roster sent after ``ticket`` was requested has landed on every shard;
        the error if the round that carried it failed, or if ``timeout`` passed first."""
        with self._lock:
            pump = self._pumps.get(job_id)
        if pump is None or ticket == 0:
            return None
        with pump.cond:
            landed = pump.cond.wait_for(
                lambda: pump.covered >= ticket or pump.failed_upto >= ticket or pump.stopped,
                timeout,
            )
            if pump.covered >= ticket or pump.stopped:
                return None
            if landed and pump.error is not None:
                return pump.error
        return DeadlineExceeded(
            f"job {job_id}: the shards did not take its membership within {timeout:g} s"
        )

    def pending(self) -> list[str]:
        """Jobs whose latest request has not landed (for status and tests)."""
        with self._lock:
            pumps = list(self._pumps.values())
        return sorted(p.job_id for p in pumps if p.requested > p.covered)

    @staticmethod
    def _stop(pump: _Pump) -> None:
        with pump.cond:
            pump.stopped = True
            pump.cond.notify_all()

    def _run(self, pump: _Pump) -> None:
        while True:
            with pump.cond:
                pump.cond.wait_for(lambda: pump.requested > pump.covered or pump.stopped)
                if pump.stopped:
                    return
                target = pump.requested
            error = self._round(pump)
            with pump.cond:
                if error is None:
                    pump.covered = max(pump.covered, target)
                    pump.error = None
                else:
                    pump.failed_upto = max(pump.failed_upto, target)
                    pump.error = error
                pump.cond.notify_all()
                if error is not None:  # try again, unless stopped meanwhile
                    pump.cond.wait_for(lambda: pump.stopped, RETRY_SECONDS)

    def _round(self, pump: _Pump) -> PSError | None:
        """Send the roster as it is now, unless the shards already hold exactly it."""
        try:
            roster = self._roster(pump.job_id)
            if roster is None or roster == pump.last_sent:
                return None
            pump.generation += 1
            if pump.generation > pump.reserved:
                self._persist(pump.job_id, pump.generation + RESERVE)
                pump.reserved = pump.generation + RESERVE
            members, excluded = roster
            self._send(pump.addresses, pump.job_id, members, pump.generation, excluded)
        except PSError as e:
            log.warning("job %s: membership not updated: %s", pump.job_id, e)
            return e
        except Exception as e:  # a bug must not kill the pump: report it like a failure
            log.exception("job %s: membership round failed", pump.job_id)
            return PSError(f"membership round failed: {type(e).__name__}: {e}")
        pump.last_sent = roster
        return None
