"""A shard's side of a live re-layout (the coordinator's ScaleShards), mixed into
:class:`~pscluster.server.shard.Shard`: hold a job, export it (whole, as a skeleton, or raw
ranges of its per-value tensors), adopt a state cut for this shard, and take back the copy an
adoption replaced when the move is rolled back. The tables' rows are picked out per new shard
(:meth:`RelayoutMixin.export_rows`) and read by the shard that adopts them.

A job an adoption replaces is kept in memory (*retired*) until the coordinator says the move
is settled: the shards of the new layout may still read ranges of it (only what changes shard
travels, and the shards adopt at once), and a move that fails on another shard is rolled back
by restoring it here (AdoptJobHeader.restore_retired) rather than by sending it back whole.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pscluster.errors import FailedPrecondition, InvalidArgument, LayoutMoved
from pscluster.server import relayout
from pscluster.server.adopted_rows import FetchRows, RowSource, rows_for, with_rows, without_rows
from pscluster.server.adopted_state import Fetch, OwnCopy, Segment, received_state
from pscluster.server.domain import JobConfig
from pscluster.server.durability import dense as dn
from pscluster.server.durability.checkpoint import state_to_bytes
from pscluster.server.durability.image import restore
from pscluster.server.durability.journal import DurabilityConfig, Journal
from pscluster.server.durability.staging import stage
from pscluster.server.layout_gate import HoldAction, HoldStatus
from pscluster.server.shard_job import ShardJob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retired:
    """A job an adoption replaced here, and the layout generation that replaced it."""

    job: ShardJob
    replaced_by: int


class RelayoutMixin:
    """What the mixin needs of the shard, set by its constructor."""

    _jobs: dict[str, ShardJob]
    _starting: set[str]
    _lock: threading.Lock
    _durability: DurabilityConfig | None
    _moved: relayout.MovedJobs
    _retired: dict[str, Retired]
    max_state_bytes: int

    if TYPE_CHECKING:  # the shard's own

        def job_at(self, job_id: str, layout_generation: int = 0) -> ShardJob: ...

        def _check_config(self, config: JobConfig) -> None: ...

    def hold_job(self, job_id: str, action: HoldAction, layout_generation: int) -> HoldStatus:
        """HOLD (members' pulls wait here), RELEASE (they go on), MOVED (the job left for
        ``layout_generation``: dropped here, remembered as moved) or SETTLED (the move to
        ``layout_generation`` is committed: the retired copy goes). A repeated MOVED of the
        same generation answers as the first did (the coordinator may retry it)."""
        if action is HoldAction.SETTLED:
            with self._lock:
                retired = self._retired.get(job_id)
                if retired is not None and retired.replaced_by <= layout_generation:
                    del self._retired[job_id]
            return HoldStatus([], [], 0, layout_generation)
        if action is HoldAction.MOVED:
            with self._lock:
                moved_to = self._moved.get(job_id)
                self._retired.pop(job_id, None)
            if moved_to is not None and moved_to == layout_generation:
                return HoldStatus([], [], 0, moved_to)
            job = self.job_at(job_id)
            relayout.check_newer(job_id, layout_generation, job.config.layout_generation, "MOVED")
            status = job.layout_status()
            with self._lock:
                if self._jobs.get(job_id) is job:
                    del self._jobs[job_id]
                self._moved.add(job_id, layout_generation)
            job.move(layout_generation)
            log.info("job %s moved to layout generation %d", job_id, layout_generation)
            return HoldStatus(status.members, status.waiting, status.version, layout_generation)
        job = self.job_at(job_id, layout_generation)
        job.gate.hold(action is HoldAction.HOLD)
        return job.layout_status()

    def export_job(self, job_id: str, *, skeleton: bool = False) -> bytes:
        """The held job's whole state as a checkpoint image, or (``skeleton``) all of it but
        its per-value tensors and its tables' rows (FailedPrecondition unless held)."""
        if skeleton:
            return self.job_at(job_id).held_image(
                lambda t, m: state_to_bytes(*dn.split(without_rows(t), m)[0])
            )
        return self.job_at(job_id).held_image(state_to_bytes)

    def export_rows(self, job_id: str, generation: int, shards: int, index: int) -> bytes:
        """The rows of the job's tables at layout ``generation`` (held here, or the copy an
        adoption retired) that new shard ``index`` of ``shards`` owns, with their ids, as an
        image of tensors alone (:func:`~pscluster.server.adopted_rows.rows_for`). Read as the
        ranges are: lent, outside the lock, from a job no push changes."""
        if not 0 <= index < shards:
            raise InvalidArgument(f"rows for new shard {index} of {shards}: no such shard")
        try:
            job, (tensors, _) = self._state_at(job_id, generation)
        except LayoutMoved:  # an adoption here retired it just now
            job, (tensors, _) = self._state_at(job_id, generation)
        version = job.version
        rows = rows_for(tensors, job.config.tables, shards, index)
        if job.version != version:
            raise FailedPrecondition(f"job {job_id} took a push while its rows were read")
        return state_to_bytes(rows, {})

    def export_ranges(
        self, job_id: str, generation: int, ranges: Sequence[tuple[int, int]], names: list[str]
    ) -> Iterator[memoryview]:
        """Raw bytes of global ``ranges`` of the per-value tensors ``names`` of the job at
        layout ``generation``: the one held here, or the copy an adoption retired.

        The tensors are lent, not copied, and read outside the job's lock: the job is held
        with every member between two steps (or retired), so no push changes them; the
        version is checked once they are read, and a job that moved on fails the export.
        """
        try:
            job, state = self._state_at(job_id, generation)
        except LayoutMoved:  # an adoption here retired it just now
            job, state = self._state_at(job_id, generation)
        version = job.version
        tensors = dn.split(*state)[1]
        yield from dn.range_views(tensors, job.config.start, ranges, names)
        if job.version != version:
            raise FailedPrecondition(f"job {job_id} took a push while its ranges were read")

    def _state_at(self, job_id: str, generation: int) -> tuple[ShardJob, dn.State]:
        """The job at ``generation`` here, retired or held, and its whole state (lent).
        Retired first: an adoption retires the job before it lets it go (moved), so a read
        that found it live and then moved finds it retired when it looks again."""
        with self._lock:
            live, retired = self._jobs.get(job_id), self._retired.get(job_id)
        if retired is not None and retired.job.config.layout_generation == generation:
            return retired.job, retired.job.state_dict(copy=False)
        if live is not None and live.config.layout_generation == generation:
            return live, live.held_image(lambda t, m: (t, m))
        raise FailedPrecondition(
            f"job {job_id} is not here at layout generation {generation} (nor retired)"
        )

    def adopt_job(
        self,
        job_id: str,
        generation: int,
        size: int,
        data: Iterable[bytes | memoryview],
        segments: Sequence[Segment] = (),
        fetch: Fetch | None = None,
        row_sources: Sequence[RowSource] = (),
        fetch_rows: FetchRows | None = None,
    ) -> tuple[ShardJob, int]:
        """Serve the job a state describes, at layout generation ``generation``, durably (its
        first checkpoint is written before this returns). A job here at an older generation is
        replaced (its waiters answer "layout moved", its files go) and retired; local
        ``segments`` are read from it, those with a source through ``fetch``, and the tables'
        rows from ``row_sources`` (through ``fetch_rows``); returns the job and the bytes of
        rows read from other shards. Nothing changes when the state is refused."""
        if not job_id:
            raise InvalidArgument("the AdoptJob header's job_id is empty; name the job")
        old = self._check_adoptable(job_id, generation)  # before gigabytes are received
        own: OwnCopy | None = None
        own_rows = None
        if old is not None:
            held = old

            def own() -> tuple[dict[str, torch.Tensor], int]:
                return dn.split(*held.state_dict(copy=False))[1], held.config.start

            def own_rows(shards: int, index: int) -> dict[str, torch.Tensor]:
                return rows_for(held.state_dict(copy=False)[0], held.config.tables, shards, index)

        limit = self.max_state_bytes
        state, image = received_state(job_id, size, data, segments, own, limit, fetch)
        state, rows_bytes = with_rows(job_id, state, row_sources, own_rows, fetch_rows)
        job = relayout.adopted_job(job_id, generation, state)
        del state
        self._check_config(job.config)
        return self._install(job_id, generation, job, image, retire=True), rows_bytes

    def restore_job(self, job_id: str, generation: int) -> ShardJob:
        """The job as the last adoption here found it, back under ``generation`` (a move
        rolled back), durably; FailedPrecondition if no retired copy is kept for the job
        here now."""
        with self._lock:
            retired, live = self._retired.get(job_id), self._jobs.get(job_id)
        if retired is None or live is None or live.config.layout_generation != retired.replaced_by:
            raise FailedPrecondition(f"job {job_id}: no copy an adoption replaced is kept here")
        relayout.check_newer(job_id, generation, live.config.layout_generation, "a restore")
        tensors, meta = retired.job.state_dict(copy=False)
        config = {**meta["config"], "layout_generation": generation}
        job = restore(tensors, {**meta, "config": config})
        return self._install(job_id, generation, job, None, retire=False)

    def _install(
        self, job_id: str, generation: int, job: ShardJob, image: bytes | None, *, retire: bool
    ) -> ShardJob:
        """``job`` in place of the one here (if any), durably first: staged (``image`` as it
        came, or the job's own tensors), then swapped in."""
        with self._lock:
            old = self._check_adoptable_locked(job_id, generation)
            self._starting.add(job_id)
        staged: Path | None = None
        try:
            if self._durability is not None:  # durable before anything here is replaced
                written = image if image is not None else job.state_dict(copy=False)
                staged = stage(self._durability.job_folder(job_id), written)
            del image
            if old is not None:  # its files go first: the new job's folder is the same one
                with self._lock:
                    self._retired.pop(job_id, None)
                    if retire:
                        self._retired[job_id] = Retired(old, generation)
                old.move(generation)
            if self._durability is not None and staged is not None:
                state_dict = job.state_dict(copy=False)
                job.attach(Journal.from_staged(job_id, state_dict, self._durability, staged))
                staged = None
            with self._lock:
                self._jobs[job_id] = job
                self._moved.forget(job_id)
                if old is None:
                    self._retired.pop(job_id, None)
        finally:
            if staged is not None:  # never taken: it must not come back as the job
                shutil.rmtree(staged, ignore_errors=True)
            with self._lock:
                self._starting.discard(job_id)
        log.info(
            "job %s %s at layout generation %d: %d values [%d, %d), version %d",
            job_id,
            "adopted" if retire else "restored",
            generation,
            job.config.length,
            job.config.start,
            job.config.start + job.config.length,
            job.version,
            extra={"job_id": job_id},
        )
        return job

    def _check_adoptable(self, job_id: str, generation: int) -> ShardJob | None:
        with self._lock:
            return self._check_adoptable_locked(job_id, generation)

    def _check_adoptable_locked(self, job_id: str, generation: int) -> ShardJob | None:
        """The job ``job_id`` an adoption at ``generation`` would replace (None: none here);
        FailedPrecondition if the one here (or the move away remembered) is not older."""
        if job_id in self._starting:
            raise FailedPrecondition(
                f"job {job_id} is being created on this shard right now; try again once that "
                "call has answered"
            )
        old = self._jobs.get(job_id)
        here = old.config.layout_generation if old is not None else self._moved.get(job_id)
        relayout.check_newer(job_id, generation, here, "AdoptJob")
        return old
