"""Task kinds, one module each; :data:`KINDS` maps a lease's kind to its behaviour."""

from __future__ import annotations

from pscluster.coordinator.core.kinds.base import JobState, TaskKind, TaskResult
from pscluster.coordinator.core.kinds.evaluate import Evaluate
from pscluster.coordinator.core.kinds.predict import Predict
from pscluster.coordinator.core.kinds.train import Train
from pscluster.coordinator.lease_values import Lease

KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (Train(), Evaluate(), Predict())}


def kind_of(lease: Lease) -> TaskKind:
    return KINDS[lease.kind]


__all__ = [
    "KINDS",
    "Evaluate",
    "JobState",
    "Predict",
    "TaskKind",
    "TaskResult",
    "Train",
    "kind_of",
]
