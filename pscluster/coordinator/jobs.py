"""A job's lifecycle: submitted, initialised on its shards, finished, failed or cancelled.

Every transition is written to the store under the coordinator lock and checked against the
state it starts from, so a cancel racing a start or a finish cannot be undone by it. Shard
calls happen outside the lock.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import grpc
import torch

from pscluster.coordinator import blobs, live
from pscluster.coordinator import store as st
from pscluster.coordinator.leases import Lease
from pscluster.coordinator.runtime import Activity, Runtime
from pscluster.coordinator.shard_init import initial_vectors, shard_configs
from pscluster.coordinator.spec import (
    SUBMITTED_BLOBS,
    read_submission,
    straggler_settings,
    validate_job,
)
from pscluster.coordinator.stats import aggregate, shard_part
from pscluster.data.dataset import train_rows
from pscluster.data.partitions import batch_counts
from pscluster.errors import FailedPrecondition, NotFound
from pscluster.model import objective, state
from pscluster.model.partition import BalancedRanges
from pscluster.shard_client import ShardError
from pscluster.v1 import coordinator_pb2 as co_pb2

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 64 * 1024
# Codes a shard may answer InitJob with that are worth retrying; anything else fails the job.
_RETRY_INIT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# After a coordinator restart, a worker holding a restored lease has this long more than the
# worker timeout to reach the new process: its channel reconnects with gRPC's backoff (1 s,
# then x1.6 per failed attempt), which after a 10 s outage can leave it ~6 s behind.
RESTORE_GRACE_SECONDS = 10.0


class JobManager:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._busy: set[str] = set()  # being started or finished; guarded by rt.lock
        self._to_finish: set[str] = set()  # finished training, final model not saved yet

    def require(self, job_id: str) -> st.JobRecord:
        job = self.rt.store.get_job(job_id)
        if job is None:
            raise NotFound(f"unknown job {job_id!r}")
        return job

    # --- submission and start ---
    def submit(self, chunks: Iterable[co_pb2.SubmitJobChunk]) -> st.JobRecord:
        rt = self.rt
        spec, data = read_submission(chunks)
        addresses = rt.settings.shard_list()
        job = validate_job(spec, data, len(addresses), rt.settings.default_partitions)
        if job.spec.precision == "fp16":
            self._require_cuda_workers()
        job_id = f"j-{uuid.uuid4().hex[:8]}"
        ranges = BalancedRanges().split(job.layout.size, job.spec.shards)
        slices = [
            st.ShardSlice(a, r.start, r.length)
            for a, r in zip(addresses[: len(ranges)], ranges, strict=True)
        ]
        for name in SUBMITTED_BLOBS:
            rt.blobs.write(job_id, name, data[name])
        record = st.JobRecord(
            job_id=job_id,
            name=job.spec.name,
            spec=job.spec.SerializeToString(),
            mode=job.spec.mode,
            epochs=job.spec.epochs,
            partitions=job.spec.partitions,
            num_params=job.layout.size,
            shards=slices,
            created_unix=rt.wall(),
            status_message="pending: initialising shards",
        )
        rt.store.create_job(record)
        log.info("job %s submitted: %d params on %d shards", job_id, job.layout.size, len(slices))
        self.start(job_id, (job.flat, job.buffers))
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
    def _claimed(self, job_id: str) -> Iterator[bool]:
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

    def start(self, job_id: str, initial: tuple[torch.Tensor, torch.Tensor] | None = None) -> bool:
        """Initialise a pending job on its shards and start scheduling it; False if it stays
        pending (a shard is unreachable: the monitor retries) or is no longer pending."""
        rt = self.rt
        with self._claimed(job_id) as claimed:
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
                    self._schedule(job)
                    log.info("job %s running", job_id)
                    return True
            # Cancelled while its shards were being initialised: free what was just created.
            rt.shards.drop_job([p.address for p in job.shards], job_id)
            return False

    def _init_shards(
        self, job: st.JobRecord, initial: tuple[torch.Tensor, torch.Tensor] | None
    ) -> bool:
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

    def _schedule(self, job: st.JobRecord) -> None:
        """Call under rt.lock: hand the job's remaining work out from now on."""
        rt = self.rt
        evals = set(job.pending_evals)
        if job.epoch >= job.epochs:
            evals.add(job.epochs - 1)  # training is done, so the final evaluation is owed
        spec = co_pb2.JobSpec.FromString(job.spec)
        rows = train_rows(rt.blobs.path(job.job_id, blobs.DATASET))
        rt.book.add_job(
            job.job_id,
            job.epochs,
            job.partitions,
            epoch=job.epoch,
            done=job.done_partitions,
            evals=evals,
            batch_counts=batch_counts(rows, job.partitions, spec.batch_size),
        )
        rt.relief.add_job(job.job_id, spec.mode, straggler_settings(spec), spec.backup_workers)
        rt.membership.add_job(job.job_id, [p.address for p in job.shards], job.generation)
        now = rt.mono()
        rt.activity[job.job_id] = Activity(now, now)

    def restore(self) -> None:
        """After a restart: resume running jobs where their saved progress left them, with
        the leases their workers were training on (see :meth:`_restore_leases`)."""
        rt = self.rt
        for job in rt.store.list_jobs(st.RUNNING):
            final_done = any(e.epoch == job.epochs - 1 for e in rt.store.epochs(job.job_id))
            with rt.lock:
                if job.epoch >= job.epochs and final_done:
                    rt.membership.add_job(
                        job.job_id, [p.address for p in job.shards], job.generation
                    )
                    self._to_finish.add(job.job_id)
                    continue
                self._schedule(job)
                # The shards' memberships are sent again, under a generation above the saved
                # one, by the monitor (not here: an unreachable shard must not delay the start).
                rt.unsynced.add(job.job_id)
            log.info("job %s resumed at epoch %d/%d", job.job_id, job.epoch, job.epochs)
        self._restore_leases()

    def _restore_leases(self) -> None:
        """Honour the leases granted before the restart: the workers holding them have kept
        training (shards do not need the coordinator), so re-issuing them would redo that
        work. A holder that does not come back in time is declared dead and its lease goes
        back to the pool, as for any silent worker."""
        rt = self.rt
        grace = RESTORE_GRACE_SECONDS
        with rt.lock:
            now = rt.mono()
            for record in rt.store.leases():
                lease = Lease(**dataclasses.asdict(record))
                if not rt.book.restore(lease):
                    log.info("lease %s of job %s not restored", lease.lease_id, lease.job_id)
                    continue
                rt.workers.expect(lease.worker_id, now, grace)
                rt.relief.granted(lease, now)
                log.info("lease %s of worker %s restored", lease.lease_id, lease.worker_id)
            rt.save_leases()

    def pending_ids(self) -> list[str]:
        return [j.job_id for j in self.rt.store.list_jobs(st.PENDING)]

    # --- the end of a job ---
    def mark_finishing(self, job_id: str) -> None:
        """Call under rt.lock when the final evaluation is in: the model is to be saved."""
        self.rt.book.remove_job(job_id, "job completed")
        self._to_finish.add(job_id)

    def finishing_ids(self) -> list[str]:
        with self.rt.lock:
            return sorted(self._to_finish - self._busy)

    def finish(self, job_id: str) -> bool:
        """Save the trained model and the shard stats, then free the shards; False if a shard
        could not be read (the job stays running and the monitor retries)."""
        rt = self.rt
        with self._claimed(job_id) as claimed:
            if not claimed:
                return False
            job = self.require(job_id)
            if job.state != st.RUNNING:
                return False
            try:
                model, versions = live.model_and_versions(self.rt, job)
                if not self._evaluated(job, versions):
                    return False
                rt.blobs.write(job_id, blobs.MODEL, state.dumps(model))
                metrics = live.stats(self.rt, job)
                with rt.lock:
                    metrics.workers.extend(rt.relief.speeds(job_id, rt.mono()))
            except ShardError as e:
                rt.store.update_job(job_id, status_message=f"finalizing: {e}; retrying")
                log.warning("job %s: final model not saved yet: %s", job_id, e)
                return False
            with rt.lock:
                if self.require(job_id).state != st.RUNNING:
                    return False
                job = rt.store.update_job(
                    job_id,
                    state=st.COMPLETED,
                    finished_unix=rt.wall(),
                    final_stats=shard_part(metrics),
                    epoch=job.epochs,
                    done_partitions=[],
                    pending_evals=[],
                    status_message=f"completed: {self._final_result(job)}",
                )
                self._to_finish.discard(job_id)
                rt.activity.pop(job_id, None)
                rt.relief.remove_job(job_id, rt.mono())
            log.info("job %s completed: %s", job_id, self._final_result(job))
            self._release_shards(job)
            return True

    def _final_result(self, job: st.JobRecord) -> str:
        """ "test accuracy 0.9610" or "test mse 0.0312": the job's metric at its last epoch."""
        spec = co_pb2.JobSpec.FromString(job.spec)
        metric = objective.metric_of(spec.loss, spec.metric)
        final = self.rt.store.latest_epoch(job.job_id)
        if final is None:
            return "not evaluated"
        value = final.metrics.get(
            metric, final.test_accuracy if metric == "accuracy" else final.test_loss
        )
        return f"test {metric} {value:.4f}"

    def _evaluated(self, job: st.JobRecord, versions: tuple[int, ...]) -> bool:
        """Whether the final evaluation saw exactly the parameters about to be saved (what
        the job reports must be what the user fetches). If a late update moved them, the
        final evaluation is handed out again and the model is saved after it."""
        final = self.rt.store.latest_epoch(job.job_id)
        if final is None or not final.versions or tuple(final.versions) == versions:
            return True
        rt = self.rt
        log.warning(
            "job %s: the final evaluation saw versions %s but the shards are at %s; "
            "evaluating again",
            job.job_id,
            list(final.versions),
            list(versions),
        )
        with rt.lock:
            self._to_finish.discard(job.job_id)
            job = rt.store.update_job(job.job_id, pending_evals=[job.epochs - 1])
            spec = co_pb2.JobSpec.FromString(job.spec)
            rows = train_rows(rt.blobs.path(job.job_id, blobs.DATASET))
            rt.book.add_job(
                job.job_id,
                job.epochs,
                job.partitions,
                epoch=job.epochs,
                evals={job.epochs - 1},
                batch_counts=batch_counts(rows, job.partitions, spec.batch_size),
            )
        return False

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
            revoked = rt.book.remove_job(job_id, f"job {final_state}")
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
            self._to_finish.discard(job_id)
            rt.activity.pop(job_id, None)
            speeds = rt.relief.remove_job(job_id, rt.mono())
            rt.save_leases()
        log.info("job %s %s (%d leases revoked) %s", job_id, final_state, len(revoked), error[:200])
        self._release_shards(job, keep_stats=True, speeds=speeds)
        return job, True

    def _release_shards(
        self,
        job: st.JobRecord,
        keep_stats: bool = False,
        speeds: Sequence[co_pb2.WorkerSpeed] = (),
    ) -> None:
        rt = self.rt
        rt.membership.forget(job.job_id)
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
                rt.store.update_job(job.job_id, final_stats=shard_part(metrics))
        for e in rt.shards.drop_job(addresses, job.job_id):
            log.warning("job %s: shard not freed: %s", job.job_id, e)
