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
    # Every error the table names is exported, and every exported one has a status: its own,
    # or its base's (LayoutMoved is a FailedPrecondition that says more in its message).
    exported = [getattr(errors, name) for name in errors.__all__]
    kinds = [e for e in exported if isinstance(e, type) and e is not errors.PSError]
    assert set(STATUS) <= set(kinds)
    assert set(kinds) - set(STATUS) == {errors.LayoutMoved}
    assert status_of(errors.InvalidArgument("x")) == grpc.StatusCode.INVALID_ARGUMENT
    moved = errors.LayoutMoved("j-1", 2, "moved to layout generation 2")
    assert status_of(moved) == grpc.StatusCode.FAILED_PRECONDITION
    assert str(moved).startswith(errors.LAYOUT_MOVED)


def test_a_subclass_maps_as_its_base() -> None:
    class ShardDown(errors.Unavailable):
        pass

    assert status_of(ShardDown("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_of(errors.PSError("x")) == grpc.StatusCode.INTERNAL
