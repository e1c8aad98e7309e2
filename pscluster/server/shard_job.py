"""One job's slice on a shard: values, optimizer, consistency policy, members and counters.

No gRPC here: the servicer hands in plain headers and byte chunks. One lock (a Condition) per
job, so jobs never wait on each other; payloads are received and checked outside the lock, and
only the decision and the optimizer step run under it. A push is validated in full before it
touches anything, so a refused push changes nothing but the counters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from pscluster.compression import CompressionSettings, make_compressor
from pscluster.errors import DeadlineExceeded, InvalidArgument, NotFound, PSError
from pscluster.model.optimizer import FlatOptimizer
from pscluster.server.clocks import MemberClocks, check_member_ids
from pscluster.server.consistency import make_policy
from pscluster.server.domain import (
    JobConfig,
    JobStats,
    Outcome,
    PullSnapshot,
    PushHeader,
    PushResult,
)
from pscluster.server.intake import PushIntake, Received
from pscluster.server.job_buffers import JobBuffers
from pscluster.server.payloads import payload_bytes
from pscluster.server.push_checks import check_base_version, check_header, recall
from pscluster.server.snapshots import SnapshotCache
from pscluster.server.stats import JobCounters
from pscluster.transport import wire

if TYPE_CHECKING:
    from pscluster.server.durability.journal import Journal

log = logging.getLogger(__name__)

# Outcomes of a push that was refused: counted in pushes_rejected, the sender's clock stays.
_REFUSED = (Outcome.STALE, Outcome.LATE)


class ShardJob:
    """``buffers``: the job's initial float64 buffer values (None when it has none)."""

    def __init__(
        self, config: JobConfig, values: torch.Tensor, buffers: torch.Tensor | None = None
    ) -> None:
        if values.shape != (config.length,):
            raise InvalidArgument(
                f"job {config.job_id} needs {config.length} initial values, got {values.numel()}"
            )
        held = 0 if buffers is None else buffers.numel()
        if held != config.buffer_length:
            raise InvalidArgument(
                f"job {config.job_id} needs {config.buffer_length} initial buffer values, "
                f"got {held}"
            )
        self.config = config
        self._policy = make_policy(config.mode, config.staleness, config.backup_workers)
        # Decoding is stateless, so the shard needs only the codec's name (not its ratio).
        self._codec = make_compressor(CompressionSettings(name=config.codec))
        self._intake = PushIntake(config, self._codec)
        self._opt = FlatOptimizer(values, config.optimizer)
        self._buffers = JobBuffers(buffers, config.counters)
        self._cond = threading.Condition()
        self._version = 0
        self._clocks = MemberClocks()
        self._generation = 0
        # worker -> (highest seq seen, the reply it got): a retried push is answered, not redone.
        self._last_push: dict[str, tuple[int, PushResult]] = {}
        self._counters = JobCounters()
        self._dropped = False
        self._snapshots = SnapshotCache(config.length)
        # Durability (pscluster.server.durability): None keeps the job in memory only.
        self._journal: Journal | None = None
        self._replayed = 0

    # --- the JobContext the policy sees (called with the lock held) ---

    @property
    def version(self) -> int:
        return self._version

    @property
    def clock(self) -> int:
        return self._clocks.clock

    @property
    def members(self) -> list[str]:
        return self._clocks.members

    def clock_of(self, worker_id: str) -> int:
        return self._clocks.of(worker_id)

    def slowest(self) -> tuple[str, int] | None:
        return self._clocks.slowest()

    def apply(
        self,
        grad: torch.Tensor,
        pushes: Sequence[PushHeader],
        *,
        step: bool,
        buffer_delta: torch.Tensor | None = None,
    ) -> None:
        version, clock = self._version, self._clocks.clock
        if self.config.staleness_aware_lr and not step:
            # Staleness-aware async SGD (Zhang et al. 2016): a gradient computed on parameters
            # tau updates old moves them 1 / (tau + 1) as far. Sync steps have tau = 0.
            lag = max(version - push.base_version for push in pushes)
            if lag > 0:
                grad.div_(lag + 1)  # lent memory: ours to change until we return
        self._snapshots.before_update()
        self._opt.step(grad)
        self._buffers.apply(buffer_delta, len(pushes))  # never scaled by staleness
        self._version += 1
        for push in pushes:
            self._counters.applied(version - push.base_version, max(0, clock - push.base_clock))
        if step:
            self._counters.steps_applied += 1
        self._cond.notify_all()

    def record_clock_lead(self, lead: int) -> None:
        self._counters.clock_lead(lead)

    # --- pushes ---

    def push(self, header: PushHeader, data: Iterable[bytes | memoryview]) -> PushResult:
        """Receive a push's payload from ``data`` (the stream's chunks) and decide on it."""
        with self._cond:
            self._check_alive()
            self._counters.pushes_received += 1
            self._guard("invalid", lambda: check_header(self.config, self._codec, header))
            self._guard("not_member", lambda: self._check_member(header.worker_id))
        # A durable job logs the payload as it came off the wire.
        return self._receive_and_decide(header, data, keep_payload=self._journal is not None)

    def replay_push(self, header: PushHeader, payload: bytes) -> PushResult:
        """Recovery: a logged push, through the same checks and decision as when it came."""
        with self._cond:
            self._counters.pushes_received += 1
        return self._receive_and_decide(header, [payload], keep_payload=False)

    def _receive_and_decide(
        self, header: PushHeader, data: Iterable[bytes | memoryview], *, keep_payload: bool
    ) -> PushResult:
        # Received, decoded and checked outside the lock (pscluster.server.intake).
        try:
            received = self._intake.receive(header, data, keep_payload=keep_payload)
        except InvalidArgument:
            with self._cond:
                self._counters.rejected("invalid")
            raise
        try:
            result, ticket = self._decide_locked(header, received)
        finally:
            received.release()
        if self._journal is not None:
            self._journal.commit(ticket, self)
        return result

    def _decide_locked(self, header: PushHeader, received: Received) -> tuple[PushResult, int]:
        with self._cond:
            self._counters.pushed(payload_bytes(header), header.length * 4)
            if received.nonfinite:
                self._counters.rejected("nonfinite")
                raise InvalidArgument(
                    f"push seq {header.seq} from worker {header.worker_id} has NaN or Inf values "
                    f"in {received.nonfinite}; nothing was applied"
                )
            self._check_alive()
            self._guard("not_member", lambda: self._check_member(header.worker_id))
            remembered = recall(self._last_push, header, self._version, self._clocks.clock)
            if remembered is not None:
                self._counters.pushes_duplicate += 1
                # Answered only once the push it repeats is durable (it may still be syncing).
                return remembered, self._journal.tail() if self._journal else 0
            self._guard("invalid", lambda: check_base_version(header, self._version))
            ticket = 0
            if self._journal is not None and received.payload is not None:
                # Logged before the policy sees it: the policy may scale the gradient in place.
                ticket = self._journal.log_push(header, received.payload)
            decision = self._policy.on_push(self, header, received.grad, received.buffer_delta)
            if decision.outcome in _REFUSED:
                self._counters.rejected(decision.reject_key or decision.outcome.value)
            else:
                self._clocks.tick(header.worker_id)
                self._cond.notify_all()  # a clock moved: ssp pulls may go on
            result = PushResult(
                decision.outcome, self._version, self._clocks.clock, reason=decision.reason
            )
            self._last_push[header.worker_id] = (header.seq, result)
            return result, ticket

    # --- pulls ---

    def pull(
        self,
        worker_id: str,
        min_version: int,
        dtype: int,
        timeout: float,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> PullSnapshot:
        """A copy of the values once the mode lets ``worker_id`` read them.

        Waits at most ``timeout`` seconds (then DeadlineExceeded naming what it waited for).
        An observer (empty ``worker_id``) needs no membership and never waits on the mode; it
        waits only for a ``min_version`` it asks for.
        """
        wire.itemsize(dtype)  # InvalidArgument for an unknown dtype, before any wait
        arrived = time.monotonic()
        deadline = arrived + timeout
        held = False
        with self._cond:
            while True:
                self._check_alive()
                if worker_id:
                    self._check_member(worker_id)
                blocker = self._pull_blocker(worker_id, min_version)
                if blocker is None:
                    break
                held = True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or cancelled():
                    raise DeadlineExceeded(
                        f"pull by {worker_id or 'an observer'} gave up after {timeout:.1f}s "
                        f"waiting for {blocker}"
                    )
                self._cond.wait(remaining)
            ticket = 0
            if worker_id:
                self._policy.on_pull_granted(self, worker_id)
                if self._journal is not None and worker_id in self._clocks.excluded:
                    ticket = self._journal.log_read(worker_id)  # its clock may move
                self._read_current(worker_id)
            lease = self._snapshots.take(self._opt.values, self._version, dtype)
            self._counters.pulled(lease.nbytes)
            snapshot = PullSnapshot(
                self._version,
                self._clocks.clock,
                self.config.start,
                self.config.length,
                dtype,
                lease,
                waited_seconds=time.monotonic() - arrived if held else 0.0,
                buffers=self._buffers.snapshot(),  # of the same moment as the values
            )
        if ticket:
            self._commit(ticket)
        return snapshot

    def replay_read(self, worker_id: str) -> None:
        """Recovery: a logged pull by an uncounted member (its clock read)."""
        with self._cond:
            self._read_current(worker_id)

    def _read_current(self, worker_id: str) -> None:
        """The worker now holds the current parameters: an excluded (or re-entering) worker is
        not behind any more (see :meth:`MemberClocks.read`)."""
        before = self._clocks.clock
        self._clocks.read(worker_id)
        if self._clocks.clock != before:  # a re-entry moved the clock: ssp pulls may go on
            self._cond.notify_all()

    def _pull_blocker(self, worker_id: str, min_version: int) -> str | None:
        if self._version < min_version:
            return self._policy.version_wait(self, min_version)
        return self._policy.pull_blocker(self, worker_id) if worker_id else None

    # --- membership, stats, lifecycle ---

    def set_members(
        self, worker_ids: Sequence[str], generation: int, excluded: Sequence[str] = ()
    ) -> int:
        """Replace the member set unless ``generation`` is older; returns the one in force.

        ``excluded`` are members the coordinator took out of the ssp clock (stragglers): the
        others' pulls stop waiting for them, their pushes still face the ssp bound, and one
        taken off the list counts again once it has caught up (:mod:`pscluster.server.clocks`).
        In async and sync modes the set is kept and reported (the clock is only informational
        there) but decides nothing.
        """
        check_member_ids(worker_ids, excluded)
        with self._cond:
            self._check_alive()
            if generation < self._generation:
                return self._generation
            self._generation = generation
            ticket = 0
            if self._journal is not None:
                ticket = self._journal.log_members(list(worker_ids), generation, list(excluded))
            before = self._clocks.excluded
            added, removed = self._clocks.set_members(worker_ids, excluded)
            now_excluded = self._clocks.excluded
            self._policy.on_members_changed(self)
            # Wake waiting pulls: a removed worker must stop waiting, the ssp minimum may move.
            self._cond.notify_all()
        self._commit(ticket)
        if added or removed or before != now_excluded:
            log.info(
                "job %s generation %d: added %s, removed %s, excluded %s",
                self.config.job_id,
                generation,
                added,
                removed,
                now_excluded,
                extra={"job_id": self.config.job_id},
            )
        return generation

    def stats(self) -> JobStats:
        with self._cond:
            c = self._counters
            return JobStats(
                job_id=self.config.job_id,
                start=self.config.start,
                length=self.config.length,
                version=self._version,
                clock=self._clocks.clock,
                pushes_received=c.pushes_received,
                pushes_applied=c.pushes_applied,
                pushes_rejected=dict(c.pushes_rejected),
                pulls=c.pulls,
                bytes_pushed=c.bytes_pushed,
                bytes_pulled=c.bytes_pulled,
                bytes_pushed_raw=c.bytes_pushed_raw,
                staleness=dict(c.staleness),
                clock_staleness=dict(c.clock_staleness),
                max_clock_lead=c.max_clock_lead,
                members=self._clocks.members,
                worker_clocks=self._clocks.snapshot(),
                waiting_for=self._policy.waiting_for(self),
                checksum=self.checksum_locked(),
                last_update_unix=c.last_update_unix,
                steps_applied=c.steps_applied,
                excluded=self._clocks.excluded,
                pushes_duplicate=c.pushes_duplicate,
                durable=self._journal is not None,
                checkpoint_version=self._journal.checkpoint_version if self._journal else 0,
                records_replayed=self._replayed,
            )

    def checksum(self) -> float:
        with self._cond:
            return self.checksum_locked()

    def checksum_locked(self) -> float:
        return float(self._opt.values.sum(dtype=torch.float64))

    def drop(self) -> None:
        """Mark the job gone and wake its waiters, which answer NOT_FOUND; delete its files."""
        with self._cond:
            self._dropped = True
            self._cond.notify_all()
        if self._journal is not None:
            self._journal.delete()

    # --- durability (pscluster.server.durability) ---

    @property
    def journal(self) -> Journal | None:
        return self._journal

    def attach(self, journal: Journal, records_replayed: int = 0) -> None:
        """Log from now on (a new job, or one just recovered by replaying its log)."""
        with self._cond:
            self._journal = journal
            self._replayed = records_replayed

    def _commit(self, ticket: int) -> None:
        if ticket and self._journal is not None:
            self._journal.commit(ticket, self)

    def wake(self) -> None:
        """Let waiting pulls re-check their conditions (e.g. a caller went away)."""
        with self._cond:
            self._cond.notify_all()

    def _check_alive(self) -> None:
        if self._dropped:
            raise NotFound(f"job {self.config.job_id} was dropped from this shard")

    def _check_member(self, worker_id: str) -> None:
        if worker_id not in self._clocks:
            raise NotFound(
                f"worker {worker_id} is not a member of job {self.config.job_id}: it holds no lease"
            )

    def _guard(self, reason: str, check: Callable[[], None]) -> None:
        """Run ``check``; count a refusal under ``reason`` before passing it on."""
        try:
            check()
        except PSError:
            self._counters.rejected(reason)
            raise
