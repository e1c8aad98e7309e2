"""Which samples a lease covers, and in which batches: deterministic from the job's seed.

The training set is permuted once by the seed and cut into contiguous, balanced partitions;
each (epoch, partition) shuffles its own samples with a seed derived from both. So any process
(a worker, a test replaying single-process training) derives the same batches from the same
numbers, and a re-leased partition is trained on exactly the batches it would have been.
"""

from __future__ import annotations

import numpy as np

from pscluster.model.partition import BalancedRanges


def partition_indices(n: int, partitions: int, partition: int, seed: int) -> np.ndarray:
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} out of range 0..{partitions - 1}")
    order = np.random.default_rng([seed, 0]).permutation(n)
    r = BalancedRanges().split(n, partitions)[partition]
    return order[r.start : r.end]


def batches(
    n: int, partitions: int, partition: int, epoch: int, batch_size: int, seed: int
) -> list[np.ndarray]:
    """Index batches for one lease; the last batch may be smaller, but never a lone sample:
    that one joins the batch before it (BatchNorm cannot train on one sample, and a lone
    sample's gradient would count as much as a whole batch's)."""
    idx = partition_indices(n, partitions, partition, seed)
    rng = np.random.default_rng([seed, 1, epoch, partition])
    idx = idx[rng.permutation(len(idx))]
    return [idx[start:end] for start, end in _bounds(len(idx), batch_size)]


def _bounds(length: int, batch_size: int) -> list[tuple[int, int]]:
    starts = list(range(0, length, batch_size))
    if len(starts) > 1 and length - starts[-1] == 1:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else length) for i, s in enumerate(starts)]


def batch_counts(n: int, partitions: int, batch_size: int) -> list[int]:
    """Batches in each partition's plan (what :func:`batches` returns), without the indices.

    The coordinator sizes and splits train leases in batches, so it needs these counts but
    never the data.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [len(_bounds(r.length, batch_size)) for r in BalancedRanges().split(n, partitions)]
