"""What a lease is, what it is leased for, and what completing one changed: plain values.

Apart from :mod:`pscluster.coordinator.leases` (the book that hands leases out and takes them
back) because most readers need only these: the scheduling core's lease kinds, the straggler
relief, the store's restore, telemetry and the queries read leases without touching the book.
"""

from __future__ import annotations

from dataclasses import dataclass

TRAIN = "train"
EVAL = "eval"
PREDICT = "predict"
# What a job's units are leased as: training, or scoring a predict job's inputs (which owes
# no evaluation: its last unit done is the job done).
UNIT_KINDS = (TRAIN, PREDICT)


@dataclass(frozen=True)
class Lease:
    lease_id: str
    job_id: str
    worker_id: str
    kind: str  # TRAIN | EVAL | PREDICT
    epoch: int
    partition: int  # -1 for an evaluation
    partitions: int
    first_batch: int = 0  # train: the batches [first_batch, end_batch) of the partition
    end_batch: int = 0  # 0: to the end of the partition (its size is not known)


@dataclass(frozen=True)
class Outcome:
    """What a completed lease changed: the epoch it closed, or the end of the job."""

    lease: Lease
    epoch_closed: int | None = None  # a unit: every partition of this epoch is now done
    # eval: this was the last epoch's evaluation; predict: the last partition was scored.
    # Either way the job is finished.
    final: bool = False
