"""Everything a submission must get right, checked before anything is stored.

Every error names the field and says what is expected, so the SDK can show it as is. A job
that passes here can be initialised on its shards and trained by any worker: the parameters
named in the spec are in the initial state with the right shapes, and the data load.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from pscluster.compression import parse_settings
from pscluster.coordinator import blobs
from pscluster.coordinator.model_spec import (
    buffer_layout_of,
    check_buffer_size,
    hold_zero_spans,
    initial_state,
    validate_model,
)
from pscluster.coordinator.stragglers import StragglerSettings
from pscluster.coordinator.tables import check_given_rows, validate_tables
from pscluster.data import sources
from pscluster.data.dataset import Dataset, structure_of
from pscluster.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from pscluster.model import objective, state
from pscluster.model.layout import ParamLayout
from pscluster.model.optimizer import parse_optimizer
from pscluster.server.consistency import AUTO, mode_traits, validate_job_consistency
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2

PRECISIONS = ("fp32", "bf16", "fp16")
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 1 << 20
MAX_PARTITIONS = 1 << 16
MAX_NAME = 200
# A submission is held in memory while it is checked; beyond this it is refused up front.
MAX_SUBMISSION_BYTES = 4 << 30
SUBMITTED_BLOBS = (blobs.DATASET, blobs.INITIAL_STATE)


@dataclass(frozen=True)
class ValidatedJob:
    spec: co_pb2.JobSpec  # with partitions and shards set to the values in force
    layout: ParamLayout
    flat: torch.Tensor  # the initial trainable parameters, float32, in layout order
    buffers: torch.Tensor  # the initial buffers, float64, in buffer layout order
    blobs: dict[str, bytearray]
    tables: dict[str, torch.Tensor]  # the tables' rows the initial state gives, by name


def read_submission(
    chunks: Iterable[co_pb2.SubmitJobChunk], max_bytes: int = MAX_SUBMISSION_BYTES
) -> tuple[co_pb2.JobSpec, dict[str, bytearray]]:
    """Split a SubmitJob stream into the spec and the blobs it carries.

    The stream must close with its end message: gRPC can show the server a client that was
    cancelled mid-upload as a stream that simply ended, and such a stream is no job."""
    spec: co_pb2.JobSpec | None = None
    parts: dict[str, bytearray] = {}
    total = 0
    stream = iter(chunks)
    for chunk in stream:
        kind = chunk.WhichOneof("part")
        if kind == "end":
            _check_end(chunk.end, spec, total)
            _refuse_anything_after_end(stream)
            assert spec is not None
            return spec, parts  # not copied: an upload may be gigabytes
        if kind == "spec":
            if spec is not None:
                raise InvalidArgument("the stream carries two specs; send the JobSpec once, first")
            spec = chunk.spec
        elif kind == "blob":
            total += _add_blob_chunk(chunk.blob, spec, parts, total, max_bytes)
        else:
            raise InvalidArgument("a SubmitJobChunk must carry a spec, a blob or the end")
    if spec is None:
        raise InvalidArgument("the stream is empty; send the JobSpec, then the blobs, then the end")
    raise InvalidArgument(
        "the stream stopped before its end message (an upload cut short); "
        "send the whole submission again"
    )


def _add_blob_chunk(
    blob: common_pb2.BlobChunk,
    spec: co_pb2.JobSpec | None,
    parts: dict[str, bytearray],
    total: int,
    max_bytes: int,
) -> int:
    """Append one blob chunk; returns its size."""
    if spec is None:
        raise InvalidArgument("the first message must be the JobSpec, then blob chunks")
    if blob.blob not in SUBMITTED_BLOBS:
        raise InvalidArgument(f"blob {blob.blob!r} is unknown; expected {list(SUBMITTED_BLOBS)}")
    if total + len(blob.data) > max_bytes:
        raise ResourceExhausted(f"the submission exceeds {max_bytes} bytes; use a smaller dataset")
    parts.setdefault(blob.blob, bytearray()).extend(blob.data)
    return len(blob.data)


def _check_end(end: co_pb2.SubmitEnd, spec: co_pb2.JobSpec | None, total: int) -> None:
    if spec is None:
        raise InvalidArgument("the stream ended before its JobSpec; send the JobSpec first")
    if end.blob_bytes != total:
        raise InvalidArgument(
            f"the stream carried {total} blob bytes but its end message says {end.blob_bytes}; "
            "send the whole submission again"
        )


def _refuse_anything_after_end(rest: Iterator[co_pb2.SubmitJobChunk]) -> None:
    if next(rest, None) is not None:
        raise InvalidArgument("the end message must be the last message of the stream")


def validate_job(
    spec: co_pb2.JobSpec,
    blob_data: dict[str, bytearray],
    configured_shards: int,
    default_partitions: int,
) -> ValidatedJob:
    layout = validate_spec(spec, configured_shards)
    _check_blobs(spec, blob_data)
    buffers = buffer_layout_of(spec)
    initial = initial_state(blob_data[blobs.INITIAL_STATE], layout, buffers)
    check_given_rows(spec, initial)
    explicit = co_pb2.JobSpec()
    explicit.CopyFrom(spec)
    explicit.partitions = spec.partitions or default_partitions
    if not spec.data.source:
        # Fewer partitions than rows, and no more shards than values: an empty lease or an
        # empty shard range is only overhead. (A data source's rows are known once a worker
        # opened it: see data_shapes.)
        rows = _dataset_rows(blob_data[blobs.DATASET], spec.loss)
        explicit.partitions = min(explicit.partitions, rows)
    # No more shards than values (an empty range is only overhead), unless the model has
    # tables, whose rows spread over every shard (a model of embeddings alone has no values).
    most = layout.size if not spec.model.tables else configured_shards
    explicit.shards = min(spec.shards or configured_shards, most)
    check_buffer_size(buffers, explicit.shards)
    if spec.mode != AUTO and not mode_traits(spec.mode, spec.backup_workers).clock_bound:
        # Only a mode with a clock bound (ssp) uses staleness; one sent with another mode (an
        # SDK default, a job file switched between modes) is dropped, so the plan shows what
        # is in force.
        explicit.staleness = 0
    tables = {t.name: initial[t.name] for t in spec.model.tables if t.name in initial}
    return ValidatedJob(
        explicit, layout, layout.flatten(initial), buffers.flatten(initial), blob_data, tables
    )


def validate_spec(spec: co_pb2.JobSpec, configured_shards: int) -> ParamLayout:
    """Check every field; returns the parameter layout the spec describes."""
    if configured_shards < 1:
        raise FailedPrecondition(
            "the coordinator has no shards configured; start it with --shards (PSC_SHARDS)"
        )
    if len(spec.name) > MAX_NAME:
        raise InvalidArgument(f"name has {len(spec.name)} characters; at most {MAX_NAME}")
    layout = validate_model(spec.model)
    hold_zero_spans(spec, layout)  # names a trainable parameter each, or InvalidArgument
    dense = {p.name for p in spec.model.params} | {b.name for b in spec.model.buffers}
    validate_tables(spec, dense)
    # The shards' own rules (and their one list of modes), so a job the coordinator accepts
    # is one every shard accepts.
    validate_job_consistency(spec.mode, spec.staleness, spec.backup_workers, spec.local_steps)
    validate_optimizer(spec.optimizer)
    # The shards' own parser: a codec the coordinator accepts is one every shard decodes.
    codec = parse_settings(spec.compression)
    straggler_settings(spec)
    _in_range("epochs", spec.epochs, 1, MAX_EPOCHS)
    _in_range("batch_size", spec.batch_size, 1, MAX_BATCH_SIZE)
    _in_range("partitions", spec.partitions, 0, MAX_PARTITIONS, "0 for the coordinator's default")
    _in_range("shards", spec.shards, 0, configured_shards, "0 for all configured shards")
    if spec.local_steps > 1 and codec.name == "dgc":
        raise InvalidArgument(
            "compression 'dgc' keeps its own momentum on the workers, and with local_steps > 1 "
            "the job's optimizer already runs there: use 'topk' (error feedback) with local steps"
        )
    objective.check_objective(spec.loss, spec.metric, spec.loss_function)
    if spec.precision and spec.precision not in PRECISIONS:
        raise InvalidArgument(
            f"precision {spec.precision!r} is unknown; expected one of {list(PRECISIONS)}"
        )
    return layout


def local_steps_fit(spec: co_pb2.JobSpec) -> bool:
    """Whether the job's workers may take local steps (mode "auto" asks, before choosing
    them): not with tables on the shards (each step looks its rows up there, so there is no
    local copy to step), nor with 'dgc', whose own momentum on the workers would run beside
    the job's optimizer."""
    return not spec.model.tables and parse_settings(spec.compression).name != "dgc"


