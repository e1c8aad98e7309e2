"""What an AdoptJob stream brings, read into a job's whole state (tensors and JSON).

Either a checkpoint image of the whole state (kept as it came, so the shard writes it as its
first checkpoint without serialising it again), or a skeleton image and the pieces of its
per-value tensors (:mod:`pscluster.server.durability.dense`): the pieces this shard held
already under an older generation of the job are copied from that copy, the others are read
from the shard that holds them (a segment's ``source``), received straight into the new
tensors. Everything is checked before the job is built from it, since it comes over the
network rather than from this shard's disk.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass

import torch

from pscluster.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from pscluster.server.domain import JobConfig
from pscluster.server.durability import dense as dn
from pscluster.server.durability.checkpoint import CheckpointError, state_from_bytes

State = dn.State
# This shard's older copy of the job: its per-value tensors (lent) and its range's start.
OwnCopy = Callable[[], tuple[dict[str, torch.Tensor], int]]
# The raw bytes of global values [start, start + length) of the per-value tensors named (with
# their bytes per value, in order) on the shard at an address: (address, start, length, dense).
Fetch = Callable[[str, int, int, list[tuple[str, int]]], Iterable[bytes | memoryview]]


@dataclass(frozen=True)
class Segment:
    """A piece of the new range's per-value tensors: kept from the copy here (``local``), or
    read from the shard at ``source``."""

    start: int
    length: int
    local: bool
    source: str = ""


def received_state(
    job_id: str,
    size: int,
    data: Iterable[bytes | memoryview],
    segments: Sequence[Segment],
    own: OwnCopy | None,
    limit: int,
    fetch: Fetch | None = None,
) -> tuple[State, bytes | None]:
    """The whole state an AdoptJob stream describes, and its image when it came whole (None
    when it was put together here); segments with a source are read through ``fetch``.
    InvalidArgument for a stream that does not carry what its header says, ResourceExhausted
    past ``limit`` bytes, FailedPrecondition for local pieces without a copy of the job here
    or a source that cannot be read."""
    if size > limit:
        raise ResourceExhausted(
            f"an adopted state of {size} bytes is more than this shard takes ({limit} bytes: "
            "PSC_MAX_MODEL_PARAMETERS)"
        )
    stream = dn.ByteStream(data)
    image = stream.read(size, "the state")
    skeleton = _read(job_id, image)
    try:
        dtypes = dn.dense_dtypes(skeleton[1])
        config = JobConfig.from_json(skeleton[1]["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"the state adopted for job {job_id} cannot be read: {exc}") from None
    if dtypes is None:  # a whole state
        if segments:
            raise InvalidArgument(f"the state adopted for job {job_id} is whole, not segmented")
        stream.end(f"the announced {size} bytes")
        return skeleton, image
    _check_cover(job_id, config, segments)
    if config.length * dn.bytes_per_value(dtypes.values()) > limit:
        raise ResourceExhausted(f"job {job_id}'s {config.length} values are more than this takes")
    tensors = {name: torch.empty(config.length, dtype=dtype) for name, dtype in dtypes.items()}
    held = own() if own is not None and any(s.local for s in segments) else None
    stream.end(f"job {job_id}'s announced state")
    for segment in segments:
        at = segment.start - config.start
        parts = {name: t[at : at + segment.length] for name, t in tensors.items()}
        if segment.source:
            _fill_from_source(job_id, fetch, segment, parts)
            continue
        for name, part in parts.items():
            part.copy_(_own_part(job_id, held, name, segment))
    return dn.join(skeleton, tensors), None


def _read(job_id: str, image: bytes) -> State:
    try:
        return state_from_bytes(image)
    except CheckpointError as exc:
        raise InvalidArgument(f"the state adopted for job {job_id} cannot be read: {exc}") from None


def _fill_from_source(
    job_id: str, fetch: Fetch | None, segment: Segment, parts: dict[str, torch.Tensor]
) -> None:
    """Read ``segment`` from its source shard into ``parts`` (name by name, as it sends)."""
    span = f"[{segment.start}, {segment.start + segment.length})"
    if fetch is None:
        raise FailedPrecondition(f"job {job_id}: this shard cannot read {span} from other shards")
    dense = [(name, part.element_size()) for name, part in parts.items()]
    chunks = fetch(segment.source, segment.start, segment.length, dense)
    try:
        stream = dn.ByteStream(chunks)
        for name, part in parts.items():
            what = f"{name} {span} from shard {segment.source}"
            stream.fill(part.view(torch.uint8).numpy().data, what)
        stream.end(f"job {job_id}'s {span} from shard {segment.source}")
    finally:
        if isinstance(chunks, Generator):  # a refused stream's call ends here, not at GC
            chunks.close()


def _check_cover(job_id: str, config: JobConfig, segments: Sequence[Segment]) -> None:
    """The segments must cover the state's range, in order, each once; each is either kept
    here or read from another shard."""
    at = config.start
    for segment in segments:
        if segment.local == bool(segment.source):
            how = (
                f"both kept here and read from shard {segment.source}"
                if segment.local
                else "neither kept here nor read from a shard"
            )
            raise InvalidArgument(
                f"a segment of job {job_id}'s adopted state at {segment.start} is {how}; it "
                "is one or the other"
            )
        if segment.start != at or segment.length <= 0:
            raise InvalidArgument(
                f"the segments of job {job_id}'s adopted state do not cover its range "
                f"[{config.start}, {config.start + config.length}) in order: one at "
                f"[{segment.start}, {segment.start + segment.length}) where {at} was next"
            )
        at += segment.length
    if at != config.start + config.length:
        raise InvalidArgument(
            f"the segments of job {job_id}'s adopted state end at {at}, its range at "
            f"{config.start + config.length}"
        )


def _own_part(
    job_id: str,
    held: tuple[dict[str, torch.Tensor], int] | None,
    name: str,
    segment: Segment,
) -> torch.Tensor:
    """A local segment's part of ``name`` from the copy here; FailedPrecondition if the copy
    here (if any) does not hold it."""
    if held is None:
        raise FailedPrecondition(
            f"job {job_id}: the adoption keeps values this shard would hold already, but it "
            "holds no older copy of the job"
        )
    tensors, base = held
    tensor = tensors.get(name)
    low, high = segment.start - base, segment.start - base + segment.length
    if tensor is None or low < 0 or high > tensor.numel():
        raise FailedPrecondition(
            f"job {job_id}: the copy here does not hold {name} "
            f"[{segment.start}, {segment.start + segment.length}) to keep"
        )
    return tensor[low:high]
