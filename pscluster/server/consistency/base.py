"""The ``ConsistencyPolicy`` protocol: when a push is applied, and when a worker may pull.

A policy is per job and holds whatever state its mode needs (a sync step's summed gradients
and buffer changes, ...). The job calls it under the job's lock and gives it a narrow view of itself
(:class:`JobContext`): the policy decides, the job does the bookkeeping (idempotence, counters,
clocks, waking waiters). So a new mode, e.g. sync with backup workers, is one new file that
subclasses an existing policy or this protocol, plus one entry in the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from pscluster.server.domain import Outcome, PushHeader
from pscluster.server.tables.rows import RowGrads


class JobContext(Protocol):
    """The job as its policy sees it. Every call happens with the job's lock held."""

    @property
    def version(self) -> int: ...

    @property
    def clock(self) -> int:
        """The slowest counted member's clock, never going down (see
        :mod:`pscluster.server.clocks`: excluded stragglers are not counted)."""
        ...

    @property
    def members(self) -> list[str]: ...

    def clock_of(self, worker_id: str) -> int: ...

    def slowest(self) -> tuple[str, int] | None: ...

    def apply(
        self,
        grad: torch.Tensor,
        pushes: Sequence[PushHeader],
        *,
        step: bool,
        buffer_delta: torch.Tensor | None = None,
        rows: RowGrads | None = None,
        change: torch.Tensor | None = None,
    ) -> None:
        """Run the optimizer on ``grad`` once (or add it at lr, when the pushes carry local
        steps' changes; ``change``: a sync step's changes beside its gradients), version += 1,
        record the pushes' staleness, and add ``buffer_delta`` to the job's buffers; step the
        table rows of ``rows`` (already averaged like ``grad``; scaled with it for staleness).

        ``pushes`` are the pushes behind ``grad``; ``step`` marks a sync barrier step. With the
        job's ``staleness_aware_lr`` a push applied on its own (``step=False``) is scaled by
        1 / (version staleness + 1) first, in place. ``buffer_delta`` is the *sum* of the
        pushes' buffer changes (float64; None: none changed anything); the job averages it over
        ``len(pushes)`` except over its counter spans, and never scales it by staleness.
        """
        ...

    def record_clock_lead(self, lead: int) -> None: ...


@dataclass(frozen=True)
class Traits:
    """What a mode means to code outside this package, so that the coordinator and the worker
    ask these questions instead of comparing mode names (a new mode then needs no change
    there). Read them through :func:`pscluster.server.consistency.mode_traits`."""

    # Pushes are held in steps, and a step closes once enough members have pushed for it
    # (sync, with or without backup workers).
    steps: bool
    # A step waits for every member: one slow worker holds everyone back (plain sync; with
    # backup workers a step closes without the slowest few).
    step_waits_for_all: bool
    # A clock bound applies: ``staleness`` is in force (ssp), pulls wait on the slowest clock.
    clock_bound: bool
    # A straggler can be left out of the slowest clock (SetMembers' ``excluded_worker_ids``).
    excludable: bool
    # The shards answer pushes with a ``next_version`` the worker's next pull waits for
    # (sync's min_version: the step its push is in).
    waits_for_version: bool
    # ``backup_workers`` may be set (sync).
    takes_backup_workers: bool


@dataclass(frozen=True)
class Decision:
    """What a policy made of a push. ``reject_key`` names the ``pushes_rejected`` counter of a
    push that was not taken (e.g. "stale", "late"); the job counts it and answers with
    ``reason``. ``next_version`` is the min_version the worker's next pull must ask for (0:
    none), sent back in the reply so that the worker never computes it itself."""

    outcome: Outcome
    reason: str = ""
    reject_key: str = ""
    next_version: int = 0


class ConsistencyPolicy(Protocol):
    name: ClassVar[str]
    traits: ClassVar[Traits]

    @classmethod
    def create(cls, *, staleness: int, backup_workers: int) -> ConsistencyPolicy:
        """A fresh policy for one job; each takes the settings its mode uses."""
        return cls()

    def on_push(
        self,
        job: JobContext,
        push: PushHeader,
        grad: torch.Tensor,
        buffer_delta: torch.Tensor | None = None,
        rows: RowGrads | None = None,
    ) -> Decision:
        """Decide on a push from a member whose payload is valid and whose base_version is not
        ahead of the job's. May apply it (``job.apply``, passing the push's ``buffer_delta``
        along with its gradient), hold it, or refuse it with an outcome (never an exception:
        the worker acts on each shard's outcome). ``grad`` (already divided by the push's loss
        scale) and ``buffer_delta`` (float64, None: no change) are lent for the call only
        (their memory is reused for the next push): copy what must outlive it. ``rows``, the
        push's row gradients (None: none), are owned: a policy may keep them.
        """
        ...

    def pull_blocker(self, job: JobContext, worker_id: str) -> str | None:
        """What a member's pull must wait for ("the ssp bound ..."), or None if it may go."""
        return None

    def version_wait(self, job: JobContext, min_version: int) -> str:
        """What a pull asking for ``min_version`` is waiting for, for the timeout message."""
        return f"version {min_version} (the shard is at version {job.version})"

    def on_pull_granted(self, job: JobContext, worker_id: str) -> None:
        """Called when a member's pull goes ahead (ssp records the worker's clock lead)."""
        return None

    def on_members_changed(self, job: JobContext) -> None:
        """Re-check after SetMembers: a barrier may now be complete."""
        return None

    def flush(self, job: JobContext) -> None:
        """Apply whatever the policy holds, because it is about to be replaced by a mode that
        does not take it over (a live switch, :meth:`JobState.set_consistency`): pushes it
        answered as taken must reach the parameters, exactly once. Stateless modes hold
        nothing."""
        return None

    def waiting_for(self, job: JobContext) -> list[str]:
        """Members the job is waiting on (sync: those that have not pushed for the open step)."""
        return []

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """What the policy holds between pushes (sync: the open step's sum and pushes), as
        tensors (copies) and JSON-able data, for checkpoints. Stateless modes hold nothing."""
        return {}, {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Become what :meth:`state_dict` described."""
        return None
