"""A shard that adopts a moving range reads it from the shard holding it with the cluster's
own credentials: under mutual TLS with an admin token, the read works for shards that share
them, and a shard whose token is not the cluster's is refused by its peer (the move fails,
nothing changes)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import torch

from pscluster.client.cli_certs import CertPaths
from pscluster.config import Settings
from pscluster.server.durability.checkpoint import state_from_bytes, state_to_bytes
from pscluster.server.main import ShardServer
from pscluster.server.main import serve as serve_shard
from pscluster.shard_client import JobShards, ShardClient, ShardError, ShardRange
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.security.conftest import RPC_TIMEOUT
from tests.server.relayout import HOLD, RELEASE, make_job

N, HALF = 2000, 1000


def _secure(certs: CertPaths, token: str) -> Settings:
    return Settings(
        host="127.0.0.1",
        grace_seconds=0.0,
        rpc_timeout_seconds=RPC_TIMEOUT,
        admin_token=token,
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_ca=certs.ca,
        tls_client_auth=True,
    )


@pytest.fixture
def servers() -> Iterator[list[ShardServer]]:
    started: list[ShardServer] = []
    yield started
    for server in started:
        server.stop(0)


def _half(skeleton: bytes) -> bytes:
    tensors, meta = state_from_bytes(skeleton)
    config = {**meta["config"], "start": HALF, "length": HALF, "layout_generation": 1}
    return state_to_bytes(tensors, {**meta, "config": config})


def _split_second_half(
    shards: ShardClient,
    first: str,
    second: str,
    values: torch.Tensor,
    adopter: ShardClient | None = None,
) -> ps_pb2.AdoptJobReply:
    """The job on ``first`` (made by ``shards``); ``second`` adopts its second half, read
    from ``first``, called by ``adopter`` (default: ``shards``)."""
    make_job(shards, first, "j", values)
    shards.hold_job(first, "j", HOLD)
    skeleton = shards.export_job(first, "j", skeleton=True)
    sourced = ps_pb2.DenseSegment(start=HALF, length=HALF, source=first)
    return (adopter or shards).adopt_job(
        second, "j", 1, _half(skeleton), [sourced], source_generation=0
    )


def test_a_shard_reads_a_moving_range_from_its_peer_under_mutual_tls_and_tokens(
    certs: CertPaths, admin_token: str, servers: list[ShardServer]
) -> None:
    # Prepare: two shards with the cluster's certificate and token; a caller with the same
    settings = _secure(certs, admin_token)
    servers.extend(serve_shard(settings, port=0) for _ in range(2))
    first, second = (f"127.0.0.1:{s.port}" for s in servers)
    values = torch.randn(N, generator=torch.Generator().manual_seed(3))
    shards = ShardClient(settings)

    # Execute
    _split_second_half(shards, first, second, values)

    # Assert: the second shard serves the second half's values (a view of the whole vector
    # whose other half no shard here fills)
    shards.hold_job(second, "j", RELEASE, 1)
    view = JobShards(shards, "j", [ShardRange(second, HALF, HALF)], 1)
    assert torch.equal(view.pull("w1", None, 5.0).values[HALF:], values[HALF:])
    shards.close()


def test_a_shard_without_the_clusters_token_is_refused_by_its_peer(
    certs: CertPaths, admin_token: str, servers: list[ShardServer]
) -> None:
    # Prepare: the second shard was given another token (its callers use that one too)
    servers.append(serve_shard(_secure(certs, admin_token), port=0))
    servers.append(serve_shard(_secure(certs, "x" * 32), port=0))
    first, second = (f"127.0.0.1:{s.port}" for s in servers)
    values = torch.randn(N, generator=torch.Generator().manual_seed(3))
    shards = ShardClient(_secure(certs, admin_token))
    second_caller = ShardClient(_secure(certs, "x" * 32))

    # Execute
    with pytest.raises(ShardError) as refused:
        _split_second_half(shards, first, second, values, adopter=second_caller)

    # Assert: the failure names the peer and its refusal; the job stays held on the first
    assert refused.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert f"from shard {first}" in str(refused.value)
    assert "UNAUTHENTICATED" in str(refused.value) or "token" in str(refused.value)
    assert shards.hold_job(first, "j", HOLD).layout_generation == 0
    shards.close()
    second_caller.close()
