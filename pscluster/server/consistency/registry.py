"""Consistency modes by name: the one place a job's ``mode`` string becomes a policy."""

from __future__ import annotations

from collections.abc import Callable

from pscluster.server.consistency.async_ import AsyncPolicy
from pscluster.server.consistency.base import ConsistencyPolicy
from pscluster.server.consistency.ssp import SSPPolicy
from pscluster.server.consistency.sync import SyncPolicy
from pscluster.transport.errors import InvalidArgument

# mode -> factory(staleness). A new mode adds its file and one line here.
_FACTORIES: dict[str, Callable[[int], ConsistencyPolicy]] = {
    "async": lambda staleness: AsyncPolicy(),
    "sync": lambda staleness: SyncPolicy(),
    "ssp": lambda staleness: SSPPolicy(staleness=staleness),
}
MODES = tuple(_FACTORIES)


def make_policy(mode: str, staleness: int = 0) -> ConsistencyPolicy:
    """A fresh policy for one job; InvalidArgument on an unknown mode."""
    factory = _FACTORIES.get(mode)
    if factory is None:
        raise InvalidArgument(f"mode {mode!r} is not supported; expected one of {list(MODES)}")
    return factory(staleness)
