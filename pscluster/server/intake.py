"""Receiving one push, outside the job's lock: its payload decoded to a float32 gradient and
divided by its loss scale, its buffer delta decoded, and both checked for NaN and Inf.

The job's lock is held only for the decision and the update, so this is where the per-byte work
of a push happens: other workers' pushes and pulls go on meanwhile, and a bad payload never
reaches the shared state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from pscluster.compression import Compressor
from pscluster.server.buffers import (
    Pool,
    all_finite,
    is_float32,
    receive_compressed,
    receive_gradient,
)
from pscluster.server.domain import JobConfig, PushHeader
from pscluster.server.job_buffers import decode_delta
from pscluster.server.tables.rows import RowGrads, SplitStream, decode_rows, rows_bytes
from pscluster.transport import wire

# Receive buffers a job keeps between pushes (each the size of its range).
RECEIVE_BUFFERS = 4


@dataclass
class Received:
    """A push's decoded contents; :meth:`release` once the decision is made."""

    grad: torch.Tensor  # unscaled; lent: only good until release
    buffer_delta: torch.Tensor | None  # float64, None: no change to the buffers
    # The payload exactly as it came off the wire, for the journal (None: not kept).
    payload: bytearray | None
    nonfinite: str  # "" or what holds a NaN or Inf ("the gradient", "the buffer_delta")
    rows: RowGrads | None = None  # the push's row gradients (owned), None: it has none
    _pool: Pool[bytearray] | None = None
    _buffer: bytearray | None = None

    def release(self) -> None:
        if self._pool is not None and self._buffer is not None:
            self._pool.give(self._buffer)
            self._buffer = None


class PushIntake:
    """One job's receive buffers and codec. Thread-safe: pushes are received concurrently."""

    def __init__(self, config: JobConfig, codec: Compressor) -> None:
        self._config = config
        self._codec = codec
        # One idle buffer per push that may be received at once (a few workers), not one: a
        # second push arriving during the first would otherwise get fresh memory every time.
        self._buffers = Pool(lambda: bytearray(config.length * 4), keep=RECEIVE_BUFFERS)

    def receive(
        self, header: PushHeader, data: Iterable[bytes | memoryview], *, keep_payload: bool
    ) -> Received:
        """``header`` must have passed :func:`~pscluster.server.push_checks.check_header`;
        InvalidArgument for a payload that does not match it."""
        raw = header.codec == "none"
        buffer = self._buffers.take() if raw and is_float32(header.dtype) else None
        split = None
        if header.rows:  # the row blocks follow the dense payload in the same stream
            dense = header.length * wire.itemsize(header.dtype) if raw else header.payload_bytes
            split = SplitStream(data, dense)
            data = split.head()
        # Float32 is logged from the receive buffer itself; other payloads as chunks go by.
        payload = buffer if keep_payload else None
        if keep_payload and buffer is None:
            payload = bytearray()
            data = _tee(data, payload)
        try:
            grad = self._decode(header, data, buffer)
            rows = self._rows(header, split)
            if keep_payload and rows is not None and payload is not None:
                payload = payload + rows[1]  # the journal logs the push as it came
            grad = _unscale(grad, header.scale, shares_payload=keep_payload and buffer is not None)
            delta = decode_delta(header.buffer_delta, self._config.buffer_length)
        except BaseException:
            if buffer is not None:
                self._buffers.give(buffer)
            raise
        grads = None if rows is None else rows[0]
        if grads is not None and header.scale != 1:
            grads.scale_(1 / header.scale)
        nonfinite = ""
        if not all_finite(grad):
            nonfinite = "the gradient" if header.scale == 1 else "the unscaled gradient"
        elif delta is not None and not all_finite(delta):
            nonfinite = "the buffer_delta"
        elif grads is not None and not grads.all_finite():
            nonfinite = "the row gradients"
        return Received(grad, delta, payload, nonfinite, grads, self._buffers, buffer)

    def _rows(
        self, header: PushHeader, split: SplitStream | None
    ) -> tuple[RowGrads, bytearray] | None:
        """The push's row gradients and their bytes as received (None: it has none)."""
        if split is None:
            return None
        dims = [table.dim for table in self._config.tables]
        data = split.rest(rows_bytes(header.rows, dims))
        return decode_rows(header.rows, dims, data), data

    def _decode(
        self, header: PushHeader, data: Iterable[bytes | memoryview], buffer: bytearray | None
    ) -> torch.Tensor:
        if header.codec != "none":
            return receive_compressed(self._codec, header.length, header.payload_bytes, data)
        return receive_gradient(header.length, header.dtype, data, buffer, header.bucket_bytes)


def _unscale(grad: torch.Tensor, scale: float, *, shares_payload: bool) -> torch.Tensor:
    """Undo fp16 loss scaling before anything else sees the gradient. A float32 payload that
    the journal will log is the gradient's own memory: it is divided into new memory then (an
    allocation per push, only for durable jobs that scale), else in place."""
    if scale == 1:
        return grad
    if shares_payload:
        return grad / scale
    return grad.div_(scale)


def _tee(chunks: Iterable[bytes | memoryview], into: bytearray) -> Iterator[bytes | memoryview]:
    """``chunks`` unchanged, each also appended to ``into``."""
    for chunk in chunks:
        into += chunk
        yield chunk
