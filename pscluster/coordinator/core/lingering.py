"""Workers that stay members of a job between two of its train leases.

A worker that hands a train lease in and has not asked for work since is kept a member on
the job's shards, because most ask at once and take the job's next unit, which then needs no
membership change at all (two SetMembers rounds per lease were most of the coordinator's
shard traffic). Its next request, its death or the job's end takes it out.

In a job whose members never wait for one another (no steps, no clock bound: async), a
member with nothing to do holds nobody back, so a worker that asks and finds no work stays
a member too: at an epoch's end hundreds of workers go idle at once and come back together
when the next epoch opens, and every one of them leaving and rejoining was a burst of
membership rounds that each joiner's AcquireTask had to wait for. In sync or ssp an idle
member would stall a step or the slowest clock, so there it leaves.

Pure bookkeeping, under the caller's lock, like the rest of the scheduling core.
"""

from __future__ import annotations


class Lingering:
    """Which job each lingering worker is still a member of (at most one)."""

    def __init__(self) -> None:
        self._job_of: dict[str, str] = {}  # worker id -> job id
        self._idle_allowed: set[str] = set()  # jobs whose members may idle

    def allow_idle(self, job_id: str) -> None:
        """Members of ``job_id`` hold nobody back: one that finds no work stays a member."""
        self._idle_allowed.add(job_id)

    def may_idle(self, job_id: str) -> bool:
        return job_id in self._idle_allowed

    def stay(self, worker_id: str, job_id: str) -> None:
        """The worker handed a train lease of ``job_id`` in (a member until it asks again),
        or asked and found nothing to do in a job where it may idle (a member still)."""
        self._job_of[worker_id] = job_id

    def leave(self, worker_id: str) -> str | None:
        """The worker asked for work or is gone: the job it lingered on, if any."""
        return self._job_of.pop(worker_id, None)

    def drop_job(self, job_id: str) -> None:
        """The job ended: nobody lingers on it any more."""
        self._idle_allowed.discard(job_id)
        for worker_id in self.of_job(job_id):
            del self._job_of[worker_id]

    def of_job(self, job_id: str) -> list[str]:
        """The workers lingering on ``job_id`` (members beside the lease holders)."""
        return [w for w, j in self._job_of.items() if j == job_id]
