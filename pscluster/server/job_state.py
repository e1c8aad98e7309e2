"""A job's state on one shard: what its consistency policy sees and what a checkpoint holds.

The values and their optimizer, the model's buffers, the version, the members' clocks, the
membership generation, the answers to the last pushes (for retries), the counters and the
policy's own state (sync's open step). :class:`~pscluster.server.shard_job.ShardJob` owns the
lock and the order of events; this object holds the state and nothing else, so that
``state_dict`` / ``load_state_dict`` (:mod:`pscluster.server.job_state_checkpoint`) are the
one description of it (checkpoints, recovery, moves and the durability tests all go through
them). Not thread-safe: call it under the job's lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from pscluster.errors import InvalidArgument, NotFound
from pscluster.model.optimizer import FlatOptimizer
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.clocks import MemberClocks
from pscluster.server.consistency import TrialStep, make_policy, switch_policy
from pscluster.server.dedup import PushLedger
from pscluster.server.domain import JobConfig, JobStats, PushHeader, PushResult
from pscluster.server.job_buffers import JobBuffers
from pscluster.server.job_state_checkpoint import JobStateCheckpoint
from pscluster.server.snapshots import SnapshotCache
from pscluster.server.stats import JobCounters
from pscluster.server.tables.job_tables import JobTables
from pscluster.server.tables.rows import RowGrads
from pscluster.server.trial import TrialCopy
from pscluster.server.zero_mask import ZeroMask


class JobState(JobStateCheckpoint):
    """The :class:`~pscluster.server.consistency.JobContext` a job's policy decides with.

    ``wake`` is called whenever waiting pulls should look again (the version or a clock moved).
    """

    def __init__(
        self,
        config: JobConfig,
        values: torch.Tensor,
        buffers: torch.Tensor | None,
        wake: Callable[[], None],
        tables: Sequence[torch.Tensor | None] = (),
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
        self.policy = make_policy(config.mode, config.staleness, config.backup_workers)
        # The SetConsistency revision in force (0: the mode the job was created with).
        self.revision = 0
        self.opt = FlatOptimizer(values, config.optimizer)
        self.zeros = ZeroMask.of_zeros(values, config.hold_zeros)
        self.buffers = JobBuffers(buffers, config.counters)
        self.tables = _tables(config, tables)
        self.version = 0
        self.clocks = MemberClocks()
        self.generation = 0
        self.ledger = PushLedger()
        self.counters = JobCounters()
        self.trial: TrialCopy | None = None  # mode auto's copy to go back to (server/trial.py)
        # Not state: copies of the values that pulls stream from (copy-on-write).
        self.snapshots = SnapshotCache(config.length)
        self._wake = wake

    # --- the JobContext ---

    @property
    def clock(self) -> int:
        return self.clocks.clock

    @property
    def members(self) -> list[str]:
        return self.clocks.members

    def clock_of(self, worker_id: str) -> int:
        return self.clocks.of(worker_id)

    def slowest(self) -> tuple[str, int] | None:
        return self.clocks.slowest()

    def apply(
        self,
        grad: torch.Tensor,
        pushes: Sequence[PushHeader],
        *,
        step: bool,
        buffer_delta: torch.Tensor | None = None,
        rows: RowGrads | None = None,
        change: torch.Tensor | None = None,
    ) -> None:
        """See JobContext.apply. ``grad`` is what the pushes carry: a gradient, or the change
        of local steps on the workers (their headers' ``local_steps``), which is added at the
        optimizer's lr (w -= lr * change) and leaves its state (momentum, Adam moments) as it
        was, since the workers' own optimizer already took those steps. A sync step whose
        pushes carry both (a switch of mode "auto" between them) passes the changes' part as
        ``change``."""
        version, clock = self.version, self.clocks.clock
        gradient: torch.Tensor | None = grad
        if change is None and all(push.local_steps for push in pushes):
            gradient, change = None, grad
        if self.config.staleness_aware_lr and not step:
            # Staleness-aware async SGD (Zhang et al. 2016): a gradient computed on parameters
            # tau updates old moves them 1 / (tau + 1) as far. Sync steps have tau = 0.
            lag = max(version - push.base_version for push in pushes)
            if lag > 0:
                for part in (gradient, change):
                    if part is not None:
                        part.div_(lag + 1)  # lent memory: ours to change until we return
                if rows is not None:
                    rows.scale_(1 / (lag + 1))
        self.snapshots.before_update()
        if gradient is not None:
            self.opt.step(gradient)
        if change is not None:
            self.opt.add_change(change)
        self.zeros.apply(self.opt.values)  # pruned weights: zero after every step, every mode
        if rows is not None:
            self.tables.apply(rows)
        self.buffers.apply(buffer_delta, len(pushes))  # never scaled by staleness
        self.version += 1
        for push in pushes:
            self.counters.applied(version - push.base_version, max(0, clock - push.base_clock))
        if step:
            self.counters.steps_applied += 1
        self._wake()

    def record_clock_lead(self, lead: int) -> None:
        self.counters.clock_lead(lead)

    # --- what the job asks, under its lock ---

    def decide(
        self,
        header: PushHeader,
        grad: torch.Tensor,
        buffer_delta: torch.Tensor | None,
        rows: RowGrads | None = None,
    ) -> PushResult:
        """The policy's decision on a new, valid push from a member, with its bookkeeping: a
        taken push moves its sender's clock, a refused one is counted; either is remembered
        for retries."""
        decision = self.policy.on_push(self, header, grad, buffer_delta, rows)
        if decision.outcome.taken:
            self.clocks.tick(header.worker_id)
            self._wake()  # a clock moved: ssp pulls may go on
        else:
            self.counters.rejected(decision.reject_key or decision.outcome.value)
        result = PushResult(
            decision.outcome,
            self.version,
            self.clocks.clock,
            reason=decision.reason,
            next_version=decision.next_version,
        )
        self.ledger.remember(header.worker_id, header.seq, result)
        return result

    def set_consistency(
        self,
        mode: str,
        staleness: int,
        backup_workers: int,
        revision: int,
        trial: TrialStep = TrialStep.NONE,
        local_steps: int = 0,
    ) -> tuple[bool, bool]:
        """Replace the mode between two pushes (see :mod:`pscluster.server.consistency.switch`)
        unless ``revision`` is not newer than the one in force, and do ``trial`` to the trial
        copy (:mod:`pscluster.server.trial`); (whether the revision was taken, whether the
        state went back to the copy). The config says the mode in force, so a checkpoint
        rebuilds the job in it. ``local_steps`` needs no new policy: each push says what it
        carries (see :meth:`apply`), and pulls tell the workers the number in force."""
        if revision <= self.revision:
            return False, False
        if (mode, staleness, backup_workers) != (
            self.config.mode,
            self.config.staleness,
            self.config.backup_workers,
        ):
            self.policy = switch_policy(self, self.policy, mode, staleness, backup_workers)
            self.config = replace(
                self.config, mode=mode, staleness=staleness, backup_workers=backup_workers
            )
        if local_steps != self.config.local_steps:
            self.config = replace(self.config, local_steps=local_steps)
        self.revision = revision
        if trial is TrialStep.BEGIN and not len(self.tables):
            # After the switch: an open sync step the switch applied is in the copy.
            self.trial = TrialCopy.take(self.opt, self.buffers)
        undone = trial in (TrialStep.UNDO, TrialStep.UNDO_KEEP) and self.trial is not None
        if undone:
            self._undo_trial()
        if trial in (TrialStep.UNDO, TrialStep.END):
            self.trial = None
        self._wake()  # a step may have closed, a bound loosened: waiting pulls look again
        return True, undone

    def _undo_trial(self) -> None:
        """The learned state becomes the trial copy, at a new version (pulls must see it)."""
        assert self.trial is not None
        self.snapshots.before_update()
        self.trial.restore_into(self.opt, self.buffers)
        self.version += 1

    def check_member(self, worker_id: str) -> None:
        if worker_id not in self.clocks:
            raise NotFound(
                f"worker {worker_id} is not a member of job {self.config.job_id}: it holds no lease"
            )

    def pull_blocker(self, worker_id: str, min_version: int) -> str | None:
        """What a pull must wait for, or None if it may go (an observer has no ``worker_id``)."""
        if self.version < min_version:
            return self.policy.version_wait(self, min_version)
        return self.policy.pull_blocker(self, worker_id) if worker_id else None

    def read_current(self, worker_id: str) -> None:
        """The worker now holds the current parameters: an excluded (or re-entering) worker is
        not behind any more (see :meth:`MemberClocks.read`)."""
        before = self.clocks.clock
        self.clocks.read(worker_id)
        if self.clocks.clock != before:  # a re-entry moved the clock: ssp pulls may go on
            self._wake()

    def set_members(
        self, worker_ids: Sequence[str], excluded: Sequence[str]
    ) -> tuple[list[str], list[str], bool]:
        """(added, removed, whether the uncounted set changed). Wakes waiting pulls: a removed
        worker must stop waiting, the ssp minimum may move, a sync step may be complete."""
        before = self.clocks.excluded
        added, removed = self.clocks.set_members(worker_ids, excluded)
        self.policy.on_members_changed(self)
        self._wake()
        return added, removed, before != self.clocks.excluded

    # --- reading ---

    def stats(self, *, durable: bool, checkpoint_version: int, replayed: int) -> JobStats:
        c, clocks = self.counters, self.clocks
        return JobStats(
            job_id=self.config.job_id,
            start=self.config.start,
            length=self.config.length,
            version=self.version,
            clock=clocks.clock,
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
            members=clocks.members,
            worker_clocks=clocks.snapshot(),
            waiting_for=self.policy.waiting_for(self),
            checksum=self.checksum(),
            last_update_unix=c.last_update_unix,
            steps_applied=c.steps_applied,
            excluded=clocks.excluded,
            pushes_duplicate=c.pushes_duplicate,
            durable=durable,
            checkpoint_version=checkpoint_version,
            records_replayed=replayed,
            tables=self.tables.stats(),
        )

    def checksum(self) -> float:
        return float(self.opt.values.sum(dtype=torch.float64))


def _tables(config: JobConfig, initial: Sequence[torch.Tensor | None]) -> JobTables:
    """The job's tables on this shard; ``initial`` rows per table (None or absent: drawn)."""
    given = list(initial) + [None] * (len(config.tables) - len(initial))
    if len(given) != len(config.tables):
        raise InvalidArgument(f"{len(initial)} initial tables for {len(config.tables)} tables")
    if config.tables and config.sparse_optimizer is None:
        raise InvalidArgument(f"job {config.job_id} has tables but no sparse_optimizer")
    optimizer = config.sparse_optimizer or SparseOptimizerSpec("sgd", 1.0)
    return JobTables(config.tables, optimizer, given)
