"""Batch inference jobs: a submission checked, recorded and scheduled as partitions to score.

To clients a predict job is a job like the others (listed, followed, cancelled, resumed after
a restart), but it never touches a shard: its model is a completed job's saved model (linked,
not copied) or one uploaded with it, its inputs are the uploaded rows, and its partitions are
leased to workers as PREDICT units (:mod:`pscluster.coordinator.core.kinds.predict`), which
reuse the lease book's expiry: a dead worker's partition is handed out and scored again.
"""

from __future__ import annotations

import math
import uuid

from pscluster.coordinator import blobs
from pscluster.coordinator import store as st
from pscluster.coordinator.core.job_plan import JobPlan
from pscluster.coordinator.lease_values import PREDICT
from pscluster.coordinator.runtime import Runtime
from pscluster.coordinator.spec import MAX_BATCH_SIZE, MAX_NAME, MAX_PARTITIONS
from pscluster.coordinator.stragglers import StragglerSettings
from pscluster.data import sources
from pscluster.data.predict_inputs import InputsLayout, partition_range
from pscluster.errors import FailedPrecondition, InvalidArgument, NotFound
from pscluster.model import objective, outputs, state
from pscluster.v1 import coordinator_pb2 as co_pb2

# Rows per partition when the submission leaves it to the coordinator: a partition is the
# work redone when a worker dies, and what a worker holds of the inputs at once.
DEFAULT_PARTITION_ROWS = 8192
DEFAULT_BATCH_SIZE = 1024
PRECISIONS = ("fp32", "bf16")


def is_predict(job: st.JobRecord) -> bool:
    return co_pb2.JobSpec.FromString(job.spec).HasField("predict")


def submit(rt: Runtime, spec: co_pb2.JobSpec, data: dict[str, bytearray]) -> st.JobRecord:
    """Check a predict submission, store it and start handing its partitions out."""
    explicit, source = _validate(rt, spec, data)
    job_id = f"j-{uuid.uuid4().hex[:8]}"
    if blobs.DATASET in data:  # absent when the workers read a source
        rt.blobs.write(job_id, blobs.DATASET, data[blobs.DATASET])
    if source is None:
        rt.blobs.write(job_id, blobs.INITIAL_STATE, data[blobs.INITIAL_STATE])
        state_blob = data[blobs.INITIAL_STATE]
        num_params = sum(math.prod(e["shape"]) for k, e in _entries(state_blob).items())
    else:
        # The trained model as this job's initial state, linked rather than copied.
        rt.blobs.link(source.job_id, blobs.MODEL, job_id, blobs.INITIAL_STATE)
        num_params = source.num_params
    now = rt.wall()
    record = st.JobRecord(
        job_id=job_id,
        name=explicit.name,
        spec=explicit.SerializeToString(),
        mode="",
        epochs=1,
        partitions=explicit.partitions,
        num_params=num_params,
        shards=[],
        state=st.RUNNING,
        created_unix=now,
        started_unix=now,
        status_message="running: waiting for workers",
    )
    rt.store.create_job(record)
    with rt.lock:
        rt.core.add_job(plan(record), rt.mono())
    return record


def plan(job: st.JobRecord) -> JobPlan:
    """What the scheduling core needs of a stored predict job: one epoch of whole partitions."""
    return JobPlan(
        job.job_id,
        epochs=1,
        partitions=job.partitions,
        mode="async",  # no shards and no steps: nothing for a consistency mode to decide
        stragglers=StragglerSettings.parse(0.0, 0.0, True, 0.0),
        epoch=job.epoch,
        done=job.done_partitions,
        kind=PREDICT,
    )


def partition_rows(spec: co_pb2.JobSpec, partitions: int, partition: int) -> int:
    return partition_range(spec.predict.rows, partitions, partition).length


