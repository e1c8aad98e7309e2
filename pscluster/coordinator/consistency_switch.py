"""Carrying out a switch of mode "auto": the job's new consistency, sent to each of its shards.

Each shard switches between two pushes and keeps the newest revision it was sent (see
:mod:`pscluster.server.consistency.switch`), so sending again is harmless: a failed round is
retried a few times, the shards that took it already ignoring the repeat.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from functools import partial

from pscluster.coordinator.core.actions import SwitchConsistency
from pscluster.coordinator.store import JobStore
from pscluster.server.consistency import TrialStep
from pscluster.server.convert import TRIAL_PROTO
from pscluster.shard_client import ShardClient, ShardError
from pscluster.v1 import parameter_server_pb2 as ps_pb2

log = logging.getLogger(__name__)

ATTEMPTS = 3
RETRY_SECONDS = 0.5


def send_consistency(shards: ShardClient, store: JobStore, action: SwitchConsistency) -> None:
    """Tell every shard of the job; raises the last round's first ShardError if a shard never
    took it (the job keeps training in the old mode there)."""
    job = store.get_job(action.job_id)
    if job is None:
        return
    request = ps_pb2.SetConsistencyRequest(
        job_id=action.job_id,
        mode=action.mode,
        staleness=action.staleness,
        backup_workers=action.backup_workers,
        revision=action.revision,
        trial=TRIAL_PROTO[action.trial],
        local_steps=action.local_steps,
    )
    addresses = [s.address for s in job.shards]
    for attempt in range(ATTEMPTS):
        calls = [
            (a, partial(shards.stub(a).SetConsistency, request, timeout=shards.control_timeout))
            for a in addresses
        ]
        replies = shards.each(calls)
        failed = [r for r in replies if isinstance(r, ShardError)]
        kept = [
            a
            for a, r in zip(addresses, replies, strict=True)
            if not isinstance(r, ShardError) and not r.undone
        ]
        if action.trial in (TrialStep.UNDO, TrialStep.UNDO_KEEP) and kept:
            # A move since the trial began leaves the copy behind on every shard (see
            # server/trial.py), and a retried round finds it gone: not undone there.
            log.warning("job %s: no trial copy to go back to on %s", action.job_id, kept)
        if not failed:
            return
        addresses = [e.address for e in failed]
        if attempt + 1 == ATTEMPTS:
            raise failed[0]
        log.warning("job %s: consistency not switched yet: %s", action.job_id, failed[0])
        time.sleep(RETRY_SECONDS)


class ConsistencySender:
    """:func:`send_consistency`, remembering each job's last switch, so that a job moved to
    other shards (pscluster.coordinator.moves) can send it there again: a switch sent to the
    old shards after their state was exported would otherwise not reach the new ones. Sending
    it again is harmless where it arrived (the revision is not newer)."""

    def __init__(self, shards: ShardClient, store: JobStore) -> None:
        self._shards = shards
        self._store = store
        self._last: dict[str, SwitchConsistency] = {}
        self._lock = threading.Lock()

    def send(self, action: SwitchConsistency) -> None:
        with self._lock:
            last = self._last.get(action.job_id)
            if last is None or last.revision < action.revision:
                self._last[action.job_id] = action
        send_consistency(self._shards, self._store, action)

    def resend(self, job_id: str) -> None:
        """The job's last switch, to its shards as the store has them now (nothing if it
        never switched); a shard that does not take it is logged, not raised.

        Without its trial step: every shard of the new layout adopted without a trial copy
        (server/trial.py), and a copy taken again on only those whose adopted revision is
        older (a switch that reached some old shards before their export and others after)
        would make a later undo go back on some ranges and not on others. The controller's
        next copy (its next lowest block) reaches them all."""
        with self._lock:
            last = self._last.get(job_id)
        if last is None:
            return
        try:
            send_consistency(self._shards, self._store, replace(last, trial=TrialStep.NONE))
        except ShardError as e:
            log.warning("job %s: its consistency did not reach a new shard: %s", job_id, e)