def auto_local_steps(spec: co_pb2.JobSpec, most: int, batch_counts: Sequence[int] | None) -> int:
    """The most local steps per push mode "auto" may give the job's workers: ``most``
    (PSC_AUTO_MAX_LOCAL_STEPS), 1 where they do not fit (:func:`local_steps_fit`), and no more
    than the batches of its largest partition where those are known, since a window ends at
    its lease's end: more would only be a number in the switch's reason that no window takes
    (digits in 12 partitions: 3-4 batches each)."""
    if not local_steps_fit(spec):
        return 1
    if batch_counts:
        most = min(most, max(batch_counts))
    return max(1, most)


def straggler_settings(spec: co_pb2.JobSpec) -> StragglerSettings:
    """The job's straggler detection and mitigation, defaults filled in."""
    c = spec.stragglers
    return StragglerSettings.parse(c.factor, c.alpha, c.no_mitigation, c.grace_seconds)


def shard_optimizer(spec: co_pb2.JobSpec) -> common_pb2.OptimizerConfig:
    """What the shards run. With local SGD steps the job's optimizer runs on the workers and
    a push carries a window's parameter change divided by lr, so the shards only add it:
    plain SGD at the same lr (w -= lr * change / lr), averaged over a sync step's pushes."""
    if spec.local_steps > 1:
        return common_pb2.OptimizerConfig(name="sgd", lr=spec.optimizer.lr)
    return spec.optimizer