def _validate(
    rt: Runtime, spec: co_pb2.JobSpec, data: dict[str, bytearray]
) -> tuple[co_pb2.JobSpec, st.JobRecord | None]:
    """The spec with everything in force filled in, and the job whose model scores (None: the
    uploaded one). Every error names the field and what is expected."""
    explicit = co_pb2.JobSpec()
    explicit.CopyFrom(spec)
    if len(spec.name) > MAX_NAME:
        raise InvalidArgument(f"name has {len(spec.name)} characters; at most {MAX_NAME}")
    rows = _input_rows(spec, data)
    source = _model_source(rt, spec, data, explicit)
    outputs.check_kind(spec.predict.output, explicit.loss)
    explicit.batch_size = spec.batch_size or DEFAULT_BATCH_SIZE
    if not 1 <= explicit.batch_size <= MAX_BATCH_SIZE:
        raise InvalidArgument(f"batch_size={spec.batch_size} is outside 1..{MAX_BATCH_SIZE}")
    explicit.precision = spec.precision or "fp32"
    if explicit.precision not in PRECISIONS:
        raise InvalidArgument(
            f"precision {spec.precision!r} is not offered for inference; expected one of "
            f"{list(PRECISIONS)} (bf16 autocasts on CPUs and GPUs)"
        )
    wanted = spec.partitions or math.ceil(rows / DEFAULT_PARTITION_ROWS)
    if not 1 <= wanted <= MAX_PARTITIONS:
        raise InvalidArgument(f"partitions={spec.partitions} is outside 0..{MAX_PARTITIONS}")
    explicit.partitions = min(wanted, rows)  # no empty partition
    explicit.epochs = 1
    return explicit, source


def _input_rows(spec: co_pb2.JobSpec, data: dict[str, bytearray]) -> int:
    """The rows to score: the uploaded inputs', or those of the source the workers read (as
    the client counted them; a worker whose count differs fails the job)."""
    if spec.HasField("data"):
        if blobs.DATASET in data:
            raise InvalidArgument(
                "a predict job scores a source (data) or uploaded inputs ('dataset'), not both"
            )
        sources.check_spec(spec.data)
        if spec.data.source not in sources.BUILTIN:
            raise InvalidArgument(
                f"data.source {spec.data.source!r}: a predict job reads a built-in source "
                f"{list(sources.BUILTIN)}"
            )
        if spec.predict.split not in sources.SPLITS:
            raise InvalidArgument(
                f"predict.split {spec.predict.split!r} is not one of {list(sources.SPLITS)}"
            )
        if spec.predict.rows < 1:
            raise InvalidArgument("predict.rows must be the source's row count (>= 1)")
        return spec.predict.rows
    if blobs.DATASET not in data:
        raise InvalidArgument("a predict job needs its inputs: the blob 'dataset' is missing")
    layout = InputsLayout.of_header(state.header(data[blobs.DATASET], "the inputs to score")[0])
    state.views(data[blobs.DATASET], "the inputs to score")  # every entry fits the file
    if layout.rows != spec.predict.rows:
        raise InvalidArgument(
            f"predict.rows is {spec.predict.rows} but the inputs have {layout.rows} rows"
        )
    return layout.rows


def _model_source(
    rt: Runtime, spec: co_pb2.JobSpec, data: dict[str, bytearray], explicit: co_pb2.JobSpec
) -> st.JobRecord | None:
    """A completed job's model (its code and loss copied into ``explicit``), or the upload."""
    if not spec.predict.model_job:
        if blobs.INITIAL_STATE not in data:
            raise InvalidArgument(
                "a predict job scores a completed job's model (predict.model_job) or an "
                "uploaded one: the blob 'initial_state' is missing"
            )
        if not (spec.model.class_name and spec.model.source):
            raise InvalidArgument("an uploaded model needs model.source and model.class_name")
        _entries(data[blobs.INITIAL_STATE])
        return None
    if blobs.INITIAL_STATE in data:
        raise InvalidArgument(
            "predict.model_job names the model and an 'initial_state' was uploaded too; "
            "send one or the other"
        )
    source = rt.store.get_job(spec.predict.model_job)
    if source is None:
        raise NotFound(f"predict.model_job {spec.predict.model_job!r} is an unknown job")
    if is_predict(source):
        raise InvalidArgument(f"job {source.job_id} is a predict job: it has no model to score")
    if source.state != st.COMPLETED or not rt.blobs.exists(source.job_id, blobs.MODEL):
        raise FailedPrecondition(
            f"job {source.job_id} is {source.state}: it has no trained model yet; predict "
            "with it once it has completed"
        )
    trained = co_pb2.JobSpec.FromString(source.spec)
    explicit.model.CopyFrom(trained.model)
    explicit.loss = objective.loss_name(trained.loss)
    return source


def _entries(blob: bytearray) -> dict[str, dict[str, list[int]]]:
    header = state.header(blob, "the uploaded model's state")[0]
    return {k: v for k, v in header.items() if k != "__metadata__"}


__all__ = ["DEFAULT_PARTITION_ROWS", "is_predict", "partition_rows", "plan", "submit"]
