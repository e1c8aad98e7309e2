"""A shard reading the ranges it adopts from the shards that hold them.

A move sends only what changes shard, and an adopting shard reads each such range itself
from its old shard (an ExportJob of the range) instead of the coordinator reading it and
relaying it on: every byte crosses the network once, and the coordinator, which does not look
at the bytes, is not on the path. The rows of the job's embedding tables come the same way,
each old shard picking out those the adopting shard owns now. The shard calls its peers as the
coordinator does, with the cluster's credentials from the same settings (the admin token,
``PSC_TLS_*``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import torch

from pscluster.config import Settings
from pscluster.errors import FailedPrecondition
from pscluster.server.adopted_rows import FetchRows
from pscluster.server.adopted_state import Fetch
from pscluster.server.durability.checkpoint import CheckpointError, state_from_bytes
from pscluster.shard_client import ShardClient, ShardError


class PeerRanges:
    """Opens a client to the other shards on first use (most shards never adopt a range)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._client: ShardClient | None = None

    def reader(self, job_id: str, generation: int) -> Fetch:
        """Reads job ``job_id``'s ranges as its old shards held them at ``generation``."""

        def fetch(
            source: str, start: int, length: int, dense: list[tuple[str, int]]
        ) -> Iterator[memoryview]:
            span = [(start, length)]
            relay = self._peers().export_ranges(source, job_id, generation, span, dense)
            try:
                yield from relay.payloads()
            except (grpc.RpcError, ShardError) as e:
                error = relay.error or e
                raise FailedPrecondition(
                    f"job {job_id}: reading its values [{start}, {start + length}) from shard "
                    f"{source} failed: {error}"
                ) from None

        return fetch

    def rows_reader(self, job_id: str, generation: int) -> FetchRows:
        """Reads the rows of job ``job_id``'s tables a new shard owns, as its old shards
        held them at ``generation``."""

        def fetch(source: str, shards: int, index: int) -> dict[str, torch.Tensor]:
            try:
                image = self._peers().export_rows(source, job_id, generation, shards, index)
                return state_from_bytes(image)[0]
            except (ShardError, CheckpointError) as e:
                raise FailedPrecondition(
                    f"job {job_id}: reading the table rows of new shard {index} of {shards} "
                    f"from shard {source} failed: {e}"
                ) from None

        return fetch

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _peers(self) -> ShardClient:
        with self._lock:
            if self._client is None:
                self._client = ShardClient(self._settings, parallel=4)
            return self._client
