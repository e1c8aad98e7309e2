"""Consistency modes by name: the one place a job's ``mode`` string becomes a policy.

:func:`validate_consistency` holds the rules; the coordinator calls it on a job spec, so a spec
it accepts is one every shard accepts.
"""

from __future__ import annotations

from collections.abc import Callable

from pscluster.errors import InvalidArgument
from pscluster.server.consistency.async_ import AsyncPolicy
from pscluster.server.consistency.backup_sync import BackupSyncPolicy
from pscluster.server.consistency.base import ConsistencyPolicy
from pscluster.server.consistency.ssp import SSPPolicy
from pscluster.server.consistency.sync import SyncPolicy


def _sync(staleness: int, backup_workers: int) -> ConsistencyPolicy:
    if backup_workers:
        return BackupSyncPolicy(backup_workers=backup_workers)
    return SyncPolicy()


# mode -> factory(staleness, backup_workers). A new mode adds its file and one line here.
_FACTORIES: dict[str, Callable[[int, int], ConsistencyPolicy]] = {
    "async": lambda staleness, backup_workers: AsyncPolicy(),
    "sync": _sync,
    "ssp": lambda staleness, backup_workers: SSPPolicy(staleness=staleness),
}
MODES = tuple(_FACTORIES)


def validate_consistency(mode: str, staleness: int = 0, backup_workers: int = 0) -> None:
    """InvalidArgument, saying what to change, unless the three fit together.

    ``staleness`` is the ssp bound (ignored by the other modes); ``backup_workers`` is only
    for sync, where a step closes without the last ``backup_workers`` pushes.
    """
    if mode not in _FACTORIES:
        raise InvalidArgument(f"mode {mode!r} is not supported; expected one of {list(MODES)}")
    if staleness < 0:
        raise InvalidArgument(f"staleness (the ssp bound) must be >= 0, got {staleness}")
    if backup_workers < 0:
        raise InvalidArgument(f"backup_workers must be >= 0, got {backup_workers}")
    if backup_workers > 0 and mode != "sync":
        raise InvalidArgument(
            f"backup_workers={backup_workers} needs mode 'sync' but the mode is {mode!r}; "
            "set backup_workers to 0 or use mode 'sync'"
        )


def make_policy(mode: str, staleness: int = 0, backup_workers: int = 0) -> ConsistencyPolicy:
    """A fresh policy for one job; InvalidArgument as :func:`validate_consistency` says."""
    validate_consistency(mode, staleness, backup_workers)
    return _FACTORIES[mode](staleness, backup_workers)
