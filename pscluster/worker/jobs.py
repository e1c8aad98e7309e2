"""The jobs a worker holds in memory (model, data, codec state): built on first use, kept
across the job's leases, freed once the job no longer runs."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import time
import traceback
from collections.abc import Callable

import grpc

from pscluster.config import Settings
from pscluster.errors import PSError
from pscluster.logs import log_context
from pscluster.shard_client import ShardClient
from pscluster.v1 import coordinator_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from pscluster.worker.predict import PredictRuntime
from pscluster.worker.runtime import JobRuntime
from pscluster.worker.telemetry import WorkerTelemetry

log = logging.getLogger(__name__)
# How often an idle worker asks whether the jobs it holds in memory have ended.
CLEANUP_SECONDS = 2.0


class JobCache:
    """``report_failure(job_id, error)`` tells the coordinator a job cannot run here."""

    def __init__(
        self,
        stub: co_grpc.CoordinatorStub,
        settings: Settings,
        shards: ShardClient,
        report_failure: Callable[[str, str], None],
        telemetry: WorkerTelemetry | None = None,
    ) -> None:
        self.stub = stub
        self.settings = settings
        self.shards = shards
        self.report_failure = report_failure
        self.telemetry = telemetry
        self.failed: set[str] = set()  # jobs whose model or data do not load here
        self._runtimes: dict[str, JobRuntime | PredictRuntime] = {}
        self._next_cleanup = 0.0

    def get(
        self, job_id: str, worker_id: str, predict: bool = False
    ) -> JobRuntime | PredictRuntime | None:
        """The job's runtime (``predict``: a predict job's), built on first use; None if it
        cannot be built now (the coordinator did not answer) or ever (the job is failed, with
        the reason)."""
        if job_id in self.failed:
            return None
        if job_id in self._runtimes:
            return self._runtimes[job_id]
        try:
            rt: JobRuntime | PredictRuntime
            if predict:
                rt = PredictRuntime(self.stub, job_id, self.settings)
            else:
                rt = JobRuntime(self.stub, job_id, self.settings, self.shards, worker_id)
        except grpc.RpcError as e:
            # The coordinator did not answer, or refused (a source whose sizes differ from the
            # first worker's: it failed the job itself, so no lease of it comes again).
            log.warning("could not load job %s: %s", job_id, e)
            return None
        except Exception as e:
            # The user's model or data do not load here: the job cannot run anywhere, so it
            # fails with the reason rather than hanging until someone looks.
            error = _reason(e)
            log.error("job %s cannot run: %s", job_id, error)
            self.failed.add(job_id)
            self.report_failure(job_id, error)
            return None
        self._runtimes[job_id] = rt
        return rt

    def free_ended(self, keep: str) -> None:
        """Drop the runtimes (model, data) of cached jobs that no longer run.

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
                self.forget_if_gone(job_id)

    def forget_if_gone(self, job_id: str) -> None:
        """Drop the cached runtime of a job that no longer runs (its memory)."""
        try:
            info = self.stub.GetJob(coordinator_pb2.GetJobRequest(job_id=job_id), timeout=5)
        except grpc.RpcError:
            return
        if info.state != "running" and job_id in self._runtimes:
            self._runtimes.pop(job_id).close()
            self.failed.discard(job_id)
            if self.telemetry is not None:
                self.telemetry.forget_job(job_id)
            release_memory()
            log.info("job %s is %s: its model and data are freed", job_id, info.state)


def _reason(error: Exception) -> str:
    """What a failed job's status says: our own errors (a data source that does not open, a
    model that does not match its spec) by their message, with the user's code's traceback
    when it raised; anything else by its whole traceback."""
    if isinstance(error, PSError):
        cause = error.__cause__
        # The message last: a job's status shows the last line of its error.
        return "".join(traceback.format_exception(cause)) + str(error) if cause else str(error)
    return traceback.format_exc()


def release_memory() -> None:
    """Give a freed job's memory back to the system, not just to the allocator: glibc keeps
    freed heap pages of small allocations until asked (a worker's RSS would stay at its peak)."""
    gc.collect()
    # Not glibc (OSError, AttributeError): that allocator returns memory its own way.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
