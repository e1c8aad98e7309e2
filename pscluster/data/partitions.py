"""Which samples a lease covers, and in which batches: deterministic from the job's seed.

The training set is permuted once by the seed and cut into contiguous, balanced partitions;
each (epoch, partition) shuffles its own samples with a seed derived from both. So any process
(a worker, a test replaying single-process training) derives the same batches from the same
numbers, and a re-leased partition is trained on exactly the batches it would have been.

A source that reads rows in blocks (a Parquet row group) has them permuted and cut as whole
blocks, and each epoch shuffles a partition's blocks and the rows within each block: a batch
then touches one or two blocks, not every block of the partition (the block shuffle of
Petastorm and tf.data's file-level sharding). ``block`` = 1 is the per-row shuffle above.
"""

from __future__ import annotations

import numpy as np

from pscluster.model.partition import BalancedRanges


def _block_order(n: int, block: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0]).permutation(-(-n // block))


def row_order(n: int, seed: int) -> np.ndarray:
    """The seed's order of the rows: partition p is a contiguous range of it (block 1)."""
    return _block_order(n, 1, seed)


def _expand(blocks: np.ndarray, n: int, block: int) -> np.ndarray:
    """The rows of ``blocks``, block after block (the last block of the data may be short)."""
    if block == 1:
        return blocks
    parts = [np.arange(b * block, min((b + 1) * block, n)) for b in blocks.tolist()]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _check(n: int, partitions: int, partition: int, block: int) -> None:
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} out of range 0..{partitions - 1}")


def partition_indices(
    n: int, partitions: int, partition: int, seed: int, block: int = 1
) -> np.ndarray:
    _check(n, partitions, partition, block)
    order = _block_order(n, block, seed)
    r = BalancedRanges().split(len(order), partitions)[partition]
    return _expand(order[r.start : r.end], n, block)


def batches(
    n: int,
    partitions: int,
    partition: int,
    epoch: int,
    batch_size: int,
    seed: int,
    block: int = 1,
) -> list[np.ndarray]:
    """Index batches for one lease; the last batch may be smaller, but never a lone sample:
    that one joins the batch before it (BatchNorm cannot train on one sample, and a lone
    sample's gradient would count as much as a whole batch's)."""
    _check(n, partitions, partition, block)
    rng = np.random.default_rng([seed, 1, epoch, partition])
    if block == 1:
        idx = partition_indices(n, partitions, partition, seed)
        idx = idx[rng.permutation(len(idx))]
    else:
        order = _block_order(n, block, seed)
        r = BalancedRanges().split(len(order), partitions)[partition]
        mine = order[r.start : r.end]
        rows = [_expand(np.array([b]), n, block) for b in mine[rng.permutation(len(mine))]]
        idx = np.concatenate([r[rng.permutation(len(r))] for r in rows] or [np.zeros(0, int)])
    return [idx[start:end] for start, end in _bounds(len(idx), batch_size)]


def _bounds(length: int, batch_size: int) -> list[tuple[int, int]]:
    starts = list(range(0, length, batch_size))
    if len(starts) > 1 and length - starts[-1] == 1:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else length) for i, s in enumerate(starts)]


def partition_rows(n: int, partitions: int, seed: int = 0, block: int = 1) -> list[int]:
    """Rows in each partition (a short last block counts for what it holds)."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    order = _block_order(n, block, seed) if block > 1 else None
    sizes = []
    for r in BalancedRanges().split(-(-n // block), partitions):
        rows = r.length * block
        if order is not None and n % block and (len(order) - 1) in order[r.start : r.end]:
            rows -= block - n % block
        sizes.append(rows)
    return sizes


def batch_counts(
    n: int, partitions: int, batch_size: int, seed: int = 0, block: int = 1
) -> list[int]:
    """Batches in each partition's plan (what :func:`batches` returns), without the indices.

    The coordinator sizes and splits train leases in batches, so it needs these counts but
    never the data.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [len(_bounds(rows, batch_size)) for rows in partition_rows(n, partitions, seed, block)]