def validate_optimizer(opt: common_pb2.OptimizerConfig) -> None:
    """The shard's own rules, so a job the coordinator accepts is one every shard accepts."""
    parse_optimizer(opt)


def _in_range(field: str, value: int, low: int, high: int, note: str = "") -> None:
    if not low <= value <= high:
        hint = f" ({note})" if note else ""
        raise InvalidArgument(f"{field}={value} is out of range; expected {low}..{high}{hint}")


def _check_blobs(spec: co_pb2.JobSpec, blob_data: dict[str, bytearray]) -> None:
    """The uploaded data, or a data source; and the initial state either way."""
    if spec.data.source:
        sources.check_spec(spec.data)
        if blobs.DATASET in blob_data:
            raise InvalidArgument(
                f"the job reads its data from source {spec.data.source!r} and uploads a "
                "dataset as well; send one or the other"
            )
        needed = [blobs.INITIAL_STATE]
    else:
        needed = list(SUBMITTED_BLOBS)
    missing = [n for n in needed if n not in blob_data]
    if missing:
        raise InvalidArgument(f"blob(s) {missing} missing; this job needs {needed}")


def _dataset_rows(data: bytearray, loss: str) -> int:
    # Views on the upload, in its stored order (no copy of what may be gigabytes: the checks
    # read shapes and targets, whatever their order).
    ds = Dataset.from_tensors(state.views(data, "the uploaded data"), structure_of(data))
    name = objective.loss_name(loss)
    for split, y in (("train", ds.train_y), ("test", ds.test_y)):
        what = f"the {split} targets (y)"
        if name == "cross_entropy" and not y.is_floating_point():
            if y.numel() and int(y.min()) < 0:
                raise InvalidArgument(f"{what} have negative class labels; expected 0..C-1")
        elif name == "cross_entropy" and y.ndim < 2:
            raise InvalidArgument(
                f"{what} are {y.dtype} of shape {list(y.shape)}; cross_entropy needs int64 "
                "class labels, or class probabilities of shape (rows, classes)"
            )
        elif name in ("mse", "l1", "bce_with_logits") and not y.is_floating_point():
            raise InvalidArgument(
                f"{what} are {y.dtype}; loss {name!r} needs floating-point targets"
            )
        if name == "bce_with_logits":
            objective.check_binary(y, what)
    return int(ds.train_y.shape[0])
