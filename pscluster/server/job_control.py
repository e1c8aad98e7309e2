"""A job's membership and consistency on a shard, changed by the coordinator: who the members
are (and which are stragglers out of the slowest clock), and which consistency mode is in
force. Part of :class:`~pscluster.server.shard_job.ShardJob`, apart from its pushes and
pulls because these are control-plane changes, logged like a push so that recovery replays
them between the same pushes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pscluster.server.clocks import check_member_ids
from pscluster.server.consistency import TrialStep, validate_consistency
from pscluster.server.domain import JobConfig
from pscluster.server.job_state import JobState

if TYPE_CHECKING:
    from pscluster.server.durability.journal import Journal

log = logging.getLogger("pscluster.server.shard_job")


class JobControl:
    """Mixed into ShardJob, whose lock, state and journal it uses."""

    config: JobConfig
    _cond: threading.Condition
    _state: JobState
    _journal: Journal | None
    # ShardJob's and JobPersistence's
    _check_alive: Callable[[], None]
    _commit: Callable[[int], None]

    def set_members(
        self, worker_ids: Sequence[str], generation: int, excluded: Sequence[str] = ()
    ) -> int:
        """Replace the member set unless ``generation`` is older; returns the one in force.

        ``excluded`` are members the coordinator took out of the slowest clock (stragglers):
        the others' pulls stop waiting for them, their pushes still face the clock bound, and
        one taken off the list counts again once it has caught up (see
        :mod:`pscluster.server.clocks`).
        """
        check_member_ids(worker_ids, excluded)
        state = self._state
        with self._cond:
            self._check_alive()
            if generation < state.generation:
                return state.generation
            state.generation = generation
            ticket = 0
            if self._journal is not None:
                ticket = self._journal.log_members(list(worker_ids), generation, list(excluded))
            added, removed, exclusion_changed = state.set_members(worker_ids, excluded)
            now_excluded = state.clocks.excluded
        self._commit(ticket)
        if added or removed or exclusion_changed:
            log.info(
                "job %s generation %d: added %s, removed %s, excluded %s",
                self.config.job_id,
                generation,
                added,
                removed,
                now_excluded,
                extra={"job_id": self.config.job_id},
            )
        return generation

    def set_consistency(
        self,
        mode: str,
        staleness: int,
        backup_workers: int,
        revision: int,
        trial: TrialStep = TrialStep.NONE,
        local_steps: int = 0,
    ) -> tuple[int, int, bool]:
        """Switch the job's consistency live (mode "auto" on the coordinator) unless
        ``revision`` is not newer than the one in force, doing ``trial`` to the trial copy
        (:mod:`pscluster.server.trial`); returns (revision in force, version, whether the
        state went back to the copy). Logged like a membership change, so that recovery
        replays it between the same pushes. ``local_steps`` is what the job's pulls tell the
        workers to take per push from now on.
        """
        validate_consistency(mode, staleness, backup_workers, local_steps)
        state = self._state
        with self._cond:
            self._check_alive()
            if revision <= state.revision:
                return state.revision, state.version, False
            ticket = 0
            if self._journal is not None:
                ticket = self._journal.log_consistency(
                    mode, staleness, backup_workers, revision, trial.value, local_steps
                )
            _, undone = state.set_consistency(
                mode, staleness, backup_workers, revision, trial, local_steps
            )
            self.config = state.config
            version = state.version
        self._commit(ticket)
        log.info(
            "job %s revision %d: consistency is now %s (staleness %d, backup workers %d, "
            "local steps %d)%s",
            self.config.job_id,
            revision,
            mode,
            staleness,
            backup_workers,
            local_steps,
            f", trial {trial.value}" + (" (went back to the copy)" if undone else "")
            if trial is not TrialStep.NONE
            else "",
            extra={"job_id": self.config.job_id},
        )
        return revision, version, undone
