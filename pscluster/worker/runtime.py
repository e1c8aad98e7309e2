"""Everything a worker needs to run one job, built once per job and cached.

A worker is stateless between jobs: the plan, the data and the model all come from the
coordinator, and the model is rebuilt from the submitted source (never unpickled).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from pscluster.compression import parse_settings
from pscluster.config import Settings
from pscluster.data.dataset import Dataset
from pscluster.model import source, state
from pscluster.model.layout import ParamLayout
from pscluster.v1 import common_pb2, coordinator_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from pscluster.worker.compressed import PushEncoder
from pscluster.worker.local_sgd import LocalSGD, LossFn
from pscluster.worker.shards import ShardSet

log = logging.getLogger(__name__)


class ModelMismatch(Exception):
    """The model built from the submitted source does not match the submitted layout."""


def pick_device(setting: str) -> torch.device:
    if setting:
        return torch.device(setting)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def loss_function(name: str) -> LossFn:
    if name in ("", "cross_entropy"):
        return F.cross_entropy

    def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, y.to(out.dtype).reshape(out.shape))

    if name == "mse":
        return mse
    raise ValueError(f"unknown loss {name!r}")


def fetch_blob(stub: co_grpc.CoordinatorStub, job_id: str, blob: str, timeout: float) -> bytes:
    parts = [
        c.data
        for c in stub.FetchBlob(
            coordinator_pb2.FetchBlobRequest(job_id=job_id, blob=blob), timeout=timeout
        )
    ]
    return b"".join(parts)


class JobRuntime:
    def __init__(self, stub: co_grpc.CoordinatorStub, job_id: str, settings: Settings) -> None:
        timeout = settings.rpc_timeout_seconds
        plan: coordinator_pb2.JobPlan = stub.GetJobPlan(
            coordinator_pb2.GetJobRequest(job_id=job_id), timeout=timeout
        )
        self.job_id = job_id
        self.spec = plan.spec
        self.device = pick_device(settings.device)
        self.layout = ParamLayout([(p.name, tuple(p.shape)) for p in plan.spec.model.params])
        self.loss_fn = loss_function(plan.spec.loss)
        self.data = Dataset.from_blob(fetch_blob(stub, job_id, "dataset", timeout))
        initial = state.loads(fetch_blob(stub, job_id, "initial_state", timeout), "initial state")
        self.model = self._build(initial)
        # One per job, not per lease: with local steps it holds the worker's optimizer state.
        self.local = LocalSGD(
            self.model, self.layout, self.loss_fn, plan.spec.optimizer, plan.spec.local_steps
        )
        self.shards = ShardSet(job_id, plan.shards, settings)
        # Compression state (residuals, DGC momentum) lives here: one per job, per shard range.
        self.encoder = PushEncoder(
            parse_settings(plan.spec.compression), [(r.start, r.length) for r in plan.shards]
        )
        self.pull_dtype = plan.spec.compression.pull_dtype or common_pb2.DTYPE_FLOAT32
        self.seq = 0  # push sequence number, strictly increasing over this worker's pushes
        self._train = (self.data.train_x.to(self.device), self.data.train_y.to(self.device))

    def _build(self, initial: dict[str, torch.Tensor]) -> nn.Module:
        m = self.spec.model
        model = source.build(m.source, m.class_name, m.kwargs_json)
        built = ParamLayout.of_module(model)
        if [(s.name, s.shape) for s in built.slots] != [
            (s.name, s.shape) for s in self.layout.slots
        ]:
            raise ModelMismatch(
                f"the model built from source has parameters "
                f"{[(s.name, s.shape) for s in built.slots]}, but the job was submitted with "
                f"{[(s.name, s.shape) for s in self.layout.slots]}"
            )
        model.load_state_dict(initial, strict=True)
        return model.to(self.device)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = indices.to(self.device)
        return self._train[0][idx], self._train[1][idx]

    def test_batches(self, size: int = 1024) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.data.test_x, self.data.test_y
        for i in range(0, x.shape[0], size):
            yield x[i : i + size].to(self.device), y[i : i + size].to(self.device)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def load(self, values: torch.Tensor) -> None:
        self.layout.load_into(self.model, values)

    def close(self) -> None:
        self.shards.close()
