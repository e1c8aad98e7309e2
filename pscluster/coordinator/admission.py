"""Admission limits for SubmitJob: model size, active jobs, active jobs per submitter.

Checked on the spec (the first message of the stream) before any blob is read or anything is
stored, so a refused submission costs the coordinator almost nothing and changes nothing. A
submission that passes holds a reservation until its job is recorded, so concurrent
submissions cannot all pass on the same free slot (a job briefly counts twice, which errs on
the side of refusing).

The submitter of each job is written beside its blobs (``jobs/<id>/submitter``: a digest of
its token, or its host without auth, never the token), so that per-submitter counts survive a
coordinator restart.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pscluster.config import Settings
from pscluster.coordinator import store as st
from pscluster.coordinator.store import JobStore
from pscluster.errors import ResourceExhausted
from pscluster.v1 import coordinator_pb2 as co_pb2

OWNER_FILE = "submitter"


def model_parameters(spec: co_pb2.JobSpec) -> int:
    """Trainable values the spec declares (shapes as sent: validation comes later)."""
    return sum(math.prod(p.shape) for p in spec.model.params)


class Admission:
    def __init__(self, settings: Settings, store: JobStore, jobs_dir: Path) -> None:
        self.settings = settings
        self.store = store
        self.jobs_dir = Path(jobs_dir)
        self._lock = threading.Lock()
        self._reserved: Counter[str] = Counter()  # submissions admitted, job not recorded yet

    def owner(self, job_id: str) -> str | None:
        try:
            return (self.jobs_dir / job_id / OWNER_FILE).read_text().strip() or None
        except OSError:
            return None

    def _record_owner(self, job_id: str, client: str) -> None:
        folder = self.jobs_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{OWNER_FILE}.tmp"
        tmp.write_text(client)
        tmp.replace(folder / OWNER_FILE)

    def _check(self, spec: co_pb2.JobSpec, client: str) -> None:
        s = self.settings
        params = model_parameters(spec)
        if params > s.max_model_parameters:
            raise ResourceExhausted(
                f"the model has {params} parameters, over this cluster's limit "
                f"max_model_parameters={s.max_model_parameters} (PSC_MAX_MODEL_PARAMETERS); "
                "submit a smaller model or ask the operator to raise the limit"
            )
        active = [*self.store.list_jobs(st.PENDING), *self.store.list_jobs(st.RUNNING)]
        total = len(active) + sum(self._reserved.values())
        if total >= s.max_active_jobs:
            raise ResourceExhausted(
                f"the cluster has {total} pending or running jobs, its limit "
                f"max_active_jobs={s.max_active_jobs} (PSC_MAX_ACTIVE_JOBS); wait for a job "
                "to finish or cancel one"
            )
        mine = sum(1 for j in active if self.owner(j.job_id) == client) + self._reserved[client]
        if mine >= s.max_active_jobs_per_client:
            raise ResourceExhausted(
                f"you have {mine} pending or running jobs, the limit per submitter "
                f"max_active_jobs_per_client={s.max_active_jobs_per_client} "
                "(PSC_MAX_ACTIVE_JOBS_PER_CLIENT); wait for one to finish or cancel one"
            )

    @contextmanager
    def admit(self, spec: co_pb2.JobSpec, client: str) -> Iterator[Callable[[str], None]]:
        """Raise ResourceExhausted if a limit is reached; else hold a slot for ``client``.

        Inside the block, call the yielded function with the new job's id once it is recorded;
        the slot is released when the block ends, whether or not a job was created.
        """
        with self._lock:
            self._check(spec, client)
            self._reserved[client] += 1
        try:
            yield lambda job_id: self._record_owner(job_id, client)
        finally:
            with self._lock:
                self._reserved[client] -= 1
                if self._reserved[client] <= 0:
                    del self._reserved[client]
