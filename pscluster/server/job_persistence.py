"""A job's state as a whole on a shard, for durability and moves: read for a checkpoint (with
the journal moving its log on under the same lock), lent to an export while the job is held,
loaded back by recovery, and the journal that logs the job. Part of
:class:`~pscluster.server.shard_job.ShardJob`, apart from its pushes and pulls, which only
log through :meth:`JobPersistence._commit`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from pscluster.server.job_state import JobState
from pscluster.server.job_state_checkpoint import StateDict
from pscluster.server.layout_gate import LayoutGate

if TYPE_CHECKING:
    from pscluster.server.durability.journal import Journal

T = TypeVar("T")


class JobPersistence:
    """Mixed into ShardJob, whose lock, state, gate and journal it uses."""

    gate: LayoutGate
    _cond: threading.Condition
    _state: JobState
    _journal: Journal | None
    _replayed: int
    _check_alive: Callable[[], None]  # ShardJob's

    def state_dict(self, *, copy: bool = True) -> StateDict:
        """The job's whole state (see :meth:`JobState.state_dict`), read under its lock."""
        with self._cond:
            return self._state.state_dict(copy=copy)

    def held_image(self, encode: Callable[[dict[str, torch.Tensor], dict[str, Any]], T]) -> T:
        """ExportJob's state, only while held (no member in the middle of a step), passed
        through ``encode`` under the lock: the tensors are lent, not copied first."""
        with self._cond:
            self._check_alive()
            self.gate.check_held()
            return encode(*self._state.state_dict(copy=False))

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        with self._cond:
            self._state.load_state_dict(tensors, meta)

    def capture(self, then: Callable[[], None], kind: str = "full") -> StateDict:
        """The state for a checkpoint ("full", or "delta": only the table rows changed since
        the last one) and, under the same hold of the lock, ``then()``: the journal moves its
        log on there, so that no record falls between a checkpoint and the log after it."""
        with self._cond:
            state = self._state.state_dict(checkpoint=kind)
            then()
            return state

    @property
    def journal(self) -> Journal | None:
        return self._journal

    def attach(self, journal: Journal, records_replayed: int = 0) -> None:
        """Log from now on (a new job, or one just recovered by replaying its log)."""
        journal.bind(self.capture)
        with self._cond:
            self._journal = journal
            self._replayed = records_replayed

    def _commit(self, ticket: int) -> None:
        if ticket and self._journal is not None:
            self._journal.commit(ticket)
