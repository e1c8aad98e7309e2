"""ScaleShards: use N of the registered shards from now on, and move running jobs onto them.

New jobs are placed on the chosen shards at once. Each running job is then cut again over
all of them and moved between two of its steps (:mod:`pscluster.coordinator.moves`), one job
at a time, and the move is an event of the job with what it cost. A job being started or
finished at that moment, or whose workers do not reach a step boundary in time, stays where
it is (the reply says so); calling ScaleShards again moves it.
"""

from __future__ import annotations

import logging
import threading
import time

from pscluster.coordinator import store as st
from pscluster.coordinator.jobs import JobManager
from pscluster.coordinator.move_calls import MoveCalls
from pscluster.coordinator.move_plan import LostRange, plan_move
from pscluster.coordinator.move_recovery import Verdict, recover
from pscluster.coordinator.moves import JobMover
from pscluster.coordinator.shard_directory import Slot
from pscluster.v1 import coordinator_pb2 as co_pb2

log = logging.getLogger(__name__)

DEFAULT_QUIESCE_SECONDS = 30.0
EVENT = "layout"
# How long a restarted coordinator keeps asking the shards of a move it did not finish how
# far it got (shards restarted beside it take a few seconds to serve), once a second.
RECOVER_SECONDS = 120.0


class ShardScaler:
    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs
        self.rt = jobs.rt
        self._one_at_a_time = threading.Lock()

    def scale(self, request: co_pb2.ScaleShardsRequest) -> co_pb2.ScaleShardsReply:
        with self._one_at_a_time:
            slots = self.rt.directory.use(request.shards)
            log.info("using %d shard(s): %s", len(slots), ", ".join(s.shard_id for s in slots))
            quiesce = request.timeout_seconds or DEFAULT_QUIESCE_SECONDS
            mover = JobMover(self.rt.shards, self._commit, quiesce, self.rt.store)
            reply = co_pb2.ScaleShardsReply(shard_ids=[s.shard_id for s in slots])
            for job in self.rt.store.list_jobs(st.RUNNING):
                move = self._move(job.job_id, slots, mover)
                if move is not None:
                    reply.jobs.append(move)
            return reply

    def _move(self, job_id: str, slots: list[Slot], mover: JobMover) -> co_pb2.JobMove | None:
        """Move one running job onto ``slots``; None when it has no shards or is there."""
        with self.jobs.claimed(job_id) as claimed:
            job = self.jobs.require(job_id)
            if job.state != st.RUNNING or not job.shards:
                return None
            plan = plan_move(job, slots)
            if plan is None:
                return None
            if not claimed:
                reason = "it was being started or finished; scale again to move it"
                return co_pb2.JobMove(job_id=job_id, reason=reason)
            try:
                move = mover.move(plan)
            except LostRange as e:  # undone, but part of the job is no longer anywhere
                log.error("job %s: %s", job_id, e)
                self.jobs.fail(job_id, str(e))
                move = co_pb2.JobMove(job_id=job_id, reason=str(e))
        self._record(job, move)
        return move

    def recover_in_background(self, deadline: float = RECOVER_SECONDS) -> threading.Thread:
        """Finish or undo the moves the previous coordinator process did not (on a thread of
        its own: a shard that is down must not delay the start)."""
        thread = threading.Thread(
            target=self.recover, args=(deadline,), name="move-recovery", daemon=True
        )
        thread.start()
        return thread

    def recover(self, deadline: float, poll: float = 1.0) -> None:
        """:mod:`~pscluster.coordinator.move_recovery` for every move left in the store,
        asking again while a shard does not answer, up to ``deadline`` seconds."""
        pending = self.rt.store.moves()
        if not pending:
            return
        with self._one_at_a_time:
            mover = JobMover(self.rt.shards, self._commit, DEFAULT_QUIESCE_SECONDS, self.rt.store)
            calls = MoveCalls(self.rt.shards)
            ends = time.monotonic() + deadline
            while True:
                waiting = [(m, why) for m in pending if (why := self._recover(mover, calls, m))]
                if not waiting or time.monotonic() >= ends:
                    break
                pending = [m for m, _ in waiting]
                time.sleep(poll)
        for move, why in waiting:
            message = f"a move cut short by a coordinator restart is not resolved: {why}"
            log.error("job %s: %s", move.job_id, message)
            self._event(move.job_id, message)

    def _recover(self, mover: JobMover, calls: MoveCalls, move: st.MoveRecord) -> str:
        """Resolve one move left in the store; "" once done, else why it waits."""
        job = self.rt.store.get_job(move.job_id)
        if job is None or job.state not in (st.PENDING, st.RUNNING):
            self.rt.store.end_move(move.job_id)
            return ""
        try:
            verdict, outcome = recover(mover, calls, job, move)
        except LostRange as e:
            self.jobs.fail(move.job_id, str(e))
            return ""
        if verdict is Verdict.ASK_AGAIN:
            return outcome
        message = f"a move cut short by a coordinator restart: {outcome}"
        log.info("job %s: %s", move.job_id, message)
        self._event(move.job_id, message)
        return ""

    def _event(self, job_id: str, message: str) -> None:
        self.rt.store.append_event(job_id, st.EventRecord(self.rt.wall(), EVENT, "", message))

    def _commit(self, job: st.JobRecord) -> None:
        """The job is on ``job.shards`` now: store it and send its membership there."""
        rt = self.rt
        with rt.lock:
            stored = rt.store.update_job(
                job.job_id, shards=job.shards, layout_generation=job.layout_generation
            )
            addresses = [p.address for p in stored.shards]
            rt.executor.members.add_job(job.job_id, addresses, stored.generation)
        rt.executor.members.request(job.job_id)
        rt.consistency.resend(job.job_id)  # a switch the exported state may have missed

    def _record(self, job: st.JobRecord, move: co_pb2.JobMove) -> None:
        before = len(job.shards)
        if move.moved:
            message = (
                f"moved from {before} to {len(move.shard_ids)} shard(s) "
                f"({', '.join(move.shard_ids)}; layout generation {move.layout_generation}): "
                f"{move.quiesce_seconds:.2f}s until every worker was between two steps, then "
                f"pulls paused {move.pause_seconds:.2f}s while "
                f"{move.state_bytes / 1e6:.1f} MB of state changed shard"
            )
        else:
            message = f"stayed on its {before} shard(s): {move.reason}"
        log.info("job %s %s", job.job_id, message)
        self._event(job.job_id, message)
