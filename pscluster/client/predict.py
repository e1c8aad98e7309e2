"""What ``Client.predict`` sends, built and checked before the first byte leaves.

The model is a completed job's (its code from the job's plan, its state on the coordinator)
or one the user passes (a class and its ``state_dict``, shipped as source like a training
job's model). Either way it is built here from the code that would be sent and run on a few
of the rows, in ``eval()`` under ``no_grad`` and the precision asked for, as a worker will:
data whose shape does not fit the model, an output kind that does not fit it (probabilities
of a regression), a state that does not load, are an :class:`InvalidJobError` at the call,
not a failed job. The few rows are :func:`pscluster.client.dry_run.sample_rows`: the first,
the last, and those holding each integer input's extremes (an embedding index out of range).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pscluster.client.dry_run import sample_rows
from pscluster.client.errors import InvalidJobError
from pscluster.client.predict_source import is_source
from pscluster.client.predict_source import read as read_source
from pscluster.data import inputs, predict_inputs
from pscluster.data.inputs import Inputs
from pscluster.errors import PSError
from pscluster.model import bundle, objective, outputs, rebuild, state
from pscluster.model.hosted import attach_drawn_rows, host_tables, hosting
from pscluster.model.loader import LoadedBundle
from pscluster.model.source import parse_kwargs
from pscluster.transport import wire
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.worker.precision import Precision

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True, kw_only=True)
class PredictOptions:
    """How a predict job scores: ``output`` "logits", "probs" or "argmax"; ``precision``
    "fp32" or "bf16" (autocast on the workers); ``batch_size`` rows per forward pass;
    ``partitions`` leases the rows are cut into (0: one per 8192 rows); ``name`` for
    ``pscluster jobs``. ``model`` (a class), ``state`` (its state_dict), ``model_kwargs`` and
    ``code_dir`` describe an uploaded model, as ``Client.submit`` takes one. With a source
    (``data="npy"``), ``data_args`` are its reader's and ``split`` the split scored."""

    model: type[nn.Module] | None = None
    state: Mapping[str, torch.Tensor] | None = None
    model_kwargs: Mapping[str, Any] | None = None
    code_dir: str | Path | None = None
    output: str = outputs.LOGITS
    precision: str = "fp32"
    batch_size: int = 1024
    partitions: int = 0
    name: str = ""
    data_args: Mapping[str, Any] | None = None
    split: str = "test"


@dataclass(frozen=True)
class PredictPayload:
    spec: co_pb2.JobSpec
    inputs: bytes
    state: bytes  # the uploaded model's state_dict; b"" for a job's model
    row_shape: tuple[int, ...]  # of one row of the outputs, as the dry run found it
    dtype: torch.dtype

    @property
    def output_bytes(self) -> int:
        count = self.spec.predict.rows
        for d in self.row_shape:
            count *= d
        return count * torch.empty(0, dtype=self.dtype).element_size()

    def chunks(self, chunk_bytes: int) -> Iterator[co_pb2.SubmitJobChunk]:
        """The SubmitJob stream: the spec, the inputs, the model's state if uploaded, the end."""
        yield co_pb2.SubmitJobChunk(spec=self.spec)
        for name, blob in (("dataset", self.inputs), ("initial_state", self.state)):
            for piece in wire.chunks(memoryview(blob), chunk_bytes):
                yield co_pb2.SubmitJobChunk(blob=common_pb2.BlobChunk(blob=name, data=piece))
        total = len(self.inputs) + len(self.state)
        yield co_pb2.SubmitJobChunk(end=co_pb2.SubmitEnd(blob_bytes=total))


def for_job(
    job_id: str, trained: co_pb2.JobSpec, x: object, options: PredictOptions
) -> PredictPayload:
    """Scoring ``x`` with completed job ``job_id``'s model (``trained``: its spec)."""
    if options.model is not None or options.state is not None:
        raise InvalidJobError("pass either a job or model= and state=, not both")
    loss = objective.loss_name(trained.loss)
    spec, rows, blob = _spec(x, options, loss)
    spec.predict.model_job = job_id
    spec.name = options.name or f"predict with {job_id}"
    try:
        with torch.random.fork_rng(devices=[]), hosting():  # tables: no rows allocated here
            model = rebuild.load_code(trained.model).model_class(trained.model.class_name)(
                **parse_kwargs(trained.model.kwargs_json)
            )
        host_tables(model)  # rows drawn as the shards would, for the shapes only
        attach_drawn_rows(model)
    except Exception as e:
        raise InvalidJobError(f"the model of job {job_id} does not build here: {e}") from e
    row_shape, dtype = _try(model, rows, options, loss, f"the model of job {job_id}")
    return PredictPayload(spec, blob, b"", row_shape, dtype)


