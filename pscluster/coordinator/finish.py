"""The end of a completed job: save exactly the model its final evaluation measured.

Runs on the executor's background thread when the core reports the final evaluation in
(FinishJob), and again from the monitor while a shard cannot be read: pulling the model is
seconds of shard I/O that no worker's RPC waits for. A predict job's end is its last
partition scored: its stored outputs are checked to be rows of one array, and nothing is
pulled (it has no shards).
"""

from __future__ import annotations

import logging

from pscluster.coordinator import blobs, live, predict_jobs
from pscluster.coordinator import store as st
from pscluster.coordinator.jobs import JobManager
from pscluster.coordinator.predictions import PredictionStore
from pscluster.coordinator.stats import shard_part
from pscluster.errors import PSError
from pscluster.model import objective, safetensors_stream
from pscluster.shard_client import ShardError
from pscluster.v1 import coordinator_pb2 as co_pb2

log = logging.getLogger(__name__)


class Finisher:
    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs
        self.rt = jobs.rt

    def finishing(self, job_id: str) -> bool:
        """The final evaluation is in: remember the job is to be saved, and save it."""
        with self.rt.lock:
            self.jobs.to_finish.add(job_id)
        return self.finish(job_id)

    def finishing_ids(self) -> list[str]:
        with self.rt.lock:
            return sorted(self.jobs.to_finish - self.jobs.busy())

    def finish(self, job_id: str) -> bool:
        """Save the trained model and the shard stats, then free the shards; False if a shard
        could not be read (the job stays running and the monitor retries)."""
        rt = self.rt
        with self.jobs.claimed(job_id) as claimed:
            if not claimed:
                return False
            job = self.jobs.require(job_id)
            if job.state != st.RUNNING:
                return False
            if predict_jobs.is_predict(job):
                return self._finish_predictions(job)
            try:
                entries, versions = live.model_entries(rt, job)
                if not self._evaluated(job, versions):
                    return False
                rt.blobs.write_stream(job_id, blobs.MODEL, safetensors_stream.stream(entries))
                metrics = live.stats(rt, job)
                with rt.lock:
                    metrics.workers.extend(rt.relief.speeds(job_id, rt.mono()))
            except ShardError as e:
                rt.store.update_job(job_id, status_message=f"finalizing: {e}; retrying")
                log.warning("job %s: final model not saved yet: %s", job_id, e)
                return False
            result = self._final_result(job)
            if not self._complete(job, result, final_stats=shard_part(metrics)):
                return False
            self.jobs.release_shards(job)
            return True

    def _complete(self, job: st.JobRecord, result: str, **changes: object) -> bool:
        """Record the job completed with ``result`` and stop scheduling it (False: it ended
        otherwise meanwhile)."""
        rt, job_id = self.rt, job.job_id
        with rt.lock:
            if self.jobs.require(job_id).state != st.RUNNING:
                return False
            rt.store.update_job(
                job_id,
                state=st.COMPLETED,
                finished_unix=rt.wall(),
                epoch=job.epochs,
                done_partitions=[],
                pending_evals=[],
                status_message=f"completed: {result}",
                **changes,
            )
            self.jobs.to_finish.discard(job_id)
            actions, _ = rt.core.remove_job(job_id, "job completed", rt.mono())
        rt.executor.run(actions)
        log.info("job %s completed: %s", job_id, result)
        return True

    def _finish_predictions(self, job: st.JobRecord) -> bool:
        """Every partition's outputs are stored and are rows of one array: completed. Outputs
        that cannot be put together fail the job (scoring again would give the same)."""
        store = PredictionStore(self.rt.blobs, self.rt.settings.chunk_bytes)
        try:
            parts = store.parts(job.job_id, job.partitions)
        except PSError as e:
            self.jobs.fail(job.job_id, f"the outputs cannot be put together: {e}")
            return False
        rows = sum(p.shape[0] for p in parts)
        output = co_pb2.JobSpec.FromString(job.spec).predict.output
        shape = [rows, *parts[0].shape[1:]]
        return self._complete(job, f"{rows} rows scored: {output} {shape} {parts[0].dtype}")

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
        plan = self.jobs.plan_of(job)
        with rt.lock:
            self.jobs.to_finish.discard(job.job_id)
            actions = rt.core.evaluate_again(plan)
        rt.executor.run(actions)
        return False
