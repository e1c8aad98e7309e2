"""TLS and mutual TLS on real sockets: who can connect, and clear errors for bad files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pscluster.client.cli_certs import CertPaths
from pscluster.config import Settings
from pscluster.server.main import serve as serve_shard
from pscluster.transport.tls import TLSConfigError
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from tests.security.conftest import RPC_TIMEOUT, Cluster, tiny_chunks
from tests.support import rpc_failure

# A failed handshake is UNAVAILABLE after the connect attempt; no need to wait long for it.
FAIL_TIMEOUT = 5.0


def health(channel: grpc.Channel, timeout: float = RPC_TIMEOUT) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=timeout
    )
    return int(reply.status)


def tls_server(certs: CertPaths, mutual: bool) -> dict[str, object]:
    fields: dict[str, object] = {"tls_cert": certs.server_cert, "tls_key": certs.server_key}
    if mutual:
        fields.update(tls_ca=certs.ca, tls_client_auth=True)
    else:
        # The coordinator dials its shard over TLS too: it needs the CA to verify it.
        fields.update(tls_ca=certs.ca)
    return fields


def test_tls_with_tokens_submits_end_to_end(
    make_cluster: Callable[..., Cluster], certs: CertPaths, admin_token: str
) -> None:
    # Prepare: TLS everywhere, and the coordinator reaches its shard over TLS with the token.
    cluster = make_cluster(admin_token=admin_token, **tls_server(certs, mutual=False))
    stub = co_grpc.CoordinatorStub(
        cluster.channel(cluster.address, tls_ca=certs.ca, token=admin_token)
    )

    # Execute
    info = stub.SubmitJob(iter(tiny_chunks()), timeout=RPC_TIMEOUT)
    status = stub.ClusterStatus(co_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT)

    # Assert
    assert info.state in ("running", "pending") and info.token
    assert [s.healthy for s in status.shards] == [True], status.shards


def test_plain_text_client_cannot_talk_to_a_tls_server(
    make_cluster: Callable[..., Cluster], certs: CertPaths
) -> None:
    cluster = make_cluster(**tls_server(certs, mutual=False))

    code, _ = rpc_failure(lambda: health(cluster.channel(cluster.address), FAIL_TIMEOUT))
    verified = health(cluster.channel(cluster.address, tls_ca=certs.ca))

    assert code == grpc.StatusCode.UNAVAILABLE
    assert verified == health_pb2.HealthCheckResponse.SERVING


def test_a_client_that_does_not_trust_the_ca_cannot_connect(
    make_cluster: Callable[..., Cluster], certs: CertPaths, tmp_path: Path
) -> None:
    from pscluster.client.cli_certs import write_certs

    cluster = make_cluster(**tls_server(certs, mutual=False))
    stranger = write_certs(tmp_path / "other")

    code, _ = rpc_failure(
        lambda: health(cluster.channel(cluster.address, tls_ca=stranger.ca), FAIL_TIMEOUT)
    )

    assert code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate(
    make_cluster: Callable[..., Cluster], certs: CertPaths
) -> None:
    # Prepare: the coordinator presents its server certificate (valid for clients too) to
    # the shard, so the cluster itself comes up under mutual TLS.
    cluster = make_cluster(**tls_server(certs, mutual=True))
    client_cert = {"tls_cert": certs.client_cert, "tls_key": certs.client_key}

    # Execute
    code, _ = rpc_failure(
        lambda: health(cluster.channel(cluster.address, tls_ca=certs.ca), FAIL_TIMEOUT)
    )
    with_cert = co_grpc.CoordinatorStub(
        cluster.channel(cluster.address, tls_ca=certs.ca, **client_cert)
    )
    status = with_cert.ClusterStatus(co_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT)

    # Assert
    assert code == grpc.StatusCode.UNAVAILABLE
    assert [s.healthy for s in status.shards] == [True], "the coordinator reached its shard"


def test_server_name_override_verifies_against_another_name(
    tmp_path: Path, make_cluster: Callable[..., Cluster]
) -> None:
    from pscluster.client.cli_certs import write_certs

    named = write_certs(tmp_path / "named", hosts=["pscluster"])
    cluster = make_cluster(
        tls_cert=named.server_cert,
        tls_key=named.server_key,
        tls_ca=named.ca,
        tls_server_name="pscluster",
    )

    without = rpc_failure(
        lambda: health(cluster.channel(cluster.address, tls_ca=named.ca), FAIL_TIMEOUT)
    )
    status = health(cluster.channel(cluster.address, tls_ca=named.ca, tls_server_name="pscluster"))

    assert without[0] == grpc.StatusCode.UNAVAILABLE, "127.0.0.1 is not in the certificate"
    assert status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"tls_cert": "missing.pem", "tls_key": "missing-key.pem"},
            "PSC_TLS_KEY=missing-key.pem: cannot read",
        ),
        ({"tls_cert": "server.pem"}, "PSC_TLS_KEY is not set"),
        ({"tls_client_auth": True}, "PSC_TLS_CERT and PSC_TLS_KEY are not set"),
        (
            {"tls_cert": "server.pem", "tls_key": "server-key.pem", "tls_client_auth": True},
            "PSC_TLS_CA is not set",
        ),
        ({"tls_cert": "not-pem.txt", "tls_key": "server-key.pem"}, "is not PEM"),
    ],
)
def test_bad_tls_settings_stop_a_server_at_start_with_a_clear_error(
    certs: CertPaths, fields: dict[str, object], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = certs.ca.parent
    (folder / "not-pem.txt").write_text("hello")
    monkeypatch.chdir(folder)

    with pytest.raises(TLSConfigError, match=message):
        serve_shard(Settings(host="127.0.0.1", **fields), port=0)  # type: ignore[arg-type]


def test_certs_command_writes_keys_private(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pscluster.client.cli import app

    result = CliRunner().invoke(
        app, ["certs", str(tmp_path / "c"), "--host", "node-1", "--host", "10.0.0.7"]
    )

    assert result.exit_code == 0, result.output
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "c").iterdir()}
    assert modes == {
        "ca.pem": 0o644,
        "ca-key.pem": 0o600,
        "server.pem": 0o644,
        "server-key.pem": 0o600,
        "client.pem": 0o644,
        "client-key.pem": 0o600,
    }
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["node-1"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
