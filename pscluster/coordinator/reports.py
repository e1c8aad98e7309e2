"""What workers report about a lease in progress, and the checks it must pass before any of
it is recorded (an evaluation's result is checked by its task kind, core/kinds/evaluate.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pscluster.coordinator.timeline import check_phases
from pscluster.errors import InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2

# More batches than this in one report is not a real report.
_MAX_REPORTED_BATCHES = 1 << 20
_MAX_REASON = 64  # characters in a dropped-batch reason


@dataclass(frozen=True)
class StepReport:
    loss: float
    samples: int
    epoch: int
    unix_time: float  # 0: now


def check_progress(p: co_pb2.LeaseProgress) -> dict[str, int]:
    """A lease's progress report must be plausible before any of it is recorded; returns the
    batches it says were dropped, by reason."""
    for name in ("busy_seconds", "step_seconds"):
        value = getattr(p, name)
        if not (math.isfinite(value) and value >= 0):
            raise InvalidArgument(f"lease.{name}={value} is invalid; expected seconds >= 0")
    if p.batches > _MAX_REPORTED_BATCHES:
        raise InvalidArgument(
            f"lease.batches={p.batches} is implausible; report the batches timed since the "
            "last report"
        )
    check_phases(p)
    return dropped_batches(p)


def dropped_batches(progress: co_pb2.LeaseProgress) -> dict[str, int]:
    """The batches a report says were dropped, by reason (checked: the reasons are names)."""
    out = {}
    for reason, n in progress.dropped.items():
        if not reason or len(reason) > _MAX_REASON or not reason.replace("_", "").isalnum():
            raise InvalidArgument(
                f"lease.dropped has the reason {reason[:_MAX_REASON]!r}; expected a short name "
                "such as 'stale', 'late' or 'nonfinite'"
            )
        if n:
            out[reason] = int(n)
    return out
