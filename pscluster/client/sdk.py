"""The Python SDK: submit a job, follow it, read its metrics, fetch the trained model and
score rows with it on the workers.

Example::

    from pscluster import Client

    with Client("localhost:50051") as client:
        job = client.submit(model=MyNet, train=(X, y), test=(Xt, yt), mode="ssp", staleness=2)
        job.wait(progress=True)
        print(job.metrics().final_accuracy)
        MyNet().load_state_dict(job.fetch_model())
        classes = job.predict(X_new, output="argmax")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import torch
from pydantic import SecretStr
from torch import nn

from pscluster.client.data_source import DataArg
from pscluster.client.errors import (
    ClusterUnavailableError,
    InvalidJobError,
    JobFailed,
    JobNotFoundError,
    PSClusterError,
    from_rpc_error,
)
from pscluster.client.history import History
from pscluster.client.info import ClusterStatus, JobInfo
from pscluster.client.job import Job
from pscluster.client.metrics import JobMetrics
from pscluster.client.payload import InitFrom, Payload, payload_for
from pscluster.client.scaling import ShardScaling
from pscluster.client.sdk_after import AfterTraining
from pscluster.client.submit_options import LossArg, SubmitOptions, check_mirrored_by
from pscluster.config import Settings
from pscluster.transport.channel import open_channel
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc

__all__ = [
    "Client",
    "ClusterUnavailableError",
    "History",
    "InvalidJobError",
    "Job",
    "JobFailed",
    "JobInfo",
    "JobMetrics",
    "JobNotFoundError",
    "PSClusterError",
]

T = TypeVar("T")
# Bytes a second an upload is given at least (its deadline: the RPC timeout plus its size at
# this rate), so that a large submission is not cut off by a deadline sized for small calls.
UPLOAD_FLOOR = 20e6


class Client(AfterTraining):
    """A connection to the coordinator of a pscluster.

    ``address`` defaults to ``settings.coordinator`` (``PSC_COORDINATOR``, else
    ``localhost:50051``). Every call has a deadline of ``settings.rpc_timeout_seconds``.

    On a cluster that requires tokens, ``token`` (else ``PSC_TOKEN`` / ``PSC_TOKEN_FILE``,
    else ``PSC_ADMIN_TOKEN``) goes with every call: the admin token may do everything, a job's
    token (``Job.token``, returned once by :meth:`submit`) only reads or cancels that job.
    TLS comes from the settings (``PSC_TLS_CA``, and ``PSC_TLS_CERT``/``PSC_TLS_KEY`` for
    mutual TLS).

    Example::

        client = Client()                     # PSC_COORDINATOR or localhost:50051
        for info in client.jobs():
            print(info.job_id, info.state, info.test_accuracy)
        client.close()

        owner = Client("pscluster:50051", token=job_token)   # a job's token: that job only
        print(owner.job(job_id).info().state)
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        settings: Settings | None = None,
        token: str | None = None,
    ) -> None:
        self.settings = settings or Settings()
        if token is not None:
            if not token.strip():
                raise ValueError("token is empty; pass the admin token or a job's token")
            self.settings = self.settings.model_copy(
                update={"token": SecretStr(token), "token_file": None}
            )
        self.address = address or self.settings.coordinator
        if not self.address.strip():
            raise ValueError("the coordinator address is empty; expected host:port")
        self._channel = open_channel(self.address, self.settings)
        self._stub = co_grpc.CoordinatorStub(self._channel)

    # --- jobs ---
    def submit(
        self,
        model: type[nn.Module],
        train: tuple[Any, Any] | None = None,
        test: tuple[Any, Any] | None = None,
        *,
        data: DataArg | None = None,
        mode: str = "async",
        staleness: int = 0,
        optimizer: Mapping[str, Any] | None = None,
        sparse_optimizer: Mapping[str, Any] | None = None,
        epochs: int = 10,
        batch_size: int = 64,
        model_kwargs: Mapping[str, Any] | None = None,
        loss: LossArg = "cross_entropy",
        partitions: int = 0,
        shards: int = 0,
        seed: int = 0,
        name: str = "",
        compression: Mapping[str, Any] | None = None,
        backup_workers: int = 0,
        stragglers: Mapping[str, Any] | None = None,
        staleness_aware_lr: bool = False,
        local_steps: int = 0,
        metric: str = "",
        precision: str = "fp32",
        init_from: Job | str | Mapping[str, torch.Tensor] | None = None,
        code_dir: str | Path | None = None,
        data_args: Mapping[str, Any] | None = None,
        loader_workers: int = 1,
        prefetch_batches: int = 2,
    ) -> Job:
        """Submit a training job and return at once; follow it with :meth:`Job.wait`.

        ``model`` is an ``nn.Module`` class defined at the top level of a .py file (or directly
        under a script's ``if __name__ == "__main__":``): workers rebuild it as
        ``model(**model_kwargs)`` from that file's source and the local modules it imports
        (or every .py under ``code_dir``); see the README's "Bring your own model". Parameters
        with ``requires_grad=False`` stay frozen (never pulled or pushed); buffers (BatchNorm
        statistics) train on the shards beside the parameters. ``train`` and ``test`` are
        ``(X, y)`` pairs: X an array or tensor (float, or integer ids), a tuple of them
        (``forward(*X)``) or a dict of them (``forward(**X)``); y an array of any shape. They
        are uploaded; data too large for that stays where it is: pass ``data`` instead, your
        function ``make_dataset(split, **data_args)`` returning a map-style dataset of (x, y)
        samples (or "path/to/file.py:make_dataset"), or a built-in reader "npy" or "parquet"
        with ``data_args={"path": ...}``. Each worker then reads only its leases' samples.

        ``init_from`` starts from a finished job's model (a Job or its id) or a state_dict,
        loaded by name: entries the model lacks are an error, entries it has beyond them keep
        their initialisation (adapters, a new head). The other keywords (``mode``, ``loss``,
        ``optimizer``, ``compression``, ``stragglers``, ``local_steps``, ...) are described on
        :class:`~pscluster.client.submit_options.SubmitOptions`.

        Before anything is sent, the model is built from the code that would be sent and run
        forward and backward on a few rows (the dry run); the data are checked for NaN, and
        labels against the model's outputs. Raises InvalidJobError (before sending anything)
        if the model or the data are wrong, or when the coordinator rejects the spec.

        Example::

            job = client.submit(model=MyNet, train=(X, y), test=(Xt, yt), mode="ssp",
                                staleness=2, optimizer={"name": "adam", "lr": 1e-3})
            job = client.submit(model=MyNet, data="mydata.py:make_dataset",
                                data_args={"root": "/data/digits-big"}, epochs=3)
        """
        options = SubmitOptions.from_arguments(locals())  # the keywords are its fields, by name
        payload = payload_for(model, (train, test, data), options, self._init_from(init_from))
        return self._send(payload, "submit the job")

    def _init_from(self, source: Job | str | Mapping[str, torch.Tensor] | None) -> InitFrom | None:
        """Where a fine-tune starts, fetched now: a completed job's model, or the given state."""
        if source is None:
            return None
        if isinstance(source, Mapping):
            bad = [k for k, v in source.items() if not isinstance(v, torch.Tensor)]
            if bad:
                raise InvalidJobError(f"init_from values must be tensors; these are not: {bad}")
            return InitFrom(source)
        job = source if isinstance(source, Job) else self.job(source)
        info = job.info()
        if info.state != "completed":
            raise InvalidJobError(
                f"init_from job {job.id} is {info.state}; fine-tune from a completed job"
            )
        return InitFrom(job.fetch_model(), job.id)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job; NOT_FOUND surfaces as JobNotFoundError."""
        job = Job(self, job_id)
        job.info()
        return job

    def jobs(self) -> list[JobInfo]:
        """Every job the coordinator knows, as it reports them (oldest first)."""
        reply = self._call(
            "list jobs", lambda t: self._stub.ListJobs(co_pb2.ListJobsRequest(), timeout=t)
        )
        return [JobInfo.from_proto(j) for j in reply.jobs]

    def status(self) -> ClusterStatus:
        """Shards with their health (and, in ``registry``, the shards jobs are placed on, with
        their liveness and the jobs each holds) and workers with their liveness and task."""
        reply = self._call(
            "get the cluster status",
            lambda t: self._stub.ClusterStatus(co_pb2.ClusterStatusRequest(), timeout=t),
        )
        return ClusterStatus.from_proto(reply, self._list_shards())

    def scale_shards(self, shards: int, timeout: float = 120.0) -> ShardScaling:
        """Use ``shards`` of the registered shards from now on and move every running job's
        ranges onto them, each between two of its steps (its workers wait meanwhile); returns
        once every job moved or stayed, with what each move cost. Start the shards first
        (they register themselves); FailedPrecondition with a static shard list or too few
        live shards. ``timeout`` bounds the whole call; each job gets up to 30 s to reach a
        step boundary before it stays where it is."""
        request = co_pb2.ScaleShardsRequest(shards=shards)
        reply = self._call(
            f"scale to {shards} shard(s)",
            lambda t: self._stub.ScaleShards(request, timeout=max(t, timeout)),
        )
        return ShardScaling.from_proto(reply)

    def _list_shards(self) -> co_pb2.ListShardsReply | None:
        """The coordinator's shard registry; None from one that predates it."""
        try:
            return self._call(
                "list the shards",
                lambda t: self._stub.ListShards(co_pb2.ListShardsRequest(), timeout=t),
            )
        except PSClusterError as e:
            if e.code == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise

    # --- lifecycle ---
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.address!r})"

    # --- plumbing shared with Job ---
    def _call(self, what: str, call: Callable[[float], T]) -> T:
        """Run one RPC with the configured deadline, translating its failure for the user."""
        try:
            return call(self.settings.rpc_timeout_seconds)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.address, what) from None

    def _send(self, payload: Payload, what: str) -> Job:
        """Upload a checked submission. The deadline grows with the upload, and with the
        table rows the shards create and checkpoint before the coordinator answers: a second
        more per UPLOAD_FLOOR bytes."""
        stream = payload.chunks(self.settings.chunk_bytes)
        created = sum(t.num_rows * t.dim * 4 for t in payload.spec.model.tables)
        extra = (len(payload.dataset) + len(payload.initial_state) + created) / UPLOAD_FLOOR
        reply = self._call(what, lambda t: self._stub.SubmitJob(stream, timeout=t + extra))
        return Job(self, reply.job_id, token=reply.token or None)

    def _job_request(self, job_id: str) -> co_pb2.GetJobRequest:
        return co_pb2.GetJobRequest(job_id=job_id)


# Written here, where the signature and the options meet: a drift between them fails on import.
check_mirrored_by(Client.submit, besides=("init_from", "data"))
