"""The worker process: register, heartbeat, and run whatever task the coordinator hands out.

Workers hold no state the cluster depends on: a worker may join or die at any moment. Its
heartbeats keep its lease alive; when they stop, the coordinator returns the lease to the pool.

The coordinator may also go away for a while (a crash and a restart): training goes on
against the shards meanwhile, and every call to the coordinator (registration, heartbeats,
acquiring, reporting, completing) is retried with a capped backoff until it answers again. A
restarted coordinator restores the leases it had granted, so the lease's work is kept; if it
says the worker is unknown, the lease is gone and the worker registers afresh.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import gc
import logging
import os
import socket
import threading
import time
import traceback

import grpc
import torch

from pscluster.config import Settings
from pscluster.logs import bind_worker_id, log_context
from pscluster.shard_client import ShardClient, ShardError
from pscluster.transport.channel import open_channel
from pscluster.transport.retry import RetryPolicy, Stopped, retry
from pscluster.v1 import coordinator_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from pscluster.worker.progress import PASSING, ProgressReporter
from pscluster.worker.runtime import JobRuntime, pick_device
from pscluster.worker.telemetry import WorkerTelemetry
from pscluster.worker.trainer import LeaseLost, Trainer

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
# How often an idle worker asks whether the jobs it holds in memory have ended.
CLEANUP_SECONDS = 2.0


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
        self._runtimes: dict[str, JobRuntime] = {}
        self._failed_jobs: set[str] = set()
        self._next_cleanup = 0.0

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
        while not self.stop.wait(self.heartbeat_seconds):
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
                self._free_ended_jobs(keep=task.job_id)
                if task.kind in (coordinator_pb2.TASK_KIND_TRAIN, coordinator_pb2.TASK_KIND_EVAL):
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

    def _runtime(self, job_id: str) -> JobRuntime | None:
        if job_id in self._runtimes:
            return self._runtimes[job_id]
        try:
            rt = JobRuntime(self.stub, job_id, self.settings, self.shards)
        except grpc.RpcError as e:
            log.warning("could not load job %s: %s", job_id, e.details())  # type: ignore[attr-defined]
            return None
        except Exception:
            # The user's model or data do not load here: the job cannot run anywhere, so it
            # fails with the traceback rather than hanging until someone looks.
            error = traceback.format_exc()
            log.error("job %s cannot run: %s", job_id, error)
            self._failed_jobs.add(job_id)
            self._report_failure(job_id, error)
            return None
        self._runtimes[job_id] = rt
        return rt

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
        kind = "train" if task.kind == coordinator_pb2.TASK_KIND_TRAIN else "eval"
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
            rt = None if task.job_id in self._failed_jobs else self._runtime(task.job_id)
            if rt is None:
                return "failed"  # the lease expires with our silence on it
            trainer = Trainer(rt, self.worker_id, self.settings, self.lease_alive, self.telemetry)
            request = coordinator_pb2.CompleteTaskRequest(
                worker_id=self.worker_id, lease_id=task.lease_id
            )
            reporter: ProgressReporter | None = None
            if task.kind == coordinator_pb2.TASK_KIND_TRAIN:
                reporter = ProgressReporter(
                    self.stub,
                    self.worker_id,
                    task.job_id,
                    self.settings.progress_seconds,
                    task.lease_id,
                    task.end_batch,
                )
                started = time.monotonic()
                try:
                    request.samples = trainer.train(task, reporter)
                finally:
                    reporter.flush()
                log.info(
                    "job %s epoch %d partition %d batches [%d, %s): %d samples in %.2fs",
                    task.job_id,
                    task.epoch,
                    task.partition,
                    task.first_batch,
                    reporter.end_batch or "end",
                    request.samples,
                    time.monotonic() - started,
                )
            else:
                results, versions = trainer.evaluate()
                request.metrics.update(results)
                request.versions.extend(versions)
                request.test_accuracy = results.get("accuracy", -1.0)
                request.test_loss = results["loss"]
                log.info(
                    "job %s epoch %d: %s",
                    task.job_id,
                    task.epoch,
                    ", ".join(f"test {k} {v:.4f}" for k, v in sorted(results.items())),
                )
            self._complete(request)
            if reporter is not None:
                reporter.flush()  # what an outage held back, now the coordinator is back
            return "completed"
        except LeaseLost as e:
            log.info("lease %s abandoned: %s", task.lease_id, e)
            self._forget_if_gone(task.job_id)
            return "lost"
        except ShardError as e:
            if e.status == grpc.StatusCode.INVALID_ARGUMENT:
                # A shard refused what this job produced: the same work would be refused again.
                error = f"a shard refused this worker's push: {e}"
                log.error("job %s: %s", task.job_id, error)
                self._report_failure(task.job_id, error)
                return "failed"
            log.warning("task %s failed: %s", task.lease_id, e)
            self._forget_if_gone(task.job_id)
            return "lost"
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:  # type: ignore[attr-defined]
                # The cluster refused what this job produced (a malformed result): doing the
                # same work again would be refused again, so the job fails with the reason.
                error = f"the coordinator refused this worker's result: {e.details()}"  # type: ignore[attr-defined]
                log.error("job %s: %s", task.job_id, error)
                self._report_failure(task.job_id, error)
                return "failed"
            log.warning("task %s failed: %s", task.lease_id, e.details())  # type: ignore[attr-defined]
            self._forget_if_gone(task.job_id)
            return "lost"
        except Exception:
            error = traceback.format_exc()
            log.error("job %s failed on this worker: %s", task.job_id, error)
            self._report_failure(task.job_id, error)
            return "failed"
        finally:
            with self._lock:
                self._lease = ""

    def _complete(self, request: coordinator_pb2.CompleteTaskRequest) -> None:
        """Hand the finished lease in, through a coordinator outage if need be: the work is
        done and applied on the shards, so it is worth waiting for. Gives up (LeaseLost) once
        the lease is revoked, e.g. the restarted coordinator no longer knows this worker."""
        lost = LeaseLost("the coordinator could not be told the lease is done")

        def still_held() -> None:
            if not self.lease_alive():
                raise lost

        try:
            retry(
                lambda: self.stub.CompleteTask(request, timeout=self.settings.rpc_timeout_seconds),
                COMPLETE_RETRY,
                what=f"completing {request.lease_id}",
                stop=self.stop,
                check=still_held,
                log_level=logging.WARNING,
            )
        except Stopped:
            raise lost from None

    def _free_ended_jobs(self, keep: str) -> None:
        """Drop the runtimes (model, data, channels) of cached jobs that no longer run.

        Asked when the worker is idle or moves to another job, at most every few seconds: a
        worker must not hold a finished job's data until something else needs the memory.
        """
        others = [j for j in self._runtimes if j != keep]
        now = time.monotonic()
        if not others or now < self._next_cleanup:
            return
        self._next_cleanup = now + CLEANUP_SECONDS
        for job_id in others:
            with log_context(job_id=job_id):
                self._forget_if_gone(job_id)

    def _forget_if_gone(self, job_id: str) -> None:
        """Drop the cached runtime of a job that no longer runs (its memory, its channels)."""
        try:
            info = self.stub.GetJob(coordinator_pb2.GetJobRequest(job_id=job_id), timeout=5)
        except grpc.RpcError:
            return
        if info.state != "running" and job_id in self._runtimes:
            del self._runtimes[job_id]
            self._failed_jobs.discard(job_id)
            if self.telemetry is not None:
                self.telemetry.forget_job(job_id)
            release_memory()
            log.info("job %s is %s: its model and data are freed", job_id, info.state)


def release_memory() -> None:
    """Give a freed job's memory back to the system, not just to the allocator: glibc keeps
    freed heap pages of small allocations until asked (a worker's RSS would stay at its peak)."""
    gc.collect()
    # Not glibc (OSError, AttributeError): that allocator returns memory its own way.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def configure_torch(settings: Settings) -> None:
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
