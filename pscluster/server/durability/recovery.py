"""Bring a shard's jobs back from their folders: newest good checkpoint, then the log after it.

Replay is state-machine replay: every logged input goes through the same code the live shard
ran (:meth:`ShardJob.replay_push` for a push, :meth:`ShardJob.set_members`, the clock read of a
pull), in log order, which is the order the live shard applied them in. So the recovered job is
bit-identical to the one that crashed, up to its last logged record.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pscluster.errors import PSError
from pscluster.server.consistency import TrialStep
from pscluster.server.domain import PushHeader
from pscluster.server.durability.checkpoint import (
    CheckpointError,
    checkpoint_number,
    checkpoint_path,
    checkpoints,
    read_checkpoint,
)
from pscluster.server.durability.image import restore
from pscluster.server.durability.journal import DurabilityConfig, Journal
from pscluster.server.durability.staging import settle_staged
from pscluster.server.durability.trash import clear_trash
from pscluster.server.durability.wal import (
    CorruptSegment,
    Record,
    RecordType,
    read_records,
    segment_number,
    segments,
)
from pscluster.server.shard_job import ShardJob
from pscluster.server.tables.rows import RowBlockInfo

log = logging.getLogger(__name__)


class RecoveryError(Exception):
    """A job folder the shard cannot trust: the message names the files and what is wrong."""


@dataclass(frozen=True)
class Recovered:
    job: ShardJob
    records_replayed: int
    seconds: float


def recover_all(config: DurabilityConfig) -> list[Recovered]:
    """Every job under ``config.data_dir``; RecoveryError if one cannot be recovered."""
    if not config.data_dir.exists():
        config.data_dir.mkdir(parents=True)
        return []
    settle_staged(config.data_dir)
    clear_trash(config.data_dir)
    found = []
    for folder in sorted(p for p in config.data_dir.iterdir() if p.is_dir()):
        recovered = recover_job(folder, config)
        if recovered is not None:
            found.append(recovered)
    return found


def recover_job(folder: Path, config: DurabilityConfig) -> Recovered | None:
    """The job in ``folder``, ready to serve and logging again; None for a folder of a job
    whose InitJob never completed (no checkpoint at all: it was never acknowledged)."""
    started = time.monotonic()
    for tmp in folder.glob("*.tmp"):
        tmp.unlink()
    candidates = checkpoints(folder)
    if not candidates:
        log.warning("%s holds no checkpoint (an InitJob that never finished); removing it", folder)
        shutil.rmtree(folder)
        return None
    job, start, checkpoint_version = _newest_good(candidates)
    replayed = 0
    logs = [p for p in segments(folder) if segment_number(p) >= start]
    for i, path in enumerate(logs):
        # Payloads logged before their decisions, until a PUSH record refers to them: never
        # across segments (a payload the log rolled away from is written again with its push).
        payloads: dict[tuple[str, int], bytes] = {}
        try:
            for record in read_records(path, last=i == len(logs) - 1):
                if record.type is RecordType.PUSH_DATA:
                    payloads[(record.meta["worker_id"], record.meta["seq"])] = record.blob
                    continue
                _replay(job, record, payloads, path)
                replayed += 1
        except CorruptSegment as exc:
            log.error("%s; the %d later segment(s) are dropped", exc, len(logs) - i - 1)
            for later in logs[i + 1 :]:
                later.unlink()
            logs = logs[: i + 1]
            break
    last = max([segment_number(p) for p in logs] + [start])
    journal = Journal(folder, config, segment=last + 1, checkpoint_version=checkpoint_version)
    job.attach(journal, replayed)
    seconds = time.monotonic() - started
    log.info(
        "job %s recovered from %s: checkpoint %d, %d records replayed, version %d, in %.3fs",
        job.config.job_id,
        folder,
        start,
        replayed,
        job.version,
        seconds,
    )
    return Recovered(job, replayed, seconds)


def _newest_good(candidates: list[Path]) -> tuple[ShardJob, int, int]:
    """The job from the newest checkpoint that reads back whole, its number and version."""
    problems = []
    for path in candidates:
        try:
            job = _load_chain(path)
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            log.error("%s; trying an older checkpoint", exc)
            problems.append(f"{path}: {exc}")
            continue
        return job, checkpoint_number(path), job.version
    raise RecoveryError(
        "no checkpoint can be trusted, so the job cannot be recovered: " + "; ".join(problems)
    )


def _load_chain(path: Path) -> ShardJob:
    """The job a checkpoint holds: a full one restored, a delta applied on top of the chain
    of checkpoints it builds on (a missing or damaged one fails the whole chain)."""
    tensors, meta = read_checkpoint(path)
    base = meta.get("delta_of")
    if base is None:
        return restore(tensors, meta)
    job = _load_chain(checkpoint_path(path.parent, int(base)))
    job.load_state_dict(tensors, meta)
    return job


def _replay(
    job: ShardJob, record: Record, payloads: dict[tuple[str, int], bytes], path: Path
) -> None:
    meta = record.meta
    try:
        if record.type is RecordType.PUSH:
            job.replay_push(*_logged_push(job.config.job_id, record, payloads, path))
        elif record.type is RecordType.MEMBERS:
            job.set_members(meta["worker_ids"], meta["generation"], meta["excluded"])
        elif record.type is RecordType.CONSISTENCY:
            job.set_consistency(
                meta["mode"],
                meta["staleness"],
                meta["backup_workers"],
                meta["revision"],
                TrialStep(meta.get("trial", "")),
                int(meta.get("local_steps", 0)),
            )
        elif record.type is RecordType.READ:
            job.replay_read(meta["worker_id"])
        elif record.type is RecordType.ADMIT:
            job.replay_admit(int(meta["table"]), record.blob)
    except PSError as exc:
        # The live shard refused it the same way (e.g. a push whose base_version was ahead)
        # after logging it: replay refuses it again, and the state is the same as then.
        log.debug("replayed record refused again: %s", exc)


def _logged_push(
    job_id: str, record: Record, payloads: dict[tuple[str, int], bytes], path: Path
) -> tuple[PushHeader, bytes]:
    """The header and payload of a push record: its blob is the payload then the buffer delta
    (records from before buffers have no delta and no grad_scale: scale 1, no change), or
    only the delta when the payload was logged before it ("data": true)."""
    meta = dict(record.meta)
    delta_bytes = int(meta.pop("buffer_delta_bytes", 0))
    split = len(record.blob) - delta_bytes
    rows = tuple(RowBlockInfo(*block) for block in meta.pop("rows", ()))
    payload = record.blob[:split]
    if meta.pop("data", False):
        key = (meta["worker_id"], meta["seq"])
        if key not in payloads:
            raise CorruptSegment(
                f"{path}: the push seq {key[1]} of worker {key[0]} refers to a payload the "
                "segment does not hold"
            )
        payload = payloads.pop(key)
    header = PushHeader(job_id=job_id, **meta, buffer_delta=record.blob[split:], rows=rows)
    return header, payload
