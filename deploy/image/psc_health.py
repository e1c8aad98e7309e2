#!/usr/bin/env python3
"""Container health probe: one standard gRPC health check (grpc.health.v1) against a server.

    psc-health 127.0.0.1:50051 [--service pscluster.v1.Coordinator] [--timeout 3]

Exit 0 when the server answers SERVING, 1 otherwise, with one line on stderr saying why.
Every pscluster server already serves grpc.health.v1 (pscluster.transport.server), so the
image needs no grpcurl download and compose, Kubernetes and a person debugging all ask the
same question the same way. The overall status (service "") is what the server sets SERVING
only once it is ready (a shard after warming up its optimizers). With TLS on, the probe dials
with the container's own PSC_TLS_* files (health checks need no token).
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pscluster.client.processes import TLS_FIELDS, settings_from_env
from pscluster.transport import tls


def check(address: str, service: str, timeout: float) -> tuple[bool, str]:
    """(healthy, reason): one Check call with a deadline; never raises for an RPC failure."""
    try:
        settings = settings_from_env(os.environ, TLS_FIELDS)
        channel = tls.dial(address, settings)
    except ValueError as e:  # a TLS file missing or unreadable
        return False, f"{address}: cannot dial: {e}"
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            name = code.name if code is not None else "UNKNOWN"
            details = e.details() if isinstance(e, grpc.Call) else str(e)
            return False, f"{address}: health check failed with {name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return False, f"{address}: service {service!r} is {status}, expected SERVING"
    return True, f"{address}: service {service!r} is SERVING"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="psc-health", description="Exit 0 if a gRPC server reports SERVING (grpc.health.v1)."
    )
    parser.add_argument("address", help="host:port of the server, e.g. 127.0.0.1:50051")
    parser.add_argument("--service", default="", help="service name to ask for ('' = overall)")
    parser.add_argument("--timeout", type=float, default=3.0, help="deadline in seconds")
    parser.add_argument("--quiet", action="store_true", help="print nothing when healthy")
    args = parser.parse_args(argv)
    host, sep, port = args.address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        parser.error(f"address {args.address!r} is not host:port with a port in 1..65535")
    if args.timeout <= 0:
        parser.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    healthy, reason = check(args.address, args.service, args.timeout)
    if not healthy:
        print(reason, file=sys.stderr)
        return 1
    if not args.quiet:
        print(reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
