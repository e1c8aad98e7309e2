"""Domain errors carry no transport; the servicers' one table gives their status codes."""

from __future__ import annotations

import subprocess
import sys

import grpc

from pscluster import errors
from pscluster.transport.errors import STATUS, status_of


def test_domain_errors_do_not_import_grpc() -> None:
    # Execute: a fresh interpreter, so nothing else has imported grpc already
    code = "import sys, pscluster.errors; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    # Assert
    assert out.stdout.strip() == "False"


def test_every_domain_error_has_a_status() -> None:
    domain = [getattr(errors, name) for name in errors.__all__ if name != "PSError"]
    assert set(domain) == set(STATUS)
    assert status_of(errors.InvalidArgument("x")) == grpc.StatusCode.INVALID_ARGUMENT


def test_a_subclass_maps_as_its_base() -> None:
    class ShardDown(errors.Unavailable):
        pass

    assert status_of(ShardDown("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_of(errors.PSError("x")) == grpc.StatusCode.INTERNAL
