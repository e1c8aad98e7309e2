"""The lease's loader: the batches of the plan, in order, in any number of loader processes,
with each sample's randomness seeded by (job seed, epoch, partition, index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pscluster.data.loading import LoaderSettings, SplitLoader, sample_seeds
from pscluster.data.partitions import batches


class Noisy:
    """A user's dataset: sample i is i plus noise drawn from the global generators."""

    def __len__(self) -> int:
        return 200

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        x = np.full(3, float(index)) + np.random.normal(size=3) + torch.randn(3).numpy()
        return x, index % 4


def _read(workers: int, epoch: int, partition: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = SplitLoader(Noisy(), True, 5, LoaderSettings(workers=workers, prefetch=2))
    try:
        plan = batches(200, 4, partition, epoch, 16, seed=5)
        read = list(loader.read(plan, (1, epoch, partition)))
    finally:
        loader.close()
    return [(x, y) for x, y in read if isinstance(x, torch.Tensor)]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_partition_reads_the_same_samples_in_any_number_of_loader_processes(
    workers: int,
) -> None:
    inline = _read(0, epoch=1, partition=2)
    forked = _read(workers, epoch=1, partition=2)
    assert len(inline) == len(forked) == 4
    for (x1, y1), (x2, y2) in zip(inline, forked, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert x1.dtype == torch.float32 and y1.dtype == torch.int64


def test_augmentation_differs_by_epoch_but_not_between_reads() -> None:
    epoch1, again, epoch2 = _read(0, 1, 0), _read(0, 1, 0), _read(0, 2, 0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch1, again, strict=True))
    # Epoch 2 orders the partition's samples differently: compare them sorted.
    x1 = torch.cat([x for x, _ in epoch1])
    x2 = torch.cat([x for x, _ in epoch2])
    assert not torch.equal(x1.sort(dim=0).values, x2.sort(dim=0).values)


def test_reading_in_the_training_process_leaves_its_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    _read(0, 0, 0)
    assert torch.equal(torch.rand(4), expected)


def test_a_sample_seed_depends_on_its_index_epoch_and_partition_only() -> None:
    idx = np.array([3, 9, 27])
    base = sample_seeds(5, (1, 0, 2), idx)
    assert np.array_equal(base, sample_seeds(5, (1, 0, 2), idx))
    assert np.array_equal(base[1:], sample_seeds(5, (1, 0, 2), idx[1:]))
    assert len(set(base.tolist())) == 3
    for other in [sample_seeds(6, (1, 0, 2), idx), sample_seeds(5, (1, 1, 2), idx)]:
        assert not set(other.tolist()) & set(base.tolist())
