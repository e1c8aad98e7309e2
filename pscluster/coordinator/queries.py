"""What clients and workers read: job info, plans, metrics, blobs, models, cluster status.

Nothing here changes a job. Reads of a running job's parameters or counters go to its shards
live; once a job is over they come from what was saved when it ended.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from pscluster.coordinator import blobs, live, predict_jobs, tables
from pscluster.coordinator import store as st
from pscluster.coordinator.jobs import JobManager
from pscluster.coordinator.lease_values import PREDICT, TRAIN
from pscluster.coordinator.model_spec import buffer_ranges
from pscluster.coordinator.predictions import PredictionStore
from pscluster.coordinator.runtime import Runtime
from pscluster.errors import FailedPrecondition, InvalidArgument, NotFound
from pscluster.model import objective, safetensors_stream
from pscluster.model.partition import rows_partitioner
from pscluster.shard_client.tables import lookup_rows
from pscluster.v1 import coordinator_pb2 as co_pb2


class JobQueries:
    def __init__(self, rt: Runtime, jobs: JobManager) -> None:
        self.rt = rt
        self.jobs = jobs
        self._metric_names: dict[str, str] = {}  # "": a predict job (it evaluates nothing)
        self.predictions = PredictionStore(rt.blobs, rt.settings.chunk_bytes)

    def info(self, job_id: str) -> co_pb2.JobInfo:
        return self._info(self.jobs.require(job_id))

    def list(self) -> co_pb2.ListJobsReply:
        return co_pb2.ListJobsReply(jobs=[self._info(j) for j in self.rt.store.list_jobs()])

    def _info(self, job: st.JobRecord) -> co_pb2.JobInfo:
        with self.rt.lock:
            workers = self.rt.book.holders(job.job_id)
            sched = self.rt.book.schedule(job.job_id) if self.rt.book.has_job(job.job_id) else None
            epoch = sched.epoch if sched else job.epoch
            done = (
                sched.partitions_done()
                if sched
                else job.epoch * job.partitions + len(job.done_partitions)
            )
        total = job.epochs * job.partitions
        progress = 1.0 if job.state == st.COMPLETED else min(1.0, done / total)
        metric, value = self._metric(job)
        return co_pb2.JobInfo(
            job_id=job.job_id,
            name=job.name,
            state=job.state,
            mode=job.mode,
            epoch=min(epoch, job.epochs),
            epochs=job.epochs,
            progress=progress,
            status_message=job.status_message,
            error=job.error,
            created_unix=job.created_unix,
            started_unix=job.started_unix,
            finished_unix=job.finished_unix,
            test_accuracy=job.test_accuracy,
            last_loss=job.last_loss,
            num_params=job.num_params,
            workers=workers,
            steps=job.steps,
            metric=metric,
            metric_value=value,
            kind=TRAIN if metric else PREDICT,
        )

    def _metric(self, job: st.JobRecord) -> tuple[str, float]:
        """The job's metric and its value at the latest evaluation (NaN before the first)."""
        metric = self._metric_names.get(job.job_id)
        if metric is None:  # a spec never changes: parse it (user code and all) once
            spec = co_pb2.JobSpec.FromString(job.spec)
            metric = "" if spec.HasField("predict") else objective.metric_of(spec.loss, spec.metric)
            self._metric_names[job.job_id] = metric
        if not metric:
            return metric, math.nan
        latest = self.rt.store.latest_epoch(job.job_id)
        if latest is None:
            return metric, math.nan
        if metric in latest.metrics:
            return metric, latest.metrics[metric]
        # An evaluation recorded before metrics were kept: accuracy and loss only.
        return metric, latest.test_accuracy if metric == "accuracy" else latest.test_loss

    def plan(self, job_id: str) -> co_pb2.JobPlan:
        job = self.jobs.require(job_id)
        spec = co_pb2.JobSpec.FromString(job.spec)
        if spec.HasField("predict"):  # no shards: the model comes whole, as its initial state
            return co_pb2.JobPlan(job_id=job.job_id, spec=spec, num_params=job.num_params)
        buffers = buffer_ranges(spec, len(job.shards))
        return co_pb2.JobPlan(
            job_id=job.job_id,
            spec=spec,
            shards=[
                co_pb2.ShardRange(
                    address=p.address,
                    start=p.start,
                    length=p.length,
                    buffer_start=b.start,
                    buffer_length=b.length,
                )
                for p, b in zip(job.shards, buffers, strict=True)
            ],
            num_params=job.num_params,
            layout_generation=job.layout_generation,
        )

    def metrics(self, job_id: str) -> co_pb2.JobMetrics:
        job = self.jobs.require(job_id)
        if predict_jobs.is_predict(job):  # where its time went, from its stored parts
            metrics = co_pb2.JobMetrics(job_id=job_id)
            metrics.predict_seconds.update(self.predictions.seconds(job_id, job.partitions))
        elif job.state == st.RUNNING:
            metrics = live.stats(self.rt, job)
            with self.rt.lock:
                metrics.workers.extend(self.rt.relief.speeds(job_id, self.rt.mono()))
        elif job.final_stats:
            metrics = co_pb2.JobMetrics.FromString(job.final_stats)
        else:  # pending, or ended before its shards could report
            metrics = co_pb2.JobMetrics(job_id=job_id)
        metrics.job_id = job_id
        store = self.rt.store
        for s in store.steps(job_id):
            metrics.steps.add(
                step=s.step,
                loss=s.loss,
                samples=s.samples,
                worker_id=s.worker_id,
                epoch=s.epoch,
                unix_time=s.unix_time,
            )
        for e in store.epochs(job_id):
            metrics.epochs.add(
                epoch=e.epoch,
                test_accuracy=e.test_accuracy,
                test_loss=e.test_loss,
                unix_time=e.unix_time,
                samples=e.samples,
                metrics=e.metrics,
            )
        metrics.pushes_by_worker.update(store.steps_by_worker(job_id))
        metrics.batches_dropped.update(store.dropped(job_id))
        for ev in store.events(job_id):
            metrics.events.add(
                unix_time=ev.unix_time, kind=ev.kind, worker_id=ev.worker_id, message=ev.message
            )
        return metrics

    def blob_chunks(
        self, job_id: str, name: str, offset: int = 0, length: int = 0
    ) -> Iterator[bytes]:
        job = self.jobs.require(job_id)
        if name not in (blobs.DATASET, blobs.INITIAL_STATE, blobs.TEACHER):
            raise InvalidArgument(
                f"blob {name!r} is unknown; expected 'dataset', 'initial_state' or 'teacher' "
                "(the trained model comes from FetchModel)"
            )
        if name == blobs.DATASET and not self.rt.blobs.exists(job_id, name):
            source = co_pb2.JobSpec.FromString(job.spec).data.source
            raise NotFound(
                f"job {job_id} uploaded no dataset: its workers read the data from its "
                f"{source!r} source"
            )
        return self.rt.blobs.iter_chunks(job_id, name, self.rt.settings.chunk_bytes, offset, length)

    def model_chunks(self, job_id: str) -> Iterator[bytes]:
        job = self.jobs.require(job_id)
        if predict_jobs.is_predict(job):
            raise FailedPrecondition(
                f"job {job_id} is a predict job: it trained no model; its outputs come from "
                "FetchPredictions (job.predictions())"
            )
        chunk_bytes = self.rt.settings.chunk_bytes
        if job.state == st.COMPLETED:
            return self.rt.blobs.iter_chunks(job_id, blobs.MODEL, chunk_bytes)
        if job.state == st.RUNNING:
            entries, _ = live.model_entries(self.rt, job)
            return safetensors_stream.rechunk(safetensors_stream.stream(entries), chunk_bytes)
        reason = {
            st.PENDING: "its shards are not initialised yet",
            st.FAILED: "it failed before training finished, so there is no trained model "
            "(`pscluster status`/`job.info().error` says why)",
            st.CANCELLED: "it was cancelled before training finished, so there is no trained model",
        }.get(job.state, "it has no model")
        raise FailedPrecondition(f"job {job_id} is {job.state}: {reason}")

    def prediction_chunks(self, job_id: str) -> Iterator[co_pb2.PredictionChunk]:
        """A completed predict job's outputs, in input order (checked before the first chunk)."""
        job = self.jobs.require(job_id)
        if not predict_jobs.is_predict(job):
            raise FailedPrecondition(
                f"job {job_id} is a training job: it has no predictions; score rows with it "
                "through a predict job (job.predict(X))"
            )
        if job.state != st.COMPLETED:
            why = "its partitions are still being scored" if job.state == st.RUNNING else ""
            raise FailedPrecondition(
                f"job {job_id} is {job.state}: its predictions are complete only once it has "
                f"completed{f' ({why})' if why else ''}"
            )
        return self.predictions.chunks(job_id, job.partitions)

    def lookup_rows(self, job_id: str, name: str, ids: torch.Tensor) -> co_pb2.LookupRowsReply:
        """Rows of a table of a running job (from its shards) or a completed one (its model)."""
        job = self.jobs.require(job_id)
        spec = co_pb2.JobSpec.FromString(job.spec)
        index, table = tables.table_index(spec, name)
        tables.check_ids(ids, table)
        if job.state == st.COMPLETED:
            path = self.rt.blobs.path(job_id, blobs.MODEL)
            found, source = tables.saved_rows(path, table, ids), "model"
        elif job.state == st.RUNNING:
            addresses = [p.address for p in job.shards]
            found = lookup_rows(
                self.rt.shards,
                job_id,
                addresses,
                index,
                ids,
                table.dim,
                peek=True,
                partitioner=rows_partitioner(table.dynamic),
            )
            source = "shards"
        else:
            raise FailedPrecondition(f"job {job_id} is {job.state}: it has no rows to read")
        values = found.numpy().astype("<f4", copy=False).tobytes()
        return co_pb2.LookupRowsReply(dim=table.dim, values=values, source=source)

    def cluster_status(self) -> co_pb2.ClusterStatusReply:
        rt = self.rt
        addresses = rt.directory.addresses()
        reply = co_pb2.ClusterStatusReply()
        for address, problem in zip(addresses, rt.shards.health(addresses), strict=True):
            reply.shards.add(
                address=address,
                healthy=problem is None,
                error="" if problem is None else str(problem),
            )
        now = rt.mono()
        with rt.lock:
            for w in rt.workers.snapshot():
                lease = rt.book.lease_of(w.worker_id)
                if lease is None:
                    task = "idle"
                elif lease.kind == TRAIN:
                    task = f"train e{lease.epoch}/p{lease.partition}"
                    if lease.end_batch:
                        task += f" b{lease.first_batch}-{lease.end_batch}"
                elif lease.kind == PREDICT:
                    task = f"predict p{lease.partition}"
                else:
                    task = f"eval e{lease.epoch}"
                job_id = lease.job_id if lease else ""
                straggler, slowdown = rt.relief.standing(job_id, w.worker_id)
                reply.workers.add(
                    worker_id=w.worker_id,
                    host=w.host,
                    device=w.device,
                    alive=w.alive,
                    last_heartbeat_age=max(0.0, now - w.last_seen),
                    job_id=job_id,
                    task=task,
                    straggler=straggler,
                    slowdown=slowdown,
                )
        return reply
