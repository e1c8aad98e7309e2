"""What a push must satisfy before its decision.

Plain functions of the job's config and counters, so that :mod:`pscluster.server.shard_job`
keeps only the order in which they run under the job's lock.
"""

from __future__ import annotations

import math

from pscluster.compression import Compressor
from pscluster.errors import InvalidArgument
from pscluster.server.domain import JobConfig, PushHeader
from pscluster.server.payloads import check_payload_size
from pscluster.server.tables.rows import rows_bytes
from pscluster.transport import wire

# The division by grad_scale runs in float32: a scale outside float32's normal range would turn
# every gradient into 0 or Inf there, so it is refused as malformed rather than half-applied.
_MIN_SCALE = 2.0**-126
_MAX_SCALE = 3.4028234663852886e38


def check_header(config: JobConfig, codec: Compressor, header: PushHeader) -> None:
    """Refuse a header that does not fit the job, before any of its payload is read."""
    if not header.worker_id:
        raise InvalidArgument("push header has no worker_id; every push comes from a worker")
    wire.itemsize(header.dtype)
    if header.codec != config.codec:
        raise InvalidArgument(
            f"push uses codec {header.codec!r} but job {config.job_id} was set up for "
            f"{config.codec!r}; compress as the job spec says"
        )
    if header.length != config.length:
        raise InvalidArgument(
            f"push announces {header.length} values but job {config.job_id} holds "
            f"{config.length} on this shard (range [{config.start}, "
            f"{config.start + config.length})); send this shard's slice"
        )
    check_payload_size(codec, header)
    check_grad_scale(header.grad_scale)
    check_buffer_delta(config, header)
    check_row_blocks(config, header)
    check_bucket_order(header)


def check_bucket_order(header: PushHeader) -> None:
    """Buckets sent last first are raw float32 values, whole ones, and nothing else."""
    if not header.bucket_bytes:
        return
    if header.codec != "none" or wire.itemsize(header.dtype) != 4 or header.rows:
        raise InvalidArgument(
            "bucket_bytes is set, but buckets in reverse order are only for raw float32 "
            "payloads without rows; send the payload in order (bucket_bytes 0)"
        )
    if header.bucket_bytes % 4:
        raise InvalidArgument(
            f"bucket_bytes {header.bucket_bytes} is not a whole number of float32 values"
        )


def check_row_blocks(config: JobConfig, header: PushHeader) -> None:
    """Each block names one of the job's tables, once, in a wire dtype (sizes follow)."""
    dims = [table.dim for table in config.tables]
    rows_bytes(header.rows, dims)  # a table the job does not have
    if len({block.table for block in header.rows}) != len(header.rows):
        raise InvalidArgument("a push has two row blocks for one table; send one per table")
    for block in header.rows:
        wire.itemsize(block.dtype)


def check_grad_scale(scale: float) -> None:
    if scale == 0:  # proto3's default: no loss scaling
        return
    if not (math.isfinite(scale) and _MIN_SCALE <= scale <= _MAX_SCALE):
        raise InvalidArgument(
            f"grad_scale {scale} is not a positive, finite float32 number; send the loss "
            "scale the payload was multiplied by (0 or 1: none)"
        )


def check_buffer_delta(config: JobConfig, header: PushHeader) -> None:
    """The delta covers the job's whole buffer range or is empty ("no change")."""
    expected = config.buffer_length * 8
    if len(header.buffer_delta) not in (0, expected):
        raise InvalidArgument(
            f"push carries a buffer_delta of {len(header.buffer_delta)} bytes but job "
            f"{config.job_id} keeps {config.buffer_length} buffer values on this shard: "
            f"expected {expected} bytes (float64) or none"
        )


def check_base_version(header: PushHeader, version: int) -> None:
    if header.base_version > version:
        raise InvalidArgument(
            f"push base_version {header.base_version} is ahead of the shard's version "
            f"{version}; send the version of the parameters you pulled"
        )
