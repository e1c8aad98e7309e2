"""The Python SDK: submit a job, follow it, read its metrics and fetch the trained model.

Example::

    from pscluster import Client

    with Client("localhost:50051") as client:
        job = client.submit(model=MyNet, train=(X, y), test=(Xt, yt), mode="ssp", staleness=2)
        job.wait(progress=True)
        print(job.metrics().final_accuracy)
        MyNet().load_state_dict(job.fetch_model())
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import torch
from pydantic import SecretStr
from rich.console import Console
from torch import nn

from pscluster.client import progress as _progress
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
from pscluster.client.metrics import JobMetrics
from pscluster.client.payload import InitFrom, LossArg, build_payload
from pscluster.config import Settings
from pscluster.errors import PSError
from pscluster.model import state
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


class Client:
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
        train: tuple[Any, Any],
        test: tuple[Any, Any],
        *,
        mode: str = "async",
        staleness: int = 0,
        optimizer: Mapping[str, Any] | None = None,
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
    ) -> Job:
        """Submit a training job and return at once; follow it with :meth:`Job.wait`.

        ``model`` is an ``nn.Module`` class defined at the top level of a .py file (or directly
        under a script's ``if __name__ == "__main__":``): workers rebuild it as
        ``model(**model_kwargs)`` from that file's source and the local modules it imports
        (or every .py under ``code_dir``); see the README's "Bring your own model". Parameters
        with ``requires_grad=False`` stay frozen (never pulled or pushed); buffers (BatchNorm
        statistics) train on the shards beside the parameters.

        ``train`` and ``test`` are ``(X, y)`` pairs: X an array or tensor (float, or integer
        ids), a tuple of them (``forward(*X)``) or a dict of them (``forward(**X)``); y an
        array of any shape. ``loss`` is "cross_entropy", "mse", "l1", "bce_with_logits" or a
        function ``loss(output, y) -> scalar`` defined at the top level of your file;
        ``metric`` ("accuracy", "mse", "mae", "loss"; default: the loss's own) is what each
        epoch's evaluation reports. ``precision`` "bf16" trains in bfloat16 autocast (CPU and
        GPU), "fp16" in float16 with dynamic loss scaling (CUDA workers); the shards keep
        float32 weights. ``init_from`` starts from a finished job's model (a Job or its id) or
        a state_dict, loaded by name: entries the model lacks are an error, entries it has
        beyond them keep their initialisation (adapters, a new head).

        Before anything is sent, the model is built from the code that would be sent and run
        forward and backward on a few rows (the dry run); the data are checked for NaN, and
        labels against the model's outputs. ``mode`` is
        "async", "sync" or "ssp" (bounded by ``staleness``); ``optimizer`` is a dict of
        torch.optim fields, by default ``{"name": "sgd", "lr": 0.05, "momentum": 0.9}``.
        ``partitions`` and ``shards`` of 0 let the coordinator choose. ``compression``
        compresses the gradients workers push, e.g. ``{"name": "topk", "ratio": 0.01}``
        (codecs: none, fp16, bf16, int8, topk, dgc; dgc also takes momentum, clip_norm and
        warmup_epochs) and may set ``pull_dtype`` ("float16", "bfloat16") for training pulls.

        Stragglers: ``backup_workers`` (sync only) closes each step without the last that
        many pushes (Chen et al. 2016). ``stragglers`` tunes detection and mitigation, e.g.
        ``{"factor": 2.0, "alpha": 0.2, "grace_seconds": 5, "no_mitigation": False}``: a
        worker whose busy time per batch exceeds ``factor`` x the median of the others is
        flagged, gets smaller leases, has its lease split when others are idle and, in ssp,
        stops holding back the slowest clock after ``grace_seconds``.
        ``staleness_aware_lr`` divides each async/ssp push by (staleness + 1).

        ``local_steps`` (local SGD, as Downpour SGD's n_fetch = n_push): each worker takes
        that many steps of the job's ``optimizer`` on its own copy of the parameters (keeping
        its momentum or Adam state), then pushes the window's change and pulls again; the
        shards add the change (sync: averaged over the workers). 1/``local_steps`` of the
        communication per sample, at the price of workers seeing each other's progress once
        per window. Use it with ``mode="sync"``, or lower ``lr`` in async, where every
        worker's whole change is added. 0 or 1: pull and push every step.

        Raises InvalidJobError (before sending anything) if the model or the data are wrong,
        or when the coordinator rejects the spec.

        Example::

            job = client.submit(model=MyNet, train=(X, y), test=(Xt, yt), mode="ssp",
                                staleness=2, optimizer={"name": "adam", "lr": 1e-3})
        """
        payload = build_payload(
            model,
            train,
            test,
            mode=mode,
            staleness=staleness,
            optimizer=optimizer,
            epochs=epochs,
            batch_size=batch_size,
            model_kwargs=model_kwargs,
            loss=loss,
            partitions=partitions,
            shards=shards,
            seed=seed,
            name=name,
            compression=compression,
            backup_workers=backup_workers,
            stragglers=stragglers,
            staleness_aware_lr=staleness_aware_lr,
            local_steps=local_steps,
            metric=metric,
            precision=precision,
            init_from=self._init_from(init_from),
            code_dir=code_dir,
        )
        stream = payload.chunks(self.settings.chunk_bytes)
        reply = self._call("submit the job", lambda t: self._stub.SubmitJob(stream, timeout=t))
        return Job(self, reply.job_id, token=reply.token or None)

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
        """Shards with their health and workers with their liveness and current task."""
        reply = self._call(
            "get the cluster status",
            lambda t: self._stub.ClusterStatus(co_pb2.ClusterStatusRequest(), timeout=t),
        )
        return ClusterStatus.from_proto(reply)

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

    def _job_request(self, job_id: str) -> co_pb2.GetJobRequest:
        return co_pb2.GetJobRequest(job_id=job_id)


class Job:
    """A handle on one job; every method asks the coordinator afresh.

    Example::

        job = client.job("a1b2c3")
        info = job.wait(progress=True, timeout=600)
        print(info.test_accuracy, job.metrics().pushes_rejected)
    """

    def __init__(self, client: Client, job_id: str, *, token: str | None = None) -> None:
        if not job_id:
            raise ValueError("job_id is empty")
        self.client = client
        self.id = job_id
        # The job's bearer token, from submit() on a cluster that requires tokens (else None):
        # ``Client(address, token=job.token)`` reads and cancels this job and nothing else.
        # The coordinator keeps no copy; store it like a password.
        self.token = token

    def info(self) -> JobInfo:
        stub, req = self.client._stub, self.client._job_request(self.id)
        reply = self.client._call(f"get job {self.id}", lambda t: stub.GetJob(req, timeout=t))
        return JobInfo.from_proto(reply)

    def wait(
        self,
        progress: bool = False,
        timeout: float | None = None,
        poll: float = 0.5,
        *,
        console: Console | None = None,
    ) -> JobInfo:
        """Block until the job completes and return its final info.

        ``progress=True`` draws a progress bar with the epoch, the last loss, the latest test
        accuracy and what the job is waiting on. Raises JobFailed if the job fails or is
        cancelled, TimeoutError if it is still running after ``timeout`` seconds.
        """
        if poll <= 0:
            raise ValueError(f"poll must be > 0 seconds, got {poll}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout}")
        info = _progress.follow(
            self.info, progress=progress, timeout=timeout, poll=poll, console=console
        )
        if info.state != "completed":
            raise JobFailed(info)
        return info

    def metrics(self) -> JobMetrics:
        """Per-step loss, per-epoch test accuracy and the shards' push statistics."""
        stub, req = self.client._stub, self.client._job_request(self.id)
        reply = self.client._call(
            f"get the metrics of job {self.id}", lambda t: stub.GetMetrics(req, timeout=t)
        )
        return JobMetrics.from_proto(reply).of_job(self.info())

    def history(self) -> History:
        """The job's curves as tables: loss per step, test results per epoch (times in seconds
        since the job started) and the staleness histograms; ``to_csv(dir)`` writes them out.

        Example::

            h = job.history()
            best = max(h.epochs, key=lambda e: e.test_accuracy)
            h.to_csv("runs/ssp")
        """
        return History.from_metrics(self.info(), self.metrics())

    def fetch_model(self) -> dict[str, torch.Tensor]:
        """The trained ``state_dict`` (parameters and buffers), ready for ``load_state_dict``.

        Of a running job: its current parameters. A pending, failed or cancelled job has no
        model: PSClusterError with code FAILED_PRECONDITION says why.

        Example::

            model = MyNet()
            model.load_state_dict(job.fetch_model())
        """
        stub, req = self.client._stub, self.client._job_request(self.id)

        def fetch(timeout: float) -> bytearray:
            blob = bytearray()
            for chunk in stub.FetchModel(req, timeout=timeout):
                blob += chunk.data
            return blob

        blob = self.client._call(f"fetch the model of job {self.id}", fetch)
        try:
            return state.loads(blob, f"the model of job {self.id}")
        except PSError as e:
            raise PSClusterError(str(e)) from e

    def cancel(self) -> JobInfo:
        """Stop the job; its workers abandon their leases. Cancelling a finished job is a no-op
        or FAILED_PRECONDITION, as the coordinator decides."""
        stub, req = self.client._stub, self.client._job_request(self.id)
        reply = self.client._call(f"cancel job {self.id}", lambda t: stub.CancelJob(req, timeout=t))
        return JobInfo.from_proto(reply)

    def __repr__(self) -> str:
        return f"Job({self.id!r})"
