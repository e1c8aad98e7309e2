"""What tests in every folder share: the tiny model and the job built on it, one way to wait for
a state, the status a refused call ends with, and every RPC of a service as the protos say.

Imported as ``tests.support`` (pyproject's ``pythonpath = ["."]``), from any test folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from types import ModuleType

import grpc
import numpy as np
import torch
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from pscluster.data.dataset import Dataset
from pscluster.model import source, state
from pscluster.model.layout import ParamLayout
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

# The user code of the tests' tiny jobs, one module: ``Tiny`` and ``Plain`` take 4 inputs to 3
# classes (15 parameters); ``Tiny`` also has a buffer, which is not trained and travels beside
# the flat vector in the initial state. A job file's model picks ``TinyNet``; ``DoubleNet`` and
# ``Broken`` are the mistakes the SDK must catch before anything is sent.
MODEL_SOURCE = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, n_in: int = 4, n_out: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)
        self.register_buffer("scale", torch.full((n_out,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


class Plain(nn.Module):
    def __init__(self, n_in: int = 4, n_out: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class TinyNet(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class DoubleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3).double()


class Broken(nn.Module):
    def __init__(self) -> None:
        raise RuntimeError("no GPU here")
"""


@dataclass(frozen=True)
class TinyJob:
    """A JobSpec and its two blobs, built the way the SDK builds them."""

    spec: co_pb2.JobSpec
    blobs: dict[str, bytes]
    initial: dict[str, torch.Tensor]
    layout: ParamLayout

    def chunks(self, chunk_bytes: int = 700) -> Iterator[co_pb2.SubmitJobChunk]:
        """The SubmitJob stream: the spec, then each blob in pieces of ``chunk_bytes``, then
        the end message."""
        yield co_pb2.SubmitJobChunk(spec=self.spec)
        for name, data in self.blobs.items():
            for i in range(0, len(data), chunk_bytes):
                piece = common_pb2.BlobChunk(blob=name, data=data[i : i + chunk_bytes])
                yield co_pb2.SubmitJobChunk(blob=piece)
        total = sum(len(data) for data in self.blobs.values())
        yield co_pb2.SubmitJobChunk(end=co_pb2.SubmitEnd(blob_bytes=total))

    def serialized(self, chunk_bytes: int = 4096) -> list[bytes]:
        """The same stream as bytes, for calls that send raw messages."""
        return [c.SerializeToString() for c in self.chunks(chunk_bytes)]


def tiny_job(
    *,
    model: str = "Tiny",
    name: str = "tiny",
    mode: str = "async",
    epochs: int = 2,
    partitions: int = 3,
    train_rows: int = 24,
    lr: float = 0.1,
    seed: int = 7,
) -> TinyJob:
    """A job of ``model`` (a class of MODEL_SOURCE with 4 inputs) on random 4-feature rows of
    3 classes; the same weights and rows on every call."""
    torch.manual_seed(0)
    kwargs = json.dumps({"n_in": 4, "n_out": 3})
    module = source.build(MODEL_SOURCE, model, kwargs)
    layout = ParamLayout.of_module(module)
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(train_rows, 4)).astype(np.float32), rng.integers(0, 3, train_rows))
    test = (rng.normal(size=(9, 4)).astype(np.float32), rng.integers(0, 3, 9))
    spec = co_pb2.JobSpec(
        name=name,
        model=co_pb2.ModelSpec(
            source=MODEL_SOURCE,
            class_name=model,
            kwargs_json=kwargs,
            params=[co_pb2.ParamInfo(name=s.name, shape=s.shape) for s in layout.slots],
        ),
        mode=mode,
        optimizer=common_pb2.OptimizerConfig(name="sgd", lr=lr),
        epochs=epochs,
        batch_size=4,
        partitions=partitions,
        loss="cross_entropy",
        seed=seed,
    )
    blobs = {
        "dataset": Dataset.from_arrays(train, test).to_blob(seed=seed),
        "initial_state": state.dumps(initial),
    }
    return TinyJob(spec, blobs, initial, layout)


# --- waiting for a state ---

# What a call to a server that is restarting, or cut off, ends with for a while.
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class WaitTimeout(AssertionError, TimeoutError):
    """A wait that ran out: a test failure, and a TimeoutError for callers that add to it."""


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    *,
    what: str,
    poll: float = 0.05,
    tolerate: Collection[grpc.StatusCode] = (),
    context: Callable[[], str] | None = None,
) -> float:
    """Poll ``predicate`` until it is truthy; the monotonic time it was.

    A call failing with a status in ``tolerate`` (a ``grpc.RpcError``, or an SDK error whose
    ``code`` is one) counts as "not yet": often the unreachable server is what is waited out.
    At the deadline: WaitTimeout naming ``what``, the last tolerated error, and ``context()``
    (a log tail, the state last seen) when given.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            if predicate():
                return time.monotonic()
        except Exception as e:
            code = _call_status(e)
            if code is None or code not in tolerate:
                raise
            last = f" (last: {code.name}: {e})"
        if time.monotonic() >= deadline:
            extra = f"\n{context()}" if context is not None else ""
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}{last}{extra}")
        time.sleep(poll)


def _call_status(error: BaseException) -> grpc.StatusCode | None:
    """The status a failed call ended with: a gRPC error's, or the SDK's ``code``."""
    if isinstance(error, grpc.Call):
        return error.code()
    code = getattr(error, "code", None)  # pscluster.client.errors.PSClusterError
    return code if isinstance(code, grpc.StatusCode) else None


# --- refused calls ---


def rpc_failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and details a call fails with; the test fails if the call succeeds.
    A streamed reply is read to its end (it fails only when read)."""
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as e:
        assert isinstance(e, grpc.Call)
        return e.code(), e.details() or ""
    raise AssertionError("the call succeeded; expected an error status")


def rpc_code(call: Callable[[], object]) -> grpc.StatusCode:
    return rpc_failure(call)[0]


# --- every RPC of a service, from the descriptors ---


@dataclass(frozen=True)
class Rpc:
    """One method of a service: its path on the wire, its messages and whether they stream."""

    name: str
    path: str
    request: type[Message]
    reply: type[Message]
    client_streaming: bool
    server_streaming: bool


def rpcs_of(module: ModuleType, service: str) -> dict[str, Rpc]:
    """Every method of ``service`` in the generated ``module``, by name: a new RPC in the
    proto is here (and fuzzed) without editing a table."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return {
        m.name: Rpc(
            name=m.name,
            path=f"/{descriptor.full_name}/{m.name}",
            request=GetMessageClass(m.input_type),
            reply=GetMessageClass(m.output_type),
            client_streaming=m.client_streaming,
            server_streaming=m.server_streaming,
        )
        for m in descriptor.methods
    }


SHARD_RPCS = rpcs_of(ps_pb2, "ParameterServer")
COORDINATOR_RPCS = rpcs_of(co_pb2, "Coordinator")