def for_model(x: object, options: PredictOptions) -> PredictPayload:
    """Scoring ``x`` with the model and state in ``options``, uploaded with the rows."""
    cls, given = options.model, options.state
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or given is None:
        raise InvalidJobError(
            "pass the job whose model scores the rows, or model= (an nn.Module class) and "
            "state= (its state_dict) to upload one"
        )
    if not isinstance(given, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in given.values()
    ):
        raise InvalidJobError("state must be a state_dict: a mapping of names to tensors")
    try:
        kwargs_json = json.dumps(dict(options.model_kwargs or {}))
        model_spec = co_pb2.ModelSpec(class_name=cls.__name__, kwargs_json=kwargs_json)
        bundle.collect(cls, code_dir=options.code_dir).to_proto(model_spec)
    except (TypeError, ValueError, PSError) as e:
        raise InvalidJobError(f"{cls.__name__} cannot be shipped: {e}") from e
    spec, rows, blob = _spec(x, options, "")
    spec.model.CopyFrom(model_spec)
    spec.name = options.name or f"predict with {cls.__name__}"
    model = _built(model_spec, given)
    row_shape, dtype = _try(model, rows, options, "", cls.__name__)
    return PredictPayload(spec, blob, state.dumps(dict(given)), row_shape, dtype)


def _spec(x: object, options: PredictOptions, loss: str) -> tuple[co_pb2.JobSpec, Inputs, bytes]:
    """The spec of the options, each checked, the rows to dry-run, and the inputs' blob
    (b"" for a source the workers read: its few rows read here are for the dry run only)."""
    try:
        outputs.check_kind(options.output, loss)
        source = read_source(x, options.data_args, options.split) if is_source(x) else None
        rows = source.sample if source else predict_inputs.from_user(x)
    except PSError as e:
        raise InvalidJobError(str(e)) from e
    if options.precision not in PRECISIONS:
        raise InvalidJobError(
            f"precision {options.precision!r} is not offered for inference; expected one of "
            f"{list(PRECISIONS)}"
        )
    for name, low in (("batch_size", 1), ("partitions", 0)):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidJobError(f"{name} must be an integer >= {low}, got {value!r}")
    n = source.rows if source else inputs.rows(rows, "X")
    spec = co_pb2.JobSpec(
        name=options.name,
        batch_size=options.batch_size,
        partitions=options.partitions,
        precision=options.precision,
        loss=loss,
        predict=co_pb2.PredictSpec(output=options.output, rows=n),
    )
    if source is None:
        return spec, rows, predict_inputs.to_blob(rows)
    spec.data.CopyFrom(source.data)
    spec.predict.split = source.split
    return spec, rows, b""


def _built(model_spec: co_pb2.ModelSpec, given: Mapping[str, torch.Tensor]) -> nn.Module:
    """The model from the code that would be sent, with the given state (strict)."""
    name = model_spec.class_name
    try:
        with torch.random.fork_rng(devices=[]):
            code = LoadedBundle(bundle.CodeBundle.from_proto(model_spec))
            model = code.model_class(name)(**parse_kwargs(model_spec.kwargs_json))
    except Exception as e:  # the user's module or constructor
        raise InvalidJobError(
            f"{name} does not build from the code that would be sent (the workers import "
            f"your model's module and the local modules it imports): {type(e).__name__}: {e}"
        ) from e
    try:
        model.load_state_dict(dict(given), strict=True)
    except RuntimeError as e:
        raise InvalidJobError(f"state does not load into {name}: {e}") from e
    return model


def _try(
    model: nn.Module, x: Inputs, options: PredictOptions, loss: str, what: str
) -> tuple[tuple[int, ...], torch.dtype]:
    """Run the model on a few rows as a worker will; the shape of an output row and its dtype."""
    n = inputs.rows(x, "X")
    picked = sample_rows(x, n)
    model.eval()
    try:
        with torch.no_grad(), Precision(options.precision, torch.device("cpu")).autocast():
            out = inputs.call(model, inputs.take(x, picked))
    except Exception as e:
        raise InvalidJobError(
            f"{what} fails on rows {picked.tolist()} of X ({_describe(x)}): "
            f"{type(e).__name__}: {e}; the data's shape must fit the model (a worker would "
            "fail the same way)"
        ) from e
    try:
        outputs.check_shape(options.output, tuple(out.shape), len(picked))
    except PSError as e:
        raise InvalidJobError(f"{what}: {e}") from e
    result = outputs.transform(out, options.output, loss)
    return tuple(result.shape[1:]), result.dtype


def _describe(x: Inputs) -> str:
    keys = inputs.structure(x).keys or ("",)
    return ", ".join(
        f"{f'[{k!r}] ' if k else ''}{t.dtype} rows of {tuple(t.shape[1:])}"
        for k, t in zip(keys, inputs.parts(x), strict=True)
    )
