"""Consistency modes by name: the one place a job's ``mode`` string becomes a policy.

:func:`validate_consistency` holds the rules; the coordinator calls it on a job spec, so a spec
it accepts is one every shard accepts. :data:`MODES` is the one list of modes, and
:func:`mode_traits` what a mode means to code outside this package: the coordinator and the
worker ask it (does a step wait for every member? is there a clock bound?) rather than compare
mode names, so a new mode is its file and one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from pscluster.errors import InvalidArgument
from pscluster.server.consistency.async_ import AsyncPolicy
from pscluster.server.consistency.backup_sync import BackupSyncPolicy
from pscluster.server.consistency.base import ConsistencyPolicy, Traits
from pscluster.server.consistency.ssp import SSPPolicy
from pscluster.server.consistency.sync import SyncPolicy

PolicyClass = type[AsyncPolicy] | type[SyncPolicy] | type[SSPPolicy]


def _sync(backup_workers: int) -> PolicyClass:
    return BackupSyncPolicy if backup_workers else SyncPolicy


# mode -> the policy class for a number of backup workers. A new mode adds one line here.
_CLASSES: dict[str, Callable[[int], PolicyClass]] = {
    "async": lambda backup_workers: AsyncPolicy,
    "sync": _sync,
    "ssp": lambda backup_workers: SSPPolicy,
}
MODES = tuple(_CLASSES)
# The most local SGD steps a worker may take between a pull and a push: windows longer than
# this are not local SGD any more but separate training runs.
MAX_LOCAL_STEPS = 1024


def validate_consistency(
    mode: str, staleness: int = 0, backup_workers: int = 0, local_steps: int = 0
) -> None:
    """InvalidArgument, saying what to change, unless the four fit together.

    ``staleness`` is the ssp bound (ignored by the other modes); ``backup_workers`` is only
    for modes that take them, where a step closes without the last ``backup_workers`` pushes;
    ``local_steps`` (any mode) is how many steps a worker takes between a pull and a push.
    """
    if not 0 <= local_steps <= MAX_LOCAL_STEPS:
        raise InvalidArgument(
            f"local_steps={local_steps} is out of range; expected 0..{MAX_LOCAL_STEPS} "
            "(0 or 1 for every step)"
        )
    if mode not in _CLASSES:
        raise InvalidArgument(f"mode {mode!r} is not supported; expected one of {list(MODES)}")
    if staleness < 0:
        raise InvalidArgument(f"staleness (the ssp bound) must be >= 0, got {staleness}")
    if backup_workers < 0:
        raise InvalidArgument(f"backup_workers must be >= 0, got {backup_workers}")
    if backup_workers > 0 and not _CLASSES[mode](0).traits.takes_backup_workers:
        takers = " or ".join(repr(m) for m in MODES if _CLASSES[m](0).traits.takes_backup_workers)
        raise InvalidArgument(
            f"backup_workers={backup_workers} needs mode {takers} but the mode is {mode!r}; "
            f"set backup_workers to 0 or use mode {takers}"
        )


def mode_traits(mode: str, backup_workers: int = 0) -> Traits:
    """What ``mode`` (with ``backup_workers``) means outside the shards; InvalidArgument as
    :func:`validate_consistency` says."""
    validate_consistency(mode, 0, backup_workers)
    return _CLASSES[mode](backup_workers).traits


def clock_bound(mode: str) -> bool:
    """Whether ``mode`` has a clock bound (what a display shows clock staleness for); False
    for a mode this version does not know (a job shown by a newer coordinator)."""
    return mode in _CLASSES and _CLASSES[mode](0).traits.clock_bound


def make_policy(mode: str, staleness: int = 0, backup_workers: int = 0) -> ConsistencyPolicy:
    """A fresh policy for one job; InvalidArgument as :func:`validate_consistency` says."""
    validate_consistency(mode, staleness, backup_workers)
    return _CLASSES[mode](backup_workers).create(staleness=staleness, backup_workers=backup_workers)
