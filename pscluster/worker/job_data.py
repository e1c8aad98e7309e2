"""A job's data as one worker reads it: its source opened here, batches by lease.

The source is the job's (the user's function, ``.npy`` shards, Parquet) or, for a job that
uploaded its arrays, the fetched ``dataset`` blob. Either way a lease's batches come from the
plan (:func:`pscluster.data.partitions.batches`) through :class:`SplitLoader`, so both read
exactly the same samples in the same order. A source's sizes are checked with the
coordinator's record (``DescribeData``): a worker whose source differs from the first
worker's fails the job instead of training on other data.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pscluster.data import inputs, sources
from pscluster.data.loading import Batch, LoaderSettings, SplitLoader
from pscluster.data.partitions import batches
from pscluster.data.sources import base
from pscluster.errors import InvalidArgument
from pscluster.model.loader import LoadedBundle
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from pscluster.worker.uploaded import open_uploaded

EVAL_BATCH = 1024
DEFAULT_PREFETCH = 2


def fetch_blob(stub: co_grpc.CoordinatorStub, job_id: str, blob: str, timeout: float) -> bytearray:
    """A job's blob, assembled in one buffer (read with :func:`state.views`, no more copies)."""
    data = bytearray()
    request = co_pb2.FetchBlobRequest(job_id=job_id, blob=blob)
    for chunk in stub.FetchBlob(request, timeout=timeout):
        data += chunk.data
    return data


class JobData:
    def __init__(
        self,
        spec: co_pb2.JobSpec,
        source: sources.DataSource,
        device: torch.device,
    ) -> None:
        self.spec, self.device = spec, device
        train, test = source.open("train"), source.open("test")
        self.shape = co_pb2.DataShape(
            train_rows=len(train), test_rows=len(test), block_rows=base.block_rows(train)
        )
        for split, samples in (("train", train), ("test", test)):
            if len(samples) == 0:
                raise InvalidArgument(f"the data source's {split} split is empty")
        workers = spec.data.loader_workers if spec.data.source else 0
        settings = LoaderSettings(
            workers=workers,
            prefetch=spec.data.prefetch_batches or DEFAULT_PREFETCH,
            pin_memory=device.type == "cuda",
        )
        seeded = source.seeds_samples
        self.train = SplitLoader(train, seeded, spec.seed, settings)
        # Evaluation has a loader of its own, its processes kept between epochs like these.
        self.test = SplitLoader(test, seeded, spec.seed, settings)

    @classmethod
    def open(
        cls,
        spec: co_pb2.JobSpec,
        code: LoadedBundle,
        device: torch.device,
        fetch: tuple[co_grpc.CoordinatorStub, str, float],
        cache_bytes: int,
    ) -> JobData:
        """The job's data: its source, or the uploaded blob (``fetch``: stub, job, timeout;
        ``cache_bytes`` of its training rows kept between leases)."""
        if spec.data.source:
            return cls(spec, sources.open_source(spec.data, code.lookup), device)
        return cls(spec, open_uploaded(*fetch, spec.seed, cache_bytes), device)

    @property
    def train_rows(self) -> int:
        return int(self.shape.train_rows)

    def plan(self, task: co_pb2.Task) -> list[np.ndarray]:
        """The lease's partition's batches, whole (the lease covers some of them)."""
        return batches(
            self.train_rows,
            task.partitions,
            task.partition,
            task.epoch,
            self.spec.batch_size,
            self.spec.seed,
            max(1, self.shape.block_rows),
        )

    def train_batches(self, task: co_pb2.Task, plan: list[np.ndarray]) -> Iterator[Batch]:
        """The lease's batches from its first on, on the training device."""
        end = task.end_batch or len(plan)
        stream = (1, task.epoch, task.partition)
        prepare = getattr(self.train.samples, "prepare", None)
        if prepare is not None:  # uploaded rows: fetch this partition's (and drop the last)
            prepare(task.partitions, task.partition)
        for x, y in self.train.read(plan[task.first_batch : end], stream):
            yield self._to_device(x, y)

    def test_batches(self) -> Iterator[Batch]:
        for x, y in self.test.read_all(EVAL_BATCH):
            yield self._to_device(x, y)

    def _to_device(self, x: inputs.Inputs, y: torch.Tensor) -> Batch:
        if self.device.type == "cpu":
            return x, y
        move = self.device.type == "cuda"
        return inputs.to_device(x, self.device), y.to(self.device, non_blocking=move)

    def close(self) -> None:
        self.train.close()
        self.test.close()
