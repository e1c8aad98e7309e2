"""A restarted coordinator picks up where it stopped: running jobs resume from their saved
progress, and the leases granted before the restart are honoured.

The workers holding those leases have kept training (shards do not need the coordinator), so
re-issuing them would redo that work. A holder that does not come back in time is declared
dead and its lease goes back to the pool, as for any silent worker.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from pscluster.coordinator import predict_jobs
from pscluster.coordinator import store as st
from pscluster.coordinator.jobs import JobManager
from pscluster.coordinator.lease_values import Lease
from pscluster.coordinator.move_calls import release_holds
from pscluster.coordinator.writes import LeaseDropped, Write

log = logging.getLogger(__name__)

# After a restart, a worker holding a restored lease has this long more than the worker
# timeout to reach the new process: its channel reconnects with gRPC's backoff (1 s, then
# x1.6 per failed attempt), which after a 10 s outage can leave it ~6 s behind.
RESTORE_GRACE_SECONDS = 10.0


def restore(jobs: JobManager) -> None:
    """Resume running jobs, then their leases; let go of pulls a move between shards that
    this coordinator did not finish may have left held (in the background: a shard that is
    down must not delay the start)."""
    rt = jobs.rt
    running = rt.store.list_jobs(st.RUNNING)
    held = [(j.job_id, [p.address for p in j.shards]) for j in running if j.shards]
    threading.Thread(
        target=release_holds, args=(rt.shards, held), name="release-holds", daemon=True
    ).start()
    for job in running:
        final = rt.store.latest_epoch(job.job_id)
        predict = predict_jobs.is_predict(job)
        # A predict job owes no evaluation: its last partition scored, it is to be finished.
        final_done = predict or (final is not None and final.epoch == job.epochs - 1)
        with rt.lock:
            if job.epoch >= job.epochs and final_done:
                if job.shards:
                    rt.executor.members.add_job(
                        job.job_id, [p.address for p in job.shards], job.generation
                    )
                jobs.to_finish.add(job.job_id)
                continue
            jobs.schedule(job)
        if predict:
            log.info("predict job %s resumed", job.job_id)
            continue
        # The shards' memberships are sent again, under a generation above the saved one, by
        # the job's pump (an unreachable shard does not delay the start; the pump retries).
        rt.executor.members.request(job.job_id)
        log.info("job %s resumed at epoch %d/%d", job.job_id, job.epoch, job.epochs)
    _restore_leases(jobs)


def _restore_leases(jobs: JobManager) -> None:
    rt = jobs.rt
    dropped: list[Write] = []
    with rt.lock:
        now = rt.mono()
        for record in rt.store.leases():
            lease = Lease(**dataclasses.asdict(record))
            if rt.core.restore_lease(lease, now, RESTORE_GRACE_SECONDS):
                log.info("lease %s of worker %s restored", lease.lease_id, lease.worker_id)
            else:
                log.info("lease %s of job %s not restored", lease.lease_id, lease.job_id)
                dropped.append(LeaseDropped(lease.lease_id))
    rt.executor.run(dropped)
