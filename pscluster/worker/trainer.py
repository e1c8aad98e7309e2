"""One lease of work: train on a partition (pull, forward/backward, push) or evaluate.

The loop is the same in every consistency mode; the shards decide when a pull may return and
whether a push is taken, and each push's answer says what the worker's next pull of that
shard waits for (``next_version``: sync's barrier), which the worker keeps across its leases
of a job. Every batch is either trained (in ``samples`` and the step losses) or dropped and
counted by reason in the lease's progress: refused by the shards (stale on every attempt, late
for a sync step with backup workers, already pushed), or never sent (a NaN or Inf loss or
gradient, an fp16 overflow).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from pscluster.config import Settings
from pscluster.model.hosted import attach_rows
from pscluster.server.consistency import AUTO
from pscluster.shard_client import PushExtras, ShardError, Snapshot
from pscluster.shard_client.errors import LayoutMovedError
from pscluster.shard_client.tables import split_rows
from pscluster.transport import wire
from pscluster.transport.retry import RetryPolicy, retry
from pscluster.v1 import common_pb2, coordinator_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.worker import overlapped_step as step
from pscluster.worker.compressed import Units
from pscluster.worker.hosted_rows import ShardRows
from pscluster.worker.local_sgd import Batch, Window
from pscluster.worker.outcomes import PushRound
from pscluster.worker.progress import ProgressReporter
from pscluster.worker.pull_ahead import PullAheadFailed
from pscluster.worker.runtime import JobRuntime
from pscluster.worker.telemetry import WorkerTelemetry

log = logging.getLogger(__name__)

# A window whose push some shard refuses (stale, already pushed) is recomputed on fresh
# parameters and pushed again to those shards, this many times in all, before it is dropped
# (only a worker cut off for long gets there).
MAX_ATTEMPTS = 5
# How long a worker waits for a moved job's new plan (ScaleShards writes it once every new
# shard holds the job, within a second of the answer "layout moved" unless it rolls back).
FOLLOW_SECONDS = 60.0
T = TypeVar("T")


def _shard_down(error: Exception) -> bool:
    return isinstance(error, ShardError) and error.unreachable


def _barrier_not_met(error: Exception) -> bool:
    """The pull's deadline was its wait (a sync barrier): try again at once."""
    return isinstance(error, ShardError) and error.status == grpc.StatusCode.DEADLINE_EXCEEDED


# Shard calls go on through a shard's restart or a barrier not yet met, for as long as the
# lease stands (see pscluster.transport.retry for which layer retries what).
SHARD_RETRY = RetryPolicy(_shard_down, first=0.05, cap=2.0, at_once=_barrier_not_met)


F32 = common_pb2.DTYPE_FLOAT32
ROW_DTYPES = {"fp16": common_pb2.DTYPE_FLOAT16, "bf16": common_pb2.DTYPE_BFLOAT16}


class LeaseLost(Exception):
    """The lease no longer stands (revoked, expired, job gone): abandon the work."""


