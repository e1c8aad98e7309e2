"""Batches of a lease, read from the job's sample set by a ``torch.utils.data.DataLoader``.

The lease's plan (:mod:`pscluster.data.partitions`) says which samples make each batch; the
loader reads them (in ``loader_workers`` processes, ``prefetch_batches`` ahead, so that
reading and augmentation overlap the training step) and stacks them. Loader processes are
forked once per job and kept across its leases (``persistent_workers``): the user's code was
imported in isolation (:mod:`pscluster.model.loader`) and could not be pickled into a fresh
process, and a fork per lease would cost more than most leases' reading.

Randomness in the user's dataset (augmentation) is seeded per sample from (job seed, epoch,
partition, index), in whichever process reads it, so a partition re-leased to another worker
reads exactly the same samples, and two runs of a job the same batches.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

from pscluster.data.inputs import Inputs
from pscluster.data.sources.base import ReadyBatch, Sample, SampleSet, collate

Batch = tuple[Inputs, torch.Tensor]
# The test split is read in its own stream of seeds, apart from every (epoch, partition).
_TEST_STREAM = 4


@dataclass(frozen=True)
class LoaderSettings:
    workers: int = 0  # loader processes; 0 reads in the training process
    prefetch: int = 2  # batches each process reads ahead
    pin_memory: bool = False  # CUDA: page-locked batches, copied asynchronously


def sample_seeds(job_seed: int, stream: Sequence[int], indices: np.ndarray) -> np.ndarray:
    """A 64-bit seed per sample: the stream's base seed mixed with each index (splitmix64)."""
    base = np.random.SeedSequence([job_seed, *stream]).generate_state(1, np.uint64)[0]
    z = (indices.astype(np.uint64) + base) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    seeds: np.ndarray = z ^ (z >> np.uint64(31))
    return seeds


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch, numpy and random for one sample. In the training process their states
    are put back afterwards (the model's own randomness, dropout, must not depend on what
    was read); a loader process exists only to read, so its states are simply set."""
    in_loader = get_worker_info() is not None
    saved = None if in_loader else (torch.get_rng_state(), np.random.get_state(), random.getstate())
    # The CPU generator only: torch.manual_seed also seeds every accelerator's generators,
    # which costs a millisecond a sample.
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


class _Reader(torch.utils.data.Dataset[Any]):
    """The sample set as the DataLoader sees it: keys are indices, or (index, seed) pairs."""

    def __init__(self, samples: SampleSet, seeded: bool) -> None:
        self.samples, self.seeded = samples, seeded

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Any) -> Sample:
        if not self.seeded:
            return self.samples[int(key)]
        index, seed = key
        with _seeded(int(seed)):
            return self.samples[int(index)]

    def __getitems__(self, keys: list[Any]) -> list[Sample] | ReadyBatch:
        many = getattr(self.samples, "__getitems__", None)
        if self.seeded or many is None:
            return [self[k] for k in keys]
        return many([int(k) for k in keys])  # type: ignore[no-any-return]


class _Plan:
    """The batch sampler: the keys of the batches to read next (set before each pass)."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _collate(samples: list[Sample] | ReadyBatch) -> Batch:
    return collate(samples, "the dataset's samples")


class SplitLoader:
    """One split of a job's data, read batch by batch through a DataLoader."""

    def __init__(
        self, samples: SampleSet, seeded: bool, job_seed: int, settings: LoaderSettings
    ) -> None:
        self.samples, self.seeded, self.job_seed = samples, seeded, job_seed
        self.rows = len(samples)
        self._plan = _Plan()
        workers = settings.workers
        self._loader = DataLoader(
            _Reader(samples, seeded),
            batch_sampler=self._plan,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=settings.pin_memory,
            prefetch_factor=settings.prefetch if workers else None,
            persistent_workers=workers > 0,
            # Each pass draws its processes' base seed: from a generator of its own, not the
            # training process's (whose stream is the model's: dropout, initialisation).
            generator=torch.Generator().manual_seed(job_seed),
            # Fork, never spawn: the user's code lives in modules a new process cannot import.
            multiprocessing_context="fork" if workers else None,
        )

    def read(self, batches: Sequence[np.ndarray], stream: Sequence[int] = ()) -> Iterator[Batch]:
        """The batches of ``batches`` (arrays of sample indices), in order; ``stream`` names
        the seeds of their samples ((epoch, partition) for training)."""
        if self.seeded:
            self._plan.batches = [
                list(zip(b.tolist(), sample_seeds(self.job_seed, stream, b).tolist(), strict=True))
                for b in batches
            ]
        else:
            self._plan.batches = [b.tolist() for b in batches]
        return iter(self._loader)

    def read_all(self, batch_size: int) -> Iterator[Batch]:
        """The whole split in order, for evaluation."""
        bounds = range(0, self.rows, batch_size)
        plan = [np.arange(i, min(i + batch_size, self.rows)) for i in bounds]
        return self.read(plan, (_TEST_STREAM,))

    def close(self) -> None:
        """Stop the loader processes now (not whenever the garbage collector gets to them)."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._loader._iterator = None
