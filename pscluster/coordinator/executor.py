"""Carrying out what the scheduling core decided: store writes, memberships, job endings.

The core (:mod:`pscluster.coordinator.core`) runs under the coordinator's lock and returns
actions; the RPC handler hands them here once it has let go of the lock. Writes go to the
group-commit writer, membership changes to the job's pump, and finishing or failing a job
(which pulls a model or frees shards, seconds of shard calls) to a background thread, so no
RPC thread ever does shard I/O for another worker's sake. A handler waits only for what its
own answer depends on: its writes being durable, and, for a train lease, its worker's
membership having landed on every shard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pscluster.coordinator.core.actions import (
    Action,
    FailJob,
    FinishJob,
    SwitchConsistency,
    SyncMembers,
    writes,
)
from pscluster.coordinator.members import MembershipPump, Roster, Send
from pscluster.coordinator.store import JobStore
from pscluster.coordinator.store_writer import StoreWriter
from pscluster.coordinator.writes import JobUpdated
from pscluster.errors import PSError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Receipt:
    """What :meth:`Executor.perform` set going: the store ticket and each job's sync ticket."""

    store: int = 0
    syncs: dict[str, int] = field(default_factory=dict)


class Executor:
    def __init__(
        self,
        store: JobStore,
        send_members: Send,
        roster: Callable[[str], Roster | None],
        finish: Callable[[str], object],
        fail: Callable[[str, str], object],
        commit_timeout: float = 30.0,
        switch: Callable[[SwitchConsistency], object] | None = None,
    ) -> None:
        """``switch`` tells a job's shards its new consistency (mode "auto"; None: no job
        of this coordinator switches)."""
        self.writer = StoreWriter(store)
        self.members = MembershipPump(send_members, roster, self._persist_generation)
        self._finish = finish
        self._fail = fail
        self._switch = switch
        self.commit_timeout = commit_timeout
        # Finishing a job pulls its model from the shards: never on an RPC thread.
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="coordinator-jobs")

    def perform(self, actions: Sequence[Action]) -> Receipt:
        """Set every action going; returns at once (see :meth:`durable`, :meth:`landed`)."""
        receipt = Receipt(self.writer.submit(writes(list(actions))))
        for action in actions:
            if isinstance(action, SyncMembers):
                receipt.syncs[action.job_id] = self.members.request(action.job_id)
            elif isinstance(action, FinishJob):
                self._background.submit(self._after, receipt.store, self._finish, action.job_id)
            elif isinstance(action, SwitchConsistency) and self._switch is not None:
                # After the event that explains it is durable; shards answer in milliseconds.
                self._background.submit(self._after, receipt.store, self._switch, action)
            elif isinstance(action, FailJob):
                self._background.submit(
                    self._after, receipt.store, self._fail, action.job_id, action.error
                )
        return receipt

    def durable(self, receipt: Receipt) -> None:
        """Return once the receipt's writes are committed (raise if they could not be)."""
        self.writer.wait(receipt.store, self.commit_timeout)

    def run(self, actions: Sequence[Action]) -> Receipt:
        """:meth:`perform`, then wait until its writes are durable."""
        receipt = self.perform(actions)
        self.durable(receipt)
        return receipt

    def landed(self, receipt: Receipt, job_id: str, timeout: float) -> PSError | None:
        """None once the membership the receipt asked for is on every shard of the job."""
        return self.members.wait(job_id, receipt.syncs.get(job_id, 0), timeout)

    def close(self) -> None:
        self._background.shutdown(wait=False, cancel_futures=True)
        self.members.close()
        self.writer.close()

    def _persist_generation(self, job_id: str, generation: int) -> None:
        self.writer.write([JobUpdated(job_id, {"generation": generation})], self.commit_timeout)

    def _after(self, ticket: int, call: Callable[..., object], *args: object) -> None:
        """Run a job operation once the writes it depends on are durable."""
        try:
            self.writer.wait(ticket, self.commit_timeout)
            call(*args)
        except Exception:  # the monitor retries what is left (e.g. a model not yet saved)
            log.exception("%s%s failed", getattr(call, "__name__", "job operation"), args)