class Trainer:
    def __init__(
        self,
        runtime: JobRuntime,
        worker_id: str,
        settings: Settings,
        lease_alive: Callable[[], bool],
        telemetry: WorkerTelemetry | None = None,
    ) -> None:
        self.rt = runtime
        self.telemetry = telemetry
        self.worker_id = worker_id
        self.settings = settings
        self.lease_alive = lease_alive
        if runtime.spec.model.tables:  # the model's tables look their rows up through us
            attach_rows(runtime.model, ShardRows(runtime, settings, self.call))

    def _check(self) -> None:
        if not self.lease_alive():
            raise LeaseLost("lease revoked or worker stopping")

    def call(self, fn: Callable[[], T], what: str) -> T:
        """``fn`` through passing shard failures while the lease stands; NOT_FOUND (the job or
        this worker's membership is gone) loses the lease."""
        self._check()
        try:
            return retry(fn, SHARD_RETRY, what=what, check=self._check)
        except ShardError as e:
            if e.status == grpc.StatusCode.NOT_FOUND:
                raise LeaseLost(f"{what}: {e}") from e
            raise

    def pull(self, min_versions: list[int] | None) -> Snapshot:
        timeout = self.settings.pull_wait_seconds + 5
        dtype = self.rt.pull_dtype

        def attempt() -> Snapshot:
            started = time.perf_counter()
            snap = self.rt.shards.pull(
                self.worker_id, min_versions, timeout, dtype, into=self.rt.pull_into
            )
            self._pulled_in(time.perf_counter() - started)
            return snap

        return self.call(attempt, "pull")

    def _pulled_in(self, seconds: float) -> None:
        """A pull of the whole vector took ``seconds`` (for the worker's metrics)."""
        if self.telemetry is not None:
            nbytes = self.rt.shards.size * wire.itemsize(self.rt.pull_dtype)
            self.telemetry.pulled(self.rt.job_id, seconds, nbytes)

    def train(self, task: coordinator_pb2.Task, reporter: ProgressReporter) -> int:
        """Train on the lease's batches, a window of ``local_steps`` batches per pull and push
        (one batch when the job has no local steps; in mode "auto" the number its shards say
        at each pull, for the next window); the samples trained."""
        rt = self.rt
        plan = rt.data.plan(task)
        follows = rt.spec.mode == AUTO
        samples = 0
        position = task.first_batch
        # Read ahead by the loader from the lease's first batch to its end as granted.
        reader = rt.data.train_batches(task, plan)

        def lease_end() -> int:
            # Read each window: the coordinator may cut the lease short while it runs.
            return min(reporter.end_batch or len(plan), len(plan))

        while position < lease_end():
            started = time.perf_counter()
            end = min(position + rt.local.local_steps, lease_end())
            data = [next(reader) for _ in range(position, end)]
            trained, waited, asked = self._window(data, task.epoch, reporter)
            if follows and asked is not None:
                rt.local.follow(asked)
            samples += trained
            if self.telemetry is not None:
                self.telemetry.trained(rt.job_id, trained)
            position = end
            wall = time.perf_counter() - started
            own = max(0.0, wall - waited)
            busy = self._slow_down(own)  # the injected delay adds to both
            phases = rt.local.clock.close(wall + busy - own)
            reporter.window_done(position, busy, wall + busy - own, len(data), phases)
            if self.telemetry is not None:
                self.telemetry.phased(rt.job_id, phases)
        return samples

    def _window(
        self, data: list[Batch], epoch: int, reporter: ProgressReporter
    ) -> tuple[int, float, int | None]:
        """Pull, train and push one window until every shard took it or it is dropped; the
        samples trained, the seconds pulls waited on other workers, and the local steps the
        last pull asked for (None: no pull went through)."""
        rt = self.rt
        push = PushRound.to(len(rt.shards.ranges))
        waited = 0.0
        asked: int | None = None
        window = Window(update=None)  # replaced by the first attempt
        clock = rt.local.clock
        for attempt in range(MAX_ATTEMPTS):
            # The first attempt overlaps its pull with forward and its push with backward
            # where the job allows; a retry pulls, then resends what it has.
            try:
                if attempt == 0:
                    found = self._overlapped(data)
                    window, snap = found or self._pulled(data, rt.min_versions, first=True)
                else:
                    waits = push.retry_versions(rt.min_versions)
                    window, snap = self._pulled(data, waits, first=False)
            except LayoutMovedError as e:  # between two steps: train this window there
                self._follow(e)
                push = PushRound.to(len(rt.shards.ranges))
                continue
            clock.move(snap.waited_seconds, "pull", "wait")
            waited += snap.waited_seconds
            asked = snap.local_steps
            if window.update is None:
                break  # nothing finite to push: every batch is dropped below
            try:
                with clock.phase("push"):
                    self._push(window, snap, epoch, push)
            except LayoutMovedError as e:  # a push cut by a move: dropped, never sent twice
                self._follow(e)
                push.drop("layout")
                break
            if push.taken_everywhere:
                break
            rt.local.discard()  # local steps: their optimizer state goes back too
            if push.done:
                break  # refused for good (late): as in Chen et al., go on with fresh parameters
        reporter.dropped("nonfinite", window.nonfinite)
        reporter.dropped("overflow", window.overflows)
        if window.nonfinite:
            log.warning(
                "non-finite loss or gradient on job %s: %d batch(es) dropped",
                rt.job_id,
                window.nonfinite,
            )
        if window.update is None:
            return 0, waited, asked
        if not push.taken_everywhere:
            reporter.dropped(push.reason, len(window.steps))
            log.info("job %s: %d batch(es) dropped (%s)", rt.job_id, len(window.steps), push.reason)
            return 0, waited, asked
        for loss, size in window.steps:
            reporter.step(loss, size, epoch)
            if self.telemetry is not None:
                self.telemetry.stepped(rt.job_id)
        return window.samples, waited, asked

    def _pulled(
        self, data: list[Batch], min_versions: list[int], *, first: bool
    ) -> tuple[Window, Snapshot]:
        """The window trained after a whole pull (its push still leaves during backward on
        the first attempt, where the job allows)."""
        rt = self.rt
        with rt.local.clock.phase("pull"):
            snap = self.pull(min_versions)
        start = step.starter(rt, self.worker_id, self.settings, lambda: snap, self._check)
        return rt.local.run(snap.values, snap.buffers, data, start if first else None), snap

    def _overlapped(self, data: list[Batch]) -> tuple[Window, Snapshot] | None:
        """The window trained while its pull arrives (None: the job's pulls cannot overlap,
        or this one failed and the window must be trained again after an ordinary pull)."""
        rt = self.rt
        if rt.local.local_steps > 1:  # forward under the pull: one step per push only
            return None
        ahead = step.pull_ahead(rt, self.worker_id, self.settings, self._pulled_in)
        into = rt.pull_into
        if ahead is None or rt.gate is None or into is None:
            return None
        start = step.starter(rt, self.worker_id, self.settings, ahead.snapshot, self._check)
        gate = rt.gate.watching(ahead, self._check)
        try:
            window = rt.local.run(into[0], into[1], data, start, gate)
            return window, ahead.snapshot()
        except PullAheadFailed as e:
            log.info("job %s: a pull under forward failed (%s); pulling again", rt.job_id, e)
            return None
        finally:
            ahead.join()  # a step given up on (lease lost) leaves no pull writing the model
            step.gate_time(rt.local.clock, ahead)

    def _slow_down(self, busy: float) -> float:
        """Fault injection for straggler tests and benchmarks (``PSC_SLOWDOWN``): stretch the
        worker's own time on each batch (all but the waits on other workers) to ``slowdown``
        times its length, as a slower machine would. Returns the busy time it now took."""
        factor = self.settings.slowdown
        if factor > 1.0:
            time.sleep(busy * (factor - 1.0))
            if self.telemetry is not None:
                self.telemetry.slept(busy * (factor - 1.0))
            return busy * factor
        return busy

    def _push(self, window: Window, snap: Snapshot, epoch: int, push: PushRound) -> None:
        """Push the window's update to the shards that have not taken it, and settle each
        shard's answer on its own (:class:`PushRound`)."""
        if window.update is None:
            raise ValueError("a window without an update has nothing to push")
        rt = self.rt
        started = window.started if isinstance(window.started, step.Started) else None
        # One id per push: a retry of this push reuses it.
        seq = started.seq if started is not None else rt.next_seq()
        timeout = self.settings.rpc_timeout_seconds
        # Encoded once: a retry resends the same bytes; each range's codec state moves on only
        # when its own shard takes the push.
        units = Units(change=window.local_steps > 0, scale=window.grad_scale)
        encoded = rt.encoder.encode(window.update, epoch, sorted(push.pending), units=units)
        rows = {}
        if window.rows:  # half precision rows when the job's codec sends half precision
            dtype = ROW_DTYPES.get(rt.encoder.name, F32)
            shards = len(rt.shards.ranges)
            rows = split_rows(window.rows, shards, dtype, rt.row_partitioners)
        extras = PushExtras(window.buffer_delta, window.grad_scale, rows, window.local_steps)
        replies: dict[int, ps_pb2.PushReply] = {}

        def send() -> dict[int, ps_pb2.PushReply]:
            nonlocal started
            began = started.began if started is not None else time.perf_counter()
            left = {i: e.payload for i, e in encoded.items() if i not in replies}
            if started is not None:  # the streams begun during backward: their answers
                results, started = started.pushes.results(), None
            else:
                results = rt.shards.push(
                    self.worker_id,
                    seq,
                    left,
                    rt.encoder.name,
                    snap,
                    window.samples,
                    timeout,
                    extras,
                )
            if self.telemetry is not None:
                nbytes = sum(memoryview(p).nbytes for p in left.values())
                self.telemetry.pushed(rt.job_id, time.perf_counter() - began, nbytes)
            failed = [r for r in results.values() if isinstance(r, ShardError)]
            replies.update({i: r for i, r in results.items() if not isinstance(r, ShardError)})
            if failed:  # the others' replies are kept: only these shards are sent it again
                raise failed[0]
            return replies

        try:
            push.settle(self.call(send, "push"), encoded, rt.encoder, rt.min_versions)
        finally:
            if started is not None:  # given up before its answers (the lease lost): its
                started.cancel()  # streams must not go on reading the next batch's gradient

    def evaluate(self) -> tuple[dict[str, float], list[int]]:
        """The job's loss and metric on the test set, and the shard versions they are of."""
        try:
            snap = self.pull_observer()
        except LayoutMovedError as e:
            self._follow(e)
            snap = self.pull_observer()
        return self.rt.evaluate(snap), snap.versions

    def _follow(self, moved: LayoutMovedError) -> None:
        """The job moved between shards: work by its new plan from now on."""
        log.info("job %s: %s", self.rt.job_id, moved)
        try:
            self.rt.follow(FOLLOW_SECONDS)
        except TimeoutError as e:
            raise LeaseLost(str(e)) from e

    def pull_observer(self) -> Snapshot:
        timeout = self.settings.rpc_timeout_seconds
        return self.call(lambda: self.rt.shards.pull("", None, timeout), "pull")
