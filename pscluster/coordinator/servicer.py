"""The gRPC face of the coordinator: decode, call the logic, encode; errors mapped in one place.

Every handler is wrapped by ``@grpc_errors``, so a domain error raised anywhere below becomes
its status code (NotFound -> NOT_FOUND, ...) with the message that says what to fix.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import grpc
import torch

from pscluster.coordinator.admission import Admission
from pscluster.coordinator.app import Coordinator
from pscluster.coordinator.core.kinds import TaskResult, kind_of
from pscluster.coordinator.reports import StepReport
from pscluster.errors import InvalidArgument
from pscluster.transport.auth import JobTokens, admin_token, caller_identity
from pscluster.transport.errors import grpc_errors
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc

SERVICE_NAME = "pscluster.v1.Coordinator"


def _job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidArgument("job_id is empty; expected a job id such as 'j-3f2a9c1b'")
    return job_id


class CoordinatorServicer(co_grpc.CoordinatorServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self.admission = Admission(
            coordinator.settings, coordinator.rt.store, coordinator.rt.blobs.root
        )
        # Who may call what is checked by the server's auth interceptor; the servicer only
        # issues job tokens, derived from the admin token (see transport/auth.py).
        admin = admin_token(coordinator.settings)
        self.tokens = JobTokens(admin) if admin is not None else None

    # --- clients ---
    @grpc_errors
    def SubmitJob(
        self, request_iterator: Iterator[co_pb2.SubmitJobChunk], context: grpc.ServicerContext
    ) -> co_pb2.JobInfo:
        chunks = iter(request_iterator)
        first = next(chunks, None)
        stream = itertools.chain([] if first is None else [first], chunks)
        if first is None or first.WhichOneof("part") != "spec":
            # Not a submission the limits can judge: the spec reader says what is wrong.
            job = self.c.jobs.submit(stream)
        else:
            # The limits are checked on the spec, before any blob is read or stored.
            with self.admission.admit(first.spec, caller_identity(context)) as admitted:
                job = self.c.jobs.submit(stream)
                admitted(job.job_id)
        info = self.c.queries.info(job.job_id)
        if self.tokens is not None:
            info.token = self.tokens.issue(job.job_id)  # only here: nothing stores it
        return info

    @grpc_errors
    def GetJob(
        self, request: co_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> co_pb2.JobInfo:
        return self.c.queries.info(_job_id(request.job_id))

    @grpc_errors
    def ListJobs(
        self, request: co_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> co_pb2.ListJobsReply:
        return self.c.queries.list()

    @grpc_errors
    def CancelJob(
        self, request: co_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> co_pb2.JobInfo:
        job = self.c.jobs.cancel(_job_id(request.job_id))
        return self.c.queries.info(job.job_id)

    @grpc_errors
    def GetMetrics(
        self, request: co_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> co_pb2.JobMetrics:
        return self.c.queries.metrics(_job_id(request.job_id))

    @grpc_errors
    def FetchModel(
        self, request: co_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.BlobChunk]:
        for data in self.c.queries.model_chunks(_job_id(request.job_id)):
            yield common_pb2.BlobChunk(blob="model", data=data)

    @grpc_errors
    def FetchPredictions(
        self, request: co_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> Iterator[co_pb2.PredictionChunk]:
        yield from self.c.queries.prediction_chunks(_job_id(request.job_id))

    @grpc_errors
    def LookupRows(
        self, request: co_pb2.LookupRowsRequest, context: grpc.ServicerContext
    ) -> co_pb2.LookupRowsReply:
        ids = torch.tensor(list(request.ids), dtype=torch.int64)
        return self.c.queries.lookup_rows(_job_id(request.job_id), request.table, ids)

    @grpc_errors
    def ClusterStatus(
        self, request: co_pb2.ClusterStatusRequest, context: grpc.ServicerContext
    ) -> co_pb2.ClusterStatusReply:
        return self.c.queries.cluster_status()

    # --- workers ---
    @grpc_errors
    def RegisterWorker(
        self, request: co_pb2.RegisterWorkerRequest, context: grpc.ServicerContext
    ) -> co_pb2.RegisterWorkerReply:
        info = self.c.tasks.register(request.host, request.pid, request.device, request.worker_id)
        return co_pb2.RegisterWorkerReply(
            worker_id=info.worker_id, heartbeat_seconds=self.c.settings.heartbeat_seconds
        )

    @grpc_errors
    def Heartbeat(
        self, request: co_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> co_pb2.HeartbeatReply:
        known, revoked = self.c.tasks.heartbeat(request.worker_id)
        return co_pb2.HeartbeatReply(known=known, revoked_leases=revoked)

    @grpc_errors
    def AcquireTask(
        self, request: co_pb2.AcquireTaskRequest, context: grpc.ServicerContext
    ) -> co_pb2.Task:
        hold = self.c.settings.acquire_hold_seconds
        got = self.c.tasks.acquire_waiting(request.worker_id, hold)
        lease = got.lease
        if lease is None:
            # A held call already waited: the worker may ask again at once.
            return co_pb2.Task(
                kind=co_pb2.TASK_KIND_WAIT,
                wait_seconds=got.retry_after,
                held_seconds=got.held_seconds,
            )
        return co_pb2.Task(
            kind=kind_of(lease).wire,
            job_id=lease.job_id,
            lease_id=lease.lease_id,
            epoch=lease.epoch,
            partition=max(lease.partition, 0),
            partitions=lease.partitions,
            lease_seconds=self.c.settings.worker_timeout_seconds,
            first_batch=lease.first_batch,
            end_batch=lease.end_batch,
            held_seconds=got.held_seconds,
        )

    @grpc_errors
    def CompleteTask(
        self, request: co_pb2.CompleteTaskRequest, context: grpc.ServicerContext
    ) -> co_pb2.CompleteTaskReply:
        metrics = dict(request.metrics)
        if not metrics:  # a worker from before metrics: accuracy and loss
            metrics = {"loss": request.test_loss}
            if request.test_accuracy >= 0:
                metrics["accuracy"] = request.test_accuracy
        result = TaskResult(request.samples, metrics, tuple(request.versions))
        self.c.tasks.complete(request.worker_id, request.lease_id, result)
        return co_pb2.CompleteTaskReply()

    @grpc_errors
    def CompletePrediction(
        self, request_iterator: Iterator[co_pb2.PredictionChunk], context: grpc.ServicerContext
    ) -> co_pb2.CompleteTaskReply:
        self.c.tasks.complete_prediction(iter(request_iterator))
        return co_pb2.CompleteTaskReply()

    @grpc_errors
    def ReportProgress(
        self, request: co_pb2.ReportProgressRequest, context: grpc.ServicerContext
    ) -> co_pb2.ReportProgressReply:
        steps = [StepReport(s.loss, s.samples, s.epoch, s.unix_time) for s in request.steps]
        progress = request.lease if request.HasField("lease") else None
        end = self.c.tasks.report_progress(
            request.worker_id, _job_id(request.job_id), steps, progress
        )
        return co_pb2.ReportProgressReply(end_batch=end)

    @grpc_errors
    def ReportFailure(
        self, request: co_pb2.ReportFailureRequest, context: grpc.ServicerContext
    ) -> co_pb2.ReportFailureReply:
        self.c.tasks.report_failure(request.worker_id, _job_id(request.job_id), request.error)
        return co_pb2.ReportFailureReply()

    @grpc_errors
    def GetJobPlan(
        self, request: co_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> co_pb2.JobPlan:
        return self.c.queries.plan(_job_id(request.job_id))

    @grpc_errors
    def DescribeData(
        self, request: co_pb2.DescribeDataRequest, context: grpc.ServicerContext
    ) -> co_pb2.DataShape:
        return self.c.data_shapes.report(request.worker_id, _job_id(request.job_id), request.shape)

    @grpc_errors
    def FetchBlob(
        self, request: co_pb2.FetchBlobRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.BlobChunk]:
        chunks = self.c.queries.blob_chunks(
            _job_id(request.job_id), request.blob, request.offset, request.length
        )
        for data in chunks:
            yield common_pb2.BlobChunk(blob=request.blob, data=data)

    # --- shards ---
    @grpc_errors
    def RegisterShard(
        self, request: co_pb2.RegisterShardRequest, context: grpc.ServicerContext
    ) -> co_pb2.RegisterShardReply:
        reg, moved = self.c.rt.directory.register(
            request.shard_id, request.address, request.leaving
        )
        self.c.jobs.follow_moved_shard(moved)
        return co_pb2.RegisterShardReply(
            heartbeat_seconds=self.c.settings.heartbeat_seconds,
            previous_address=reg.previous_address,
        )

    @grpc_errors
    def ListShards(
        self, request: co_pb2.ListShardsRequest, context: grpc.ServicerContext
    ) -> co_pb2.ListShardsReply:
        return self.c.rt.directory.listing()

    @grpc_errors
    def ScaleShards(
        self, request: co_pb2.ScaleShardsRequest, context: grpc.ServicerContext
    ) -> co_pb2.ScaleShardsReply:
        return self.c.scaler.scale(request)
