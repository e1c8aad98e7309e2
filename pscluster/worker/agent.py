"""The worker process: register, heartbeat, and run whatever task the coordinator hands out.

Workers hold no state the cluster depends on: a worker may join or die at any moment. Its
heartbeats keep its lease alive; when they stop, the coordinator returns the lease to the pool.

The coordinator may also go away for a while (a crash and a restart): training goes on
against the shards meanwhile. Registering, acquiring and completing are retried with a capped
backoff until it answers again (:mod:`pscluster.transport.retry` says which layer retries
what); heartbeats go on at their pace, and progress reports are kept and sent with the next
one. A restarted coordinator restores the leases it had granted, so the lease's work is kept;
if it says the worker is unknown, the lease is gone and the worker registers afresh.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable

import grpc

from pscluster.config import Settings
from pscluster.logs import bind_worker_id, log_context
from pscluster.shard_client import ShardClient, ShardError
from pscluster.transport.channel import open_channel
from pscluster.transport.retry import RetryPolicy, Stopped, period, retry
from pscluster.v1 import coordinator_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from pscluster.worker import predict
from pscluster.worker.jobs import JobCache
from pscluster.worker.progress import PASSING, ProgressReporter
from pscluster.worker.runtime import pick_device
from pscluster.worker.telemetry import WorkerTelemetry
from pscluster.worker.trainer import LeaseLost, Trainer
from pscluster.worker.work import evaluate_lease, refused_for_good, train_lease

log = logging.getLogger(__name__)


def _code(error: Exception) -> grpc.StatusCode | None:
    return error.code() if isinstance(error, grpc.Call) else None


# Calls to the coordinator that carry work go on while it is down, restarting or overloaded
# (PASSING); anything else is an answer. Registering and acquiring go on through any failure
# (a misconfigured worker keeps saying so in its log rather than exiting), except an
# AcquireTask answered NOT_FOUND: the coordinator no longer knows this worker.
COMPLETE_RETRY = RetryPolicy(lambda e: _code(e) in PASSING, first=0.2, cap=5.0)
REGISTER_RETRY = RetryPolicy(lambda e: isinstance(e, grpc.RpcError), first=0.2, cap=5.0)
ACQUIRE_RETRY = RetryPolicy(
    lambda e: isinstance(e, grpc.RpcError) and _code(e) != grpc.StatusCode.NOT_FOUND,
    first=0.2,
    cap=5.0,
)


# The leases a worker runs, by their wire kind, as its logs and metrics name them.
_KINDS = {
    coordinator_pb2.TASK_KIND_TRAIN: "train",
    coordinator_pb2.TASK_KIND_EVAL: "eval",
    coordinator_pb2.TASK_KIND_PREDICT: "predict",
}


class WorkerAgent:
    def __init__(
        self,
        settings: Settings,
        stop: threading.Event | None = None,
        telemetry: WorkerTelemetry | None = None,
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.stop = stop or threading.Event()
        self.channel = open_channel(settings.coordinator, settings)
        self.stub = co_grpc.CoordinatorStub(self.channel)
        self.shards = ShardClient(settings)  # every job's shards, one channel per address
        self.worker_id = settings.worker_id  # "" lets the coordinator pick one
        self.heartbeat_seconds = settings.heartbeat_seconds
        self._lease = ""  # the lease being worked on, "" when idle
        self._revoked: set[str] = set()
        self._lock = threading.Lock()
        self.jobs = JobCache(self.stub, settings, self.shards, self._report_failure, telemetry)

    # --- membership ---
    def register(self) -> None:
        """Register, retrying with backoff until the coordinator answers or we are stopped."""
        request = coordinator_pb2.RegisterWorkerRequest(
            host=socket.gethostname(),
            pid=os.getpid(),
            device=str(pick_device(self.settings.device)),
            worker_id=self.worker_id,
        )
        try:
            reply = retry(
                lambda: self.stub.RegisterWorker(request, timeout=10),
                REGISTER_RETRY,
                what=f"registering with {self.settings.coordinator}",
                stop=self.stop,
                log_level=logging.WARNING,
            )
        except Stopped:
            return
        with self._lock:
            self.worker_id = reply.worker_id
            self._revoked.clear()
        bind_worker_id(reply.worker_id)
        self.heartbeat_seconds = reply.heartbeat_seconds or self.settings.heartbeat_seconds
        log.info("registered as %s with %s", self.worker_id, self.settings.coordinator)

    def _heartbeats(self) -> None:
        while not self.stop.wait(period(self.heartbeat_seconds)):
            try:
                reply = self.stub.Heartbeat(
                    coordinator_pb2.HeartbeatRequest(worker_id=self.worker_id),
                    timeout=max(self.heartbeat_seconds, 2.0),
                )
            except grpc.RpcError as e:
                log.warning("heartbeat failed: %s", e.details())  # type: ignore[attr-defined]
                continue
            with self._lock:
                if not reply.known:
                    # The coordinator declared us dead (or restarted): whatever we hold is gone.
                    self._revoked.add(self._lease)
                self._revoked.update(reply.revoked_leases)
            if not reply.known:
                self.register()

    def lease_alive(self) -> bool:
        with self._lock:
            return not self.stop.is_set() and self._lease not in self._revoked

    # --- work ---
    def run(self) -> None:
        self.register()
        # In a copy of this context, so that its log lines carry the worker id too.
        beat = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._heartbeats,),
            name="heartbeat",
            daemon=True,
        )
        beat.start()
        try:
            while not self.stop.is_set():
                try:
                    task = self._acquire()
                except Stopped:
                    break
                except grpc.RpcError:  # NOT_FOUND: the coordinator does not know us
                    self.register()
                    continue
                self.jobs.free_ended(keep=task.job_id)
                if task.kind in _KINDS:
                    self._run_task(task)
                elif task.wait_seconds > 0:  # 0: the coordinator held the call already
                    self.stop.wait(task.wait_seconds)
        finally:
            self.stop.set()
            self.shards.close()
            self.channel.close()

    def _acquire(self) -> coordinator_pb2.Task:
        return retry(
            lambda: self.stub.AcquireTask(
                coordinator_pb2.AcquireTaskRequest(worker_id=self.worker_id), timeout=10
            ),
            ACQUIRE_RETRY,
            what="acquiring a task",
            stop=self.stop,
            log_level=logging.WARNING,
        )

    def _report_failure(self, job_id: str, error: str) -> None:
        try:
            self.stub.ReportFailure(
                coordinator_pb2.ReportFailureRequest(
                    worker_id=self.worker_id, job_id=job_id, error=error
                ),
                timeout=10,
            )
        except grpc.RpcError as e:
            log.warning("could not report failure of %s: %s", job_id, e.details())  # type: ignore[attr-defined]

    def _run_task(self, task: coordinator_pb2.Task) -> None:
        kind = _KINDS[task.kind]
        if self.telemetry is not None:
            self.telemetry.task_started(task.job_id, kind, task.epoch, task.partition)
        with log_context(job_id=task.job_id, worker_id=self.worker_id):
            result = self._work_on(task)
        if self.telemetry is not None:
            self.telemetry.task_ended(result)

    def _work_on(self, task: coordinator_pb2.Task) -> str:
        """Run one lease; its result for the metrics: completed, lost or failed."""
        with self._lock:
            self._lease = task.lease_id
        try:
            predicting = task.kind == coordinator_pb2.TASK_KIND_PREDICT
            rt = self.jobs.get(task.job_id, self.worker_id, predicting)
            if rt is None:
                return "failed"  # the lease expires with our silence on it
            if isinstance(rt, predict.PredictRuntime):
                self._predict(rt, task)
                return "completed"
            trainer = Trainer(rt, self.worker_id, self.settings, self.lease_alive, self.telemetry)
            reporter: ProgressReporter | None = None
            if task.kind == coordinator_pb2.TASK_KIND_TRAIN:
                reporter = ProgressReporter(
                    self.stub,
                    self.worker_id,
                    task.job_id,
                    self.settings.progress_seconds,
                    task.lease_id,
                    task.end_batch,
                    early=not rt.reported,
                )
                rt.reported = True
                request = train_lease(trainer, task, reporter)
            else:
                request = evaluate_lease(trainer, task)
            self._complete(request)
            if reporter is not None:
                reporter.flush()  # what an outage held back, now the coordinator is back
            return "completed"
        except LeaseLost as e:
            log.info("lease %s abandoned: %s", task.lease_id, e)
            self.jobs.forget_if_gone(task.job_id)
            return "lost"
        except (ShardError, grpc.RpcError) as e:
            if refused_for_good(e):
                # The cluster refused what this job produced (a malformed push or result):
                # doing the same work again would be refused again, so the job fails with it.
                error = f"the cluster refused this worker's work: {e}"
                log.error("job %s: %s", task.job_id, error)
                self._report_failure(task.job_id, error)
                return "failed"
            log.warning("task %s failed: %s", task.lease_id, e)
            self.jobs.forget_if_gone(task.job_id)
            return "lost"
        except Exception:
            error = traceback.format_exc()
            log.error("job %s failed on this worker: %s", task.job_id, error)
            self._report_failure(task.job_id, error)
            return "failed"
        finally:
            with self._lock:
                self._lease = ""

    def _predict(self, rt: predict.PredictRuntime, task: coordinator_pb2.Task) -> None:
        """Score the lease's partition and hand it in with its outputs."""
        scored = predict.score(rt, task, self.lease_alive)
        timeout = predict.upload_timeout(scored, self.settings)
        chunk_bytes = self.settings.chunk_bytes
        self._hand_in(
            lambda: self.stub.CompletePrediction(
                predict.chunks(self.worker_id, task.lease_id, scored, chunk_bytes),
                timeout=timeout,
            ),
            task.lease_id,
        )
        log.info(
            "job %s partition %d: %d rows scored (%s)",
            task.job_id,
            task.partition,
            scored.outputs.shape[0],
            ", ".join(f"{k} {v:.2f}s" for k, v in sorted(scored.seconds.items())),
        )

    def _complete(self, request: coordinator_pb2.CompleteTaskRequest) -> None:
        timeout = self.settings.rpc_timeout_seconds
        self._hand_in(lambda: self.stub.CompleteTask(request, timeout=timeout), request.lease_id)

    def _hand_in(self, call: Callable[[], object], lease_id: str) -> None:
        """Hand the finished lease in, through a coordinator outage if need be: the work is
        done (applied on the shards, or scored), so it is worth waiting for. Gives up
        (LeaseLost) once the lease is revoked, e.g. the restarted coordinator no longer knows
        this worker."""
        lost = LeaseLost("the coordinator could not be told the lease is done")

        def still_held() -> None:
            if not self.lease_alive():
                raise lost

        try:
            retry(
                call,
                COMPLETE_RETRY,
                what=f"completing {lease_id}",
                stop=self.stop,
                check=still_held,
                log_level=logging.WARNING,
            )
        except Stopped:
            raise lost from None
