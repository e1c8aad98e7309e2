"""One job's slice on a shard: its lock, and the order in which a push, a pull or a membership
change reads and changes its state (a :class:`~pscluster.server.job_state.JobState`).

No gRPC here: the servicer hands in plain headers and byte chunks. One lock (a Condition) per
job, so jobs never wait on each other; payloads are received and checked outside the lock
(:class:`~pscluster.server.intake.PushIntake`), and only the decision and the optimizer step
run under it. A push is validated in full before it touches anything, so a refused push
changes nothing but the counters. A durable job logs through the journal the shard attaches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from pscluster.compression import CompressionSettings, make_compressor
from pscluster.errors import DeadlineExceeded, InvalidArgument, NotFound, PSError
from pscluster.server.domain import JobConfig, JobStats, PullSnapshot, PushHeader, PushResult
from pscluster.server.intake import PushIntake, Received
from pscluster.server.job_control import JobControl
from pscluster.server.job_persistence import JobPersistence
from pscluster.server.job_state import JobState
from pscluster.server.layout_gate import HELD_FOR_MOVE, HoldStatus, LayoutGate
from pscluster.server.payloads import payload_bytes
from pscluster.server.push_checks import check_base_version, check_header
from pscluster.server.tables.rows import block_bytes
from pscluster.transport import wire

if TYPE_CHECKING:
    from pscluster.server.durability.journal import Journal

log = logging.getLogger(__name__)
# Longest a pull waits on a move's hold before answering DEADLINE_EXCEEDED (the worker pulls
# again at once): short, so that a worker caught mid-step on one shard comes back to wait on
# all of them within a fraction of a second (see _wait_for_pull).
HELD_PULL_SECONDS = 0.5


T = TypeVar("T")


class ShardJob(JobControl, JobPersistence):
    """``buffers``: the job's initial float64 buffer values (None when it has none)."""

    def __init__(
        self,
        config: JobConfig,
        values: torch.Tensor,
        buffers: torch.Tensor | None = None,
        tables: Sequence[torch.Tensor | None] = (),
    ) -> None:
        self.config = config
        self._cond = threading.Condition()
        self._state = JobState(config, values, buffers, wake=self._cond.notify_all, tables=tables)
        # Decoding is stateless, so the shard needs only the codec's name (not its ratio).
        self._codec = make_compressor(CompressionSettings(name=config.codec))
        self._intake = PushIntake(config, self._codec)
        self._dropped = False
        # Live re-layout: held, released or moved away (pscluster.server.layout_gate).
        self.gate = LayoutGate(self._cond, config.job_id, config.layout_generation)
        # Durability (pscluster.server.durability): None keeps the job in memory only.
        self._journal: Journal | None = None
        self._replayed = 0

    @property
    def version(self) -> int:
        return self._state.version

    @property
    def clock(self) -> int:
        return self._state.clock

    @property
    def members(self) -> list[str]:
        return self._state.members

    # --- pushes ---

    def push(self, header: PushHeader, data: Iterable[bytes | memoryview]) -> PushResult:
        """Receive a push's payload from ``data`` (the stream's chunks) and decide on it."""
        with self._cond:
            self._check_alive()
            self._state.counters.pushes_received += 1
            self._guard("invalid", lambda: check_header(self.config, self._codec, header))
            self._guard("not_member", lambda: self._state.check_member(header.worker_id))
        # A durable job logs the payload as it came off the wire.
        return self._receive_and_decide(header, data, keep_payload=self._journal is not None)

    def replay_push(self, header: PushHeader, payload: bytes) -> PushResult:
        """Recovery: a logged push, through the same checks and decision as when it came."""
        with self._cond:
            self._state.counters.pushes_received += 1
        return self._receive_and_decide(header, [payload], keep_payload=False)

    def _receive_and_decide(
        self, header: PushHeader, data: Iterable[bytes | memoryview], *, keep_payload: bool
    ) -> PushResult:
        # Received, decoded and checked outside the lock (pscluster.server.intake).
        try:
            received = self._intake.receive(header, data, keep_payload=keep_payload)
        except InvalidArgument:
            with self._cond:
                self._state.counters.rejected("invalid")
            raise
        try:
            # The payload's bytes go to the log here, outside the lock; the decision's record
            # under it only refers to them (pscluster.server.durability.wal).
            journal, logged = self._journal, None
            if journal is not None and received.payload is not None and not received.nonfinite:
                logged = journal.log_payload(header, received.payload)
            result, ticket = self._decide_locked(header, received, logged)
        finally:
            received.release()
        self._commit(ticket)
        return result

    def _decide_locked(
        self, header: PushHeader, received: Received, logged: int | None
    ) -> tuple[PushResult, int]:
        state = self._state
        with self._cond:
            state.counters.pushed(payload_bytes(header), header.length * 4)
            if received.nonfinite:
                state.counters.rejected("nonfinite")
                raise InvalidArgument(
                    f"push seq {header.seq} from worker {header.worker_id} has NaN or Inf values "
                    f"in {received.nonfinite}; nothing was applied"
                )
            self._check_alive()
            self._guard("not_member", lambda: self._state.check_member(header.worker_id))
            remembered = state.ledger.recall(header, state.version, state.clock)
            if remembered is not None:
                state.counters.pushes_duplicate += 1
                # Answered only once the push it repeats is durable (it may still be syncing).
                return remembered, self._journal.tail() if self._journal else 0
            self._guard("invalid", lambda: check_base_version(header, state.version))
            if received.rows is not None:
                rows = received.rows
                self._guard("invalid", lambda: state.tables.check(rows))
                dims = state.tables.dims
                state.tables.received(rows, [block_bytes(b, dims[b.table]) for b in header.rows])
            ticket = 0
            if self._journal is not None and received.payload is not None:
                # Logged before the policy sees it: the policy may scale the gradient in place.
                ticket = self._journal.log_push(header, received.payload, logged)
            result = state.decide(header, received.grad, received.buffer_delta, received.rows)
            self.gate.ended_step(header.worker_id)
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
        state = self._state
        arrived = time.monotonic()
        with self._cond:
            held = self._wait_for_pull(worker_id, min_version, arrived, timeout, cancelled)
            ticket = 0
            if worker_id:
                state.policy.on_pull_granted(state, worker_id)
                if self._journal is not None and worker_id in state.clocks.excluded:
                    ticket = self._journal.log_read(worker_id)  # its clock may move
                state.read_current(worker_id)
                self.gate.began_step(worker_id)
            lease = state.snapshots.take(state.opt.values, state.version, dtype)
            state.counters.pulled(lease.nbytes)
            snapshot = PullSnapshot(
                state.version,
                state.clock,
                self.config.start,
                self.config.length,
                dtype,
                lease,
                waited_seconds=time.monotonic() - arrived if held else 0.0,
                buffers=state.buffers.snapshot(),  # of the same moment as the values
                revision=state.revision,
                local_steps=state.config.local_steps,
            )
        self._commit(ticket)
        return snapshot

    def _wait_for_pull(
        self,
        worker_id: str,
        min_version: int,
        arrived: float,
        timeout: float,
        cancelled: Callable[[], bool],
    ) -> bool:
        """Call under the lock: wait until the pull may go; whether it was held at all.

        A pull held for a layout move gives up after :data:`HELD_PULL_SECONDS`, not its whole
        timeout: a worker pulls every shard at once, so one whose pull was granted on one
        shard just before the hold and held on another stays mid-step on the first until it
        pulls again; its retry (of every pull) then waits on each shard, between two steps."""
        deadline = arrived + timeout
        held = False
        with self.gate.pull(worker_id) as gate:
            while True:
                self._check_alive()
                if worker_id:
                    self._state.check_member(worker_id)
                blocker = gate.blocker() or self._state.pull_blocker(worker_id, min_version)
                if blocker is None:
                    return held
                held = True
                now = time.monotonic()
                remaining = deadline - now
                if blocker == HELD_FOR_MOVE:
                    remaining = min(remaining, arrived + HELD_PULL_SECONDS - now)
                if remaining <= 0 or cancelled():
                    raise DeadlineExceeded(
                        f"pull by {worker_id or 'an observer'} gave up after {timeout:.1f}s "
                        f"waiting for {blocker}"
                    )
                self._cond.wait(remaining)

    def lookup(
        self, table: int, ids: torch.Tensor, *, peek: bool = False, itemsize: int = 4
    ) -> torch.Tensor:
        """A copy of rows of one of the job's tables (float32), read under the job's lock so
        that it is never half of an update. Never waits on the mode: a worker looks rows up
        after its pull was granted; an observer (``job.lookup``) whenever it likes."""
        with self._cond:
            self._check_alive()
            rows = self._state.tables.lookup(table, ids, peek=peek, itemsize=itemsize)
            admitted = self._state.tables.take_admitted(table)
            ticket = 0
            if self._journal is not None and admitted.size:
                ticket = self._journal.log_admit(table, admitted.astype("<i8").tobytes())
        self._commit(ticket)  # the rows it created are durable before they are read
        return rows

    def export(self, table: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row of a table held here, with its id (a fetch), under the job's lock."""
        with self._cond:
            self._check_alive()
            return self._state.tables.export(table)

    def replay_admit(self, table: int, ids: bytes) -> None:
        """Recovery: the ids a lookup admitted, created again (with the same initial rows)."""
        with self._cond:
            self._state.tables.admit(table, np.frombuffer(ids, dtype="<i8").astype(np.int64))

    def replay_read(self, worker_id: str) -> None:
        """Recovery: a logged pull by an uncounted member (its clock read)."""
        with self._cond:
            self._state.read_current(worker_id)

    # --- stats, lifecycle (membership and consistency: JobControl) ---

    def stats(self) -> JobStats:
        journal = self._journal
        with self._cond:
            return self._state.stats(
                durable=journal is not None,
                checkpoint_version=journal.checkpoint_version if journal else 0,
                replayed=self._replayed,
            )

    def checksum(self) -> float:
        with self._cond:
            return self._state.checksum()

    def drop(self) -> None:
        """Mark the job gone and wake its waiters, which answer NOT_FOUND; delete its files."""
        with self._cond:
            self._dropped = True
            self._cond.notify_all()
        if self._journal is not None:
            self._journal.delete()

    def layout_status(self) -> HoldStatus:
        """HoldJob's answer: the members, those held at the gate, the version."""
        with self._cond:
            return self.gate.status(self._state.members, self._state.version)

    def move(self, generation: int) -> None:
        """The job left this shard (HoldJob MOVED, or replaced by a newer AdoptJob): its
        waiters and later calls answer "layout moved"; its files go, as a dropped job's."""
        self.gate.move(generation)
        if self._journal is not None:
            self._journal.delete()

    def wake(self) -> None:
        """Let waiting pulls re-check their conditions (e.g. a caller went away)."""
        with self._cond:
            self._cond.notify_all()

    def _check_alive(self) -> None:
        self.gate.check_open()
        if self._dropped:
            raise NotFound(f"job {self.config.job_id} was dropped from this shard")

    def _guard(self, reason: str, check: Callable[[], None]) -> None:
        """Run ``check``; count a refusal under ``reason`` before passing it on."""
        try:
            check()
        except PSError:
            self._state.counters.rejected(reason)
            raise
