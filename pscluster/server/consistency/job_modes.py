"""What a job spec's ``mode`` may say: one of the shards' modes, or ``"auto"``.

The shards know only their own modes (:data:`MODES`). ``"auto"`` is the coordinator's: it
picks one of them for the job and revises it while the job runs (see
:mod:`pscluster.coordinator.auto`), so an auto job's shards always hold a plain mode. These
rules sit beside the shards' registry so that the SDK, the job file and the coordinator all
check a spec the same way, and a spec the coordinator accepts is one every shard accepts.
"""

from __future__ import annotations

from pscluster.errors import InvalidArgument
from pscluster.server.consistency.registry import MODES, validate_consistency

AUTO = "auto"
JOB_MODES = (*MODES, AUTO)
# Where an auto job's shards start: plain sync, in which no member may idle (the coordinator's
# lingering rules are set by it), until the coordinator's first decision at the job's first
# progress report (async, unless its loss later says staleness costs progress).
AUTO_START = ("sync", 0, 0)


def validate_job_consistency(
    mode: str, staleness: int = 0, backup_workers: int = 0, local_steps: int = 0
) -> None:
    """InvalidArgument, saying what to change, unless the four fit together in a job spec."""
    if mode != AUTO:
        if mode not in MODES:
            raise InvalidArgument(
                f"mode {mode!r} is not supported; expected one of {list(JOB_MODES)}"
            )
        validate_consistency(mode, staleness, backup_workers, local_steps)
        return
    if local_steps > 1:
        raise InvalidArgument(
            f"local_steps={local_steps} cannot be given with mode 'auto', which decides on "
            "local steps itself; remove local_steps, or use mode 'sync' or 'async' to fix them"
        )
    if staleness:
        raise InvalidArgument(
            f"staleness={staleness} cannot be given with mode 'auto', which sets the ssp "
            "bound itself; remove staleness, or use mode 'ssp' to fix the bound"
        )
    if backup_workers:
        raise InvalidArgument(
            f"backup_workers={backup_workers} cannot be given with mode 'auto', which decides "
            "on backup workers itself; remove backup_workers, or use mode 'sync' to fix them"
        )


def starting_consistency(mode: str, staleness: int, backup_workers: int) -> tuple[str, int, int]:
    """(mode, staleness, backup_workers) the job's shards start with: the spec's own, or
    :data:`AUTO_START` for an auto job."""
    if mode == AUTO:
        return AUTO_START
    return mode, staleness, backup_workers
