"""Scoring a predict job's partitions on a worker: the model loaded once per job, each lease's
rows fetched as byte ranges of the inputs' blob, scored in ``eval()`` under ``no_grad``
(in bf16 autocast if asked), and handed back with the outputs.

The model is built from the shipped code exactly as a user builds it locally (the class with
its kwargs, then ``load_state_dict`` of the trained or uploaded state, strict), so what the
cluster returns is what ``model(X)`` gives on the fetched model. The outputs are what
:func:`pscluster.model.outputs.transform` makes of each batch: the same rule the SDK checked
at the door.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from pscluster.config import Settings
from pscluster.data import inputs, sources
from pscluster.data.inputs import Inputs
from pscluster.data.predict_inputs import InputsLayout, partition_range
from pscluster.errors import InvalidArgument
from pscluster.model import outputs, rebuild
from pscluster.model.partition import Range
from pscluster.transport import wire
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from pscluster.worker.job_data import fetch_blob
from pscluster.worker.precision import Precision
from pscluster.worker.runtime import pick_device
from pscluster.worker.trainer import LeaseLost
from pscluster.worker.uploaded import BlobRows, RemoteBlob

# Bytes a second an upload of outputs is given at least (its deadline grows with its size).
UPLOAD_FLOOR = 20e6
_DTYPES = {torch.float32: "float32", torch.int64: "int64"}


class InputRows:
    """The inputs' blob on the coordinator, read a partition's rows at a time."""

    def __init__(self, blob: RemoteBlob) -> None:
        header, start = blob.header()
        self.layout = InputsLayout.of_header(header)
        self._entries = [BlobRows(blob, header[n], start) for n in self.layout.names]

    def rows(self, r: Range) -> Inputs:
        return self.layout.structure.build([e.rows(r.start, r.end) for e in self._entries])


class SourceRows:
    """A source's split read where it lives (the workers' mount), a partition's rows at a
    time: their inputs only, the labels the source may have dropped."""

    def __init__(self, spec: co_pb2.JobSpec) -> None:
        self._samples = sources.BUILTIN[spec.data.source](sources.source_args(spec.data)).open(
            spec.predict.split
        )
        if len(self._samples) != spec.predict.rows:
            raise InvalidArgument(
                f"the {spec.data.source} source's {spec.predict.split} split has "
                f"{len(self._samples)} rows here but {spec.predict.rows} when the job was "
                "submitted; the workers must see the same data as the client"
            )

    def rows(self, r: Range) -> Inputs:
        indices = list(range(r.start, r.end))
        many = getattr(self._samples, "__getitems__", None)
        read = many(indices) if many else [self._samples[i] for i in indices]
        return sources.collate(read, f"rows {r.start}..{r.end - 1} to score")[0]


class PredictRuntime:
    """A predict job on this worker, built on its first lease and kept for the others."""

    def __init__(self, stub: co_grpc.CoordinatorStub, job_id: str, settings: Settings) -> None:
        started = time.perf_counter()
        timeout = settings.rpc_timeout_seconds
        plan = stub.GetJobPlan(co_pb2.GetJobRequest(job_id=job_id), timeout=timeout)
        self.job_id = job_id
        self.spec: co_pb2.JobSpec = plan.spec
        self.device = pick_device(settings.device)
        self.precision = Precision(self.spec.precision, self.device)
        blob = fetch_blob(stub, job_id, "initial_state", timeout)
        self.model = rebuild.trained_model(self.spec.model, blob).to(self.device).eval()
        self.inputs: InputRows | SourceRows = (
            SourceRows(self.spec)
            if self.spec.HasField("data")
            else InputRows(RemoteBlob(stub, job_id, "dataset", timeout))
        )
        # Reported with the first partition this worker hands in, then 0: once per worker.
        self.load_seconds = time.perf_counter() - started

    def close(self) -> None:
        """Nothing runs beside scoring (no loader processes): the model goes with the object."""


@dataclass(frozen=True)
class Scored:
    """A partition's outputs, and where the time went (seconds by phase)."""

    outputs: torch.Tensor
    seconds: dict[str, float]


def score(rt: PredictRuntime, task: co_pb2.Task, alive: Callable[[], bool]) -> Scored:
    """The lease's partition scored, batch by batch; LeaseLost as soon as the lease is gone."""
    kind, loss = rt.spec.predict.output, rt.spec.loss
    started = time.perf_counter()
    part = partition_range(rt.spec.predict.rows, task.partitions, task.partition)
    x = rt.inputs.rows(part)
    read = time.perf_counter() - started
    pieces = []
    batch_size = rt.spec.batch_size
    with torch.no_grad():
        for first in range(0, part.length, batch_size):
            if not alive():
                raise LeaseLost("lease revoked or worker stopping")
            batch = inputs.take(x, slice(first, first + batch_size))
            if rt.device.type != "cpu":
                batch = inputs.to_device(batch, rt.device)
            with rt.precision.autocast():
                out = inputs.call(rt.model, batch)
            outputs.check_shape(kind, tuple(out.shape), inputs.rows(batch, "X"))
            pieces.append(outputs.transform(out, kind, loss).cpu())
    seconds = {"read": read, "score": time.perf_counter() - started - read}
    if rt.load_seconds:
        seconds["load_model"], rt.load_seconds = rt.load_seconds, 0.0
    return Scored(torch.cat(pieces), seconds)


def chunks(
    worker_id: str, lease_id: str, scored: Scored, chunk_bytes: int
) -> Iterator[co_pb2.PredictionChunk]:
    """The CompletePrediction stream: the lease and the outputs' dtype, shape and timings
    first, then their bytes (little-endian, C order) in chunks."""
    result = scored.outputs.contiguous()
    raw = result.reshape(-1).view(torch.uint8).numpy()
    pieces = wire.chunks(memoryview(raw.data), chunk_bytes)
    yield co_pb2.PredictionChunk(
        worker_id=worker_id,
        lease_id=lease_id,
        dtype=_DTYPES[result.dtype],
        shape=list(result.shape),
        seconds=scored.seconds,
        data=next(pieces, b""),
    )
    for piece in pieces:
        yield co_pb2.PredictionChunk(data=piece)


def upload_timeout(scored: Scored, settings: Settings) -> float:
    nbytes = scored.outputs.numel() * scored.outputs.element_size()
    return settings.rpc_timeout_seconds + nbytes / UPLOAD_FLOOR
