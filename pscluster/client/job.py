"""A handle on one submitted job: its state, its metrics and its trained model, asked afresh.

Every call goes through the :class:`~pscluster.client.sdk.Client` that made the handle, so it
shares that client's channel, deadline, token and error translation; a handle holds nothing
but the job's id (and, right after submit, the job's token).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console

from pscluster.client import predictions
from pscluster.client import progress as _progress
from pscluster.client.errors import JobFailed, PSClusterError
from pscluster.client.history import History
from pscluster.client.info import JobInfo
from pscluster.client.metrics import JobMetrics
from pscluster.errors import PSError
from pscluster.model import state
from pscluster.v1 import coordinator_pb2 as co_pb2

if TYPE_CHECKING:  # the client module imports this one to hand out Jobs
    from pscluster.client.compress_options import Compressed
    from pscluster.client.sdk import Client

# A fetch of predictions whose size the caller does not know gets the RPC deadline plus this.
FETCH_SLACK_SECONDS = 300.0


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
        try:  # views on the one buffer: a model with a 3 GB table is held once, not twice
            return state.views(blob, f"the model of job {self.id}")
        except PSError as e:
            raise PSClusterError(str(e)) from e

    def save_model(self, path: str | Path) -> Path:
        """Write the trained model to ``path`` as a safetensors file as it streams in, never
        holding it in memory (a model with large embedding tables); read it with
        ``safetensors.torch.load_file`` or ``safe_open``. Returns the path.

        Example::

            job.save_model("ctr.safetensors")
        """
        target = Path(path)
        stub, req = self.client._stub, self.client._job_request(self.id)
        tmp = target.with_name(target.name + ".part")

        def fetch(timeout: float) -> None:
            with tmp.open("wb") as f:
                for chunk in stub.FetchModel(req, timeout=timeout):
                    f.write(chunk.data)

        try:
            self.client._call(f"save the model of job {self.id}", fetch)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def predict(self, data: Any, **options: Any) -> torch.Tensor:
        """Score ``data`` with this completed job's model on the workers: the outputs, in
        input order. ``options`` are ``Client.predict``'s (``output``, ``precision``,
        ``progress``, ``timeout``, ...).

        Example::

            probs = job.predict(X_new, output="probs", progress=True)
        """
        return self.client.predict(self, data=data, **options)

    def compress(self, **options: Any) -> Compressed:
        """This completed job's model made smaller: quantized, pruned (and fine-tuned on the
        cluster), measured against the original. ``options`` are ``Client.compress``'s.

        Example::

            small = job.compress(quantize="int8", output="model.int8.pt")
            pruned = job.compress(prune={"amount": 0.5, "structured": False}, finetune_epochs=3)
            print(pruned.report.markdown())
        """
        return self.client.compress(self, **options)

    def predictions(self, timeout: float | None = None) -> torch.Tensor:
        """A completed predict job's outputs, in input order (float32, or int64 classes).
        The fetch's deadline is ``timeout`` seconds (default: the RPC deadline plus
        :data:`FETCH_SLACK_SECONDS`). FAILED_PRECONDITION (PSClusterError) for a job that
        is not a completed predict job.

        Example::

            scoring = client.submit_predict(job, data=X)
            scoring.wait(timeout=600)
            outputs = scoring.predictions()
        """
        stub, req = self.client._stub, self.client._job_request(self.id)
        what = f"fetch the predictions of job {self.id}"
        deadline = timeout or self.client.settings.rpc_timeout_seconds + FETCH_SLACK_SECONDS
        return self.client._call(
            what, lambda _: predictions.read(stub.FetchPredictions(req, timeout=deadline), what)
        )

    def save_predictions(self, path: str | Path, timeout: float | None = None) -> tuple[int, ...]:
        """Write a completed predict job's outputs to ``path`` as a ``.npy`` file as they
        stream in (never held in memory); returns their shape. Deadline as
        :meth:`predictions`.

        Example::

            job.save_predictions("preds.npy")
        """
        stub, req = self.client._stub, self.client._job_request(self.id)
        what = f"save the predictions of job {self.id}"
        deadline = timeout or self.client.settings.rpc_timeout_seconds + FETCH_SLACK_SECONDS
        return self.client._call(
            what,
            lambda _: predictions.write_npy(
                stub.FetchPredictions(req, timeout=deadline), Path(path), what
            ),
        )

    def lookup(self, table: str, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Rows of one of the job's embedding tables (its state_dict name, e.g.
        ``"emb.weight"``), as a float32 (len(ids), dim) tensor, without fetching the table:
        from the shards while the job runs, from its saved model once it completed.

        Example::

            vectors = job.lookup("items.weight", [3, 17, 42])
        """
        flat = torch.as_tensor(ids, dtype=torch.int64).reshape(-1).tolist()
        request = co_pb2.LookupRowsRequest(job_id=self.id, table=table, ids=flat)
        reply = self.client._call(
            f"look rows of {table!r} up in job {self.id}",
            lambda t: self.client._stub.LookupRows(request, timeout=t),
        )
        values = torch.frombuffer(bytearray(reply.values), dtype=torch.float32)
        return values.reshape(len(flat), reply.dim) if flat else values.reshape(0, reply.dim)

    def cancel(self) -> JobInfo:
        """Stop the job; its workers abandon their leases. Cancelling a finished job is a no-op
        or FAILED_PRECONDITION, as the coordinator decides."""
        stub, req = self.client._stub, self.client._job_request(self.id)
        reply = self.client._call(f"cancel job {self.id}", lambda t: stub.CancelJob(req, timeout=t))
        return JobInfo.from_proto(reply)

    def __repr__(self) -> str:
        return f"Job({self.id!r})"
