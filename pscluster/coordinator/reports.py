"""What workers report (progress of a lease, an evaluation) and the checks it must pass
before any of it is recorded."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pscluster.coordinator import store as st
from pscluster.errors import InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2

# More batches than this in one report is not a real report.
_MAX_REPORTED_BATCHES = 1 << 20


def check_progress(p: co_pb2.LeaseProgress) -> None:
    """A lease's progress report must be plausible before any of it is recorded."""
    for name in ("busy_seconds", "step_seconds"):
        value = getattr(p, name)
        if not (math.isfinite(value) and value >= 0):
            raise InvalidArgument(f"lease.{name}={value} is invalid; expected seconds >= 0")
    if p.batches > _MAX_REPORTED_BATCHES:
        raise InvalidArgument(
            f"lease.batches={p.batches} is implausible; report the batches timed since the "
            "last report"
        )


@dataclass(frozen=True)
class Evaluated:
    """What an evaluation lease reports: every measure, and the shard versions measured."""

    metrics: dict[str, float]
    versions: tuple[int, ...] = ()

    def record(self, epoch: int, unix_time: float, samples: int) -> st.EpochRecord:
        m = self.metrics
        return st.EpochRecord(
            epoch,
            m.get("accuracy", -1.0),
            m["loss"],
            unix_time,
            samples,
            dict(m),
            self.versions,
        )

    def divergence(self, epoch: int) -> str:
        """Why the job cannot go on (its model's results are not finite), or ""."""
        bad = {k: v for k, v in self.metrics.items() if not math.isfinite(v)}
        if not bad:
            return ""
        return (
            f"the model diverged: its test {', '.join(f'{k} is {v}' for k, v in bad.items())} "
            f"after epoch {epoch}; lower the learning rate (or clip gradients in the model)"
        )


_RANGES = {"accuracy": (0.0, 1.0), "mse": (0.0, math.inf), "mae": (0.0, math.inf)}


def check_evaluation(evaluation: Evaluated | None, job: st.JobRecord) -> Evaluated:
    """An evaluation report must carry the loss, only known measures in their ranges, and a
    version per shard; InvalidArgument before anything is recorded."""
    if evaluation is None or "loss" not in evaluation.metrics:
        raise InvalidArgument("an evaluation must report metrics['loss']")
    for name, value in evaluation.metrics.items():
        if name != "loss" and name not in _RANGES:
            raise InvalidArgument(
                f"metric {name!r} is unknown; expected loss, {', '.join(_RANGES)}"
            )
        low, high = _RANGES.get(name, (-math.inf, math.inf))
        if math.isfinite(value) and not low <= value <= high:
            raise InvalidArgument(f"metrics[{name!r}]={value} is out of range [{low}, {high}]")
    if evaluation.versions and len(evaluation.versions) != len(job.shards):
        raise InvalidArgument(
            f"versions has {len(evaluation.versions)} entries; the job has {len(job.shards)} shards"
        )
    return evaluation


@dataclass(frozen=True)
class StepReport:
    loss: float
    samples: int
    epoch: int
    unix_time: float  # 0: now
