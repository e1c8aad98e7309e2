"""A job's lifecycle: submitted, initialised on its shards, finished, failed or cancelled.

Every transition is written to the store under the coordinator lock and checked against the
state it starts from, so a cancel racing a start or a finish cannot be undone by it. Shard
calls happen outside the lock.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import grpc

from pscluster.coordinator import blobs, distill_jobs, predict_jobs
from pscluster.coordinator import store as st
from pscluster.coordinator.core.job_plan import JobPlan
from pscluster.coordinator.runtime import Runtime
from pscluster.coordinator.shard_init import Initial, initial_vectors, shard_configs
from pscluster.coordinator.spec import (
    SUBMITTED_BLOBS,
    auto_local_steps,
    read_submission,
    straggler_settings,
    validate_job,
)
from pscluster.coordinator.stats import aggregate, shard_part
from pscluster.data.dataset import train_rows
from pscluster.data.partitions import batch_counts
from pscluster.errors import FailedPrecondition, NotFound
from pscluster.model.optimizer import parse_optimizer
from pscluster.model.partition import BalancedRanges
from pscluster.server.trial import copy_bytes
from pscluster.shard_client import ShardError
from pscluster.v1 import coordinator_pb2 as co_pb2

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 64 * 1024
# Codes a shard may answer InitJob with that are worth retrying; anything else fails the job.
_RETRY_INIT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class JobManager:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._busy: set[str] = set()  # being started or finished; guarded by rt.lock
        self.to_finish: set[str] = set()  # finished training, final model not saved yet

    def busy(self) -> set[str]:
        """Jobs being started or finished now (call under rt.lock)."""
        return set(self._busy)

    def require(self, job_id: str) -> st.JobRecord:
        job = self.rt.store.get_job(job_id)
        if job is None:
            raise NotFound(f"unknown job {job_id!r}")
        return job

    # --- submission and start ---
    def submit(self, chunks: Iterable[co_pb2.SubmitJobChunk]) -> st.JobRecord:
        rt = self.rt
        spec, data = read_submission(chunks)
        if spec.HasField("predict"):  # batch inference: no shards to initialise
            return predict_jobs.submit(rt, spec, data)
        spec, teacher = distill_jobs.resolve(rt, spec)  # None: the job does not distill
        slots = rt.directory.placement()  # the least loaded first
        job = validate_job(spec, data, len(slots), rt.settings.default_partitions)
        if job.spec.precision == "fp16":
            self._require_cuda_workers()
        job_id = f"j-{uuid.uuid4().hex[:8]}"
        ranges = BalancedRanges().split(job.layout.size, job.spec.shards)
        slices = [
            st.ShardSlice(s.address, r.start, r.length, s.shard_id)
            for s, r in zip(slots[: len(ranges)], ranges, strict=True)
        ]
        for name in SUBMITTED_BLOBS:
            if name in data:  # a job reading a data source uploads no dataset
                rt.blobs.write(job_id, name, data[name])
        if teacher is not None:
            distill_jobs.attach(rt, job_id, teacher)
        record = st.JobRecord(
            job_id=job_id,
            name=job.spec.name,
            spec=job.spec.SerializeToString(),
            mode=job.spec.mode,
            epochs=job.spec.epochs,
            partitions=job.spec.partitions,
            num_params=job.layout.size,
            shards=slices,
            # From 1: a worker's requests carry its plan's generation, and 0 means unchecked.
            layout_generation=1,
            created_unix=rt.wall(),
            status_message="pending: initialising shards",
        )
        rt.store.create_job(record)
        log.info("job %s submitted: %d params on %d shards", job_id, job.layout.size, len(slices))
        self.start(job_id, (job.flat, job.buffers, job.tables))
        if teacher is not None:  # after the start, which its metrics count time from
            distill_jobs.record(rt, job_id, job.spec, teacher)
        return self.require(job_id)

    def _require_cuda_workers(self) -> None:
        """fp16 training runs only on CUDA workers: refuse it at the door when no live worker
        has a GPU, rather than let the job fail on the first worker that takes it."""
        with self.rt.lock:
            devices = sorted({w.device for w in self.rt.workers.snapshot() if w.alive})
        if not any(d.startswith("cuda") for d in devices):
            raise FailedPrecondition(
                "precision 'fp16' needs CUDA workers, and none of this cluster's live workers "
                f"has one (their devices: {', '.join(devices) or 'no workers'}); use "
                "precision='bf16' on CPUs, or start GPU workers first"
            )

    @contextmanager
    def claimed(self, job_id: str) -> Iterator[bool]:
        """One start or finish of a job at a time: the RPC path and the monitor's retries may
        reach the same job together. Yields False if another is under way."""
        with self.rt.lock:
            claimed = job_id not in self._busy
            if claimed:
                self._busy.add(job_id)
        if not claimed:
            yield False
            return
        try:
            yield True
        finally:
            with self.rt.lock:
                self._busy.discard(job_id)

    def start(self, job_id: str, initial: Initial | None = None) -> bool:
        """Initialise a pending job on its shards and start scheduling it; False if it stays
        pending (a shard is unreachable: the monitor retries) or is no longer pending."""
        rt = self.rt
        with self.claimed(job_id) as claimed:
            if not claimed:
                return False
            job = self.require(job_id)
            if job.state != st.PENDING or not self._init_shards(job, initial):
                return False
            with rt.lock:
                job = self.require(job_id)
                if job.state == st.PENDING:
                    job = rt.store.update_job(
                        job_id,
                        state=st.RUNNING,
                        started_unix=rt.wall(),
                        status_message="running: waiting for workers",
                    )
                    self.schedule(job)
                    log.info("job %s running", job_id)
                    return True
            # Cancelled while its shards were being initialised: free what was just created.
            rt.shards.drop_job([p.address for p in job.shards], job_id)
            return False

    def _init_shards(self, job: st.JobRecord, initial: Initial | None) -> bool:
        rt = self.rt
        addresses = [p.address for p in job.shards]
        # A health check first: its short deadline finds a dead or black-holed shard in
        # seconds, where InitJob's deadline (sized for a large model) would hold the caller.
        problems = [p for p in rt.shards.health(addresses) if p is not None]
        try:
            if problems:
                raise problems[0]
            if initial is None:
                initial = initial_vectors(job, rt.blobs.read(job.job_id, blobs.INITIAL_STATE))
            rt.shards.init_job(shard_configs(job, *initial))  # every shard at once
        except ShardError as e:
            if e.status in _RETRY_INIT:
                rt.store.update_job(job.job_id, status_message=f"pending: {e}; retrying")
                log.warning("job %s stays pending: %s", job.job_id, e)
            else:
                self.terminate(job.job_id, st.FAILED, f"could not initialise the job: {e}")
            return False
        return True

    def plan_of(self, job: st.JobRecord) -> JobPlan:
        """What the scheduling core needs of a stored job, from where its progress is."""
        spec = co_pb2.JobSpec.FromString(job.spec)
        if spec.HasField("predict"):
            return predict_jobs.plan(job)
        batch_counts = self._batch_counts(job, spec)
        return JobPlan(
            job.job_id,
            job.epochs,
            job.partitions,
            mode=spec.mode,
            stragglers=straggler_settings(spec),
            backup_workers=spec.backup_workers,
            batch_counts=batch_counts,
            epoch=job.epoch,
            done=job.done_partitions,
            evals=job.pending_evals,
            samples=job.samples,
            undoable=self._trial_fits(job, spec),
            local_steps=auto_local_steps(spec, self.rt.settings.auto_max_local_steps, batch_counts),
        )

    def _trial_fits(self, job: st.JobRecord, spec: co_pb2.JobSpec) -> bool:
        """Whether mode auto may keep a trial copy of the job on its shards: not with embedding
        tables (rows may be gigabytes), nor past PSC_AUTO_TRIAL_MAX_MB on the largest slice."""
        largest = max((s.length for s in job.shards), default=job.num_params)
        need = copy_bytes(largest, parse_optimizer(spec.optimizer))
        return not spec.model.tables and need <= self.rt.settings.auto_trial_max_mb * 2**20

    def _batch_counts(self, job: st.JobRecord, spec: co_pb2.JobSpec) -> list[int] | None:
        """Batches per partition: from the uploaded data's header, or from the sizes of its
        data source once a worker has reported them (None until then)."""
        if not spec.data.source:
            rows = train_rows(self.rt.blobs.path(job.job_id, blobs.DATASET))
            return batch_counts(rows, job.partitions, spec.batch_size, spec.seed)
        if not job.data_shape:
            return None
        shape = co_pb2.DataShape.FromString(job.data_shape)
        return batch_counts(
            shape.train_rows, job.partitions, spec.batch_size, spec.seed, shape.block_rows
        )

    def schedule(self, job: st.JobRecord) -> None:
        """Call under rt.lock: hand the job's remaining work out from now on."""
        rt = self.rt
        rt.core.add_job(self.plan_of(job), rt.mono())
        if job.shards:  # a predict job has none, and no members
            rt.executor.members.add_job(job.job_id, [p.address for p in job.shards], job.generation)

    def follow_moved_shard(self, job_ids: Sequence[str]) -> None:
        """A shard came back at a new address and the store points these jobs' slices at it:
        their membership is sent there from now on (a pending job is initialised there)."""
        rt = self.rt
        for job_id in job_ids:
            with rt.lock:
                job = rt.store.get_job(job_id)
                if job is None or job.state != st.RUNNING:
                    continue
                addresses = [p.address for p in job.shards]
                rt.executor.members.add_job(job_id, addresses, job.generation)
            rt.executor.members.request(job_id)

    def pending_ids(self) -> list[str]:
        return [j.job_id for j in self.rt.store.list_jobs(st.PENDING)]

    # --- the end of a job (finish.py saves the model of a completed one) ---
    def fail(self, job_id: str, error: str) -> st.JobRecord:
        """Idempotent: a job already failed (or otherwise ended) is left as it is."""
        job, _ = self.terminate(job_id, st.FAILED, error)
        return job

    def cancel(self, job_id: str) -> st.JobRecord:
        job, changed = self.terminate(job_id, st.CANCELLED, "")
        if not changed:
            raise FailedPrecondition(
                f"job {job_id} is already {job.state}; only pending or running jobs can be "
                "cancelled"
            )
        return job

    def terminate(self, job_id: str, final_state: str, error: str) -> tuple[st.JobRecord, bool]:
        rt = self.rt
        error = error[:MAX_ERROR_CHARS]
        with rt.lock:
            job = self.require(job_id)
            if job.state in st.TERMINAL:
                return job, False
            actions, speeds = rt.core.remove_job(job_id, f"job {final_state}", rt.mono())
            message = (
                f"{final_state}: {error.strip().splitlines()[-1]}" if error.strip() else final_state
            )
            job = rt.store.update_job(
                job_id,
                state=final_state,
                error=error,
                status_message=message,
                finished_unix=rt.wall(),
            )
            self.to_finish.discard(job_id)
        rt.executor.run(actions)
        log.info("job %s %s (%d leases revoked) %s", job_id, final_state, len(actions), error[:200])
        self.release_shards(job, keep_stats=True, speeds=speeds)
        return job, True

    def release_shards(
        self,
        job: st.JobRecord,
        keep_stats: bool = False,
        speeds: Sequence[co_pb2.WorkerSpeed] = (),
    ) -> None:
        rt = self.rt
        rt.executor.members.forget(job.job_id)
        addresses = [p.address for p in job.shards]
        if keep_stats:
            found = [
                s
                for s in rt.shards.job_stats(addresses, job.job_id)
                if not isinstance(s, ShardError)
            ]
            if found:
                metrics = aggregate(job.job_id, found)
                metrics.workers.extend(speeds)
                metrics.timeline.extend(rt.timelines.points(job.job_id))
                rt.store.update_job(job.job_id, final_stats=shard_part(metrics))
        rt.timelines.forget(job.job_id)
        for e in rt.shards.drop_job(addresses, job.job_id):
            log.warning("job %s: shard not freed: %s", job.job_id, e)
