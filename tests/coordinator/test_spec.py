"""Submission checks: every bad field or blob is refused with a message naming it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from pscluster.coordinator.spec import read_submission, shard_optimizer, validate_job
from pscluster.data.dataset import Dataset
from pscluster.errors import FailedPrecondition, InvalidArgument, PSError
from pscluster.model import state
from pscluster.v1 import common_pb2
from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.support import TinyJob, tiny_job


def check(job: TinyJob, configured_shards: int = 2) -> co_pb2.JobSpec:
    spec, blobs = read_submission(job.chunks())
    return validate_job(spec, blobs, configured_shards, default_partitions=12).spec


def test_a_good_job_passes_with_its_plan_made_explicit() -> None:
    job = tiny_job(partitions=0, train_rows=5)
    job.spec.shards = 0
    spec = check(job, configured_shards=2)
    assert spec.partitions == 5  # the default 12, capped at the number of training rows
    assert spec.shards == 2  # 0 means every configured shard
    assert spec.model.source == job.spec.model.source


def test_with_local_steps_the_shards_only_add_what_the_workers_send() -> None:
    spec = tiny_job().spec
    spec.optimizer.CopyFrom(common_pb2.OptimizerConfig(name="adam", lr=0.002, weight_decay=0.1))
    assert shard_optimizer(spec) == spec.optimizer  # one step per push: the job's optimizer

    spec.local_steps = 8

    # The job's optimizer runs on the workers; the shards take plain SGD steps at its lr.
    assert shard_optimizer(spec) == common_pb2.OptimizerConfig(name="sgd", lr=0.002)


def _set(path: str, value: object) -> Callable[[co_pb2.JobSpec], None]:
    def apply(spec: co_pb2.JobSpec) -> None:
        *parents, leaf = path.split(".")
        target: object = spec
        for p in parents:
            target = getattr(target, p)
        setattr(target, leaf, value)

    return apply


def _dgc_local_steps(spec: co_pb2.JobSpec) -> None:
    spec.local_steps = 4
    spec.compression.name = "dgc"


def _params(*entries: tuple[str, list[int]]) -> Callable[[co_pb2.JobSpec], None]:
    def apply(spec: co_pb2.JobSpec) -> None:
        del spec.model.params[:]
        for name, shape in entries:
            spec.model.params.add(name=name, shape=shape)

    return apply


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("name", "x" * 201), "name has 201 characters"),
        (_set("model.source", "  "), "model.source is empty"),
        (_set("model.source", "class Tiny(:\n"), "model.source does not compile"),
        (_set("model.class_name", "not a name"), "model.class_name"),
        (_set("model.class_name", "class"), "model.class_name"),
        (_set("model.kwargs_json", "[1, 2]"), "model.kwargs_json: .*JSON object"),
        (_set("model.kwargs_json", "{oops"), "model.kwargs_json: .*not valid JSON"),
        (_params(), "model.params is empty"),
        (_params(("fc.weight", [3, 4]), ("fc.weight", [3])), "appears twice"),
        (_params(("fc.weight", [3, 0])), "every dimension must be >= 1"),
        (_params(("", [3])), r"model.params\[0\].name is empty"),
        (_set("mode", "hogwild"), "mode 'hogwild' is not supported"),
        (_set("optimizer.name", "lbfgs"), "optimizer.name"),
        (_set("optimizer.lr", 0.0), "optimizer.lr"),
        (_set("optimizer.lr", float("nan")), "optimizer.lr"),
        (_set("optimizer.momentum", -0.5), "optimizer.momentum"),
        (_set("epochs", 0), "epochs=0 is out of range"),
        (_set("epochs", 10_001), "epochs=10001 is out of range"),
        (_set("batch_size", 0), "batch_size=0"),
        (_set("shards", 3), r"shards=3 is out of range; expected 0..2"),
        (_set("local_steps", 1025), r"local_steps=1025 is out of range; expected 0..1024"),
        (_dgc_local_steps, r"compression 'dgc' keeps its own momentum .* use 'topk'"),
        (_set("loss", "hinge"), "loss 'hinge' is unknown"),
        (_set("compression.name", "zstd"), r"compression\.name 'zstd' is unknown"),
        (_set("compression.ratio", 1.5), r"compression\.ratio=1\.5 is out of range"),
        (_set("compression.ratio", -0.1), r"compression\.ratio=-0\.1 is out of range"),
        (_set("compression.momentum", 1.0), r"compression\.momentum=1\.0 is out of range"),
        (_set("compression.clip_norm", -1.0), r"compression\.clip_norm=-1\.0 is invalid"),
        (_set("compression.pull_dtype", 9), r"compression\.pull_dtype=9 is unknown"),
        (_set("backup_workers", 1), r"backup_workers=1 needs mode 'sync'"),
        (_set("stragglers.factor", 1.0), r"stragglers\.factor=1\.0 is out of range"),
        (_set("stragglers.factor", float("nan")), r"stragglers\.factor=nan is out of range"),
        (_set("stragglers.alpha", 1.5), r"stragglers\.alpha=1\.5 is out of range"),
        (_set("stragglers.grace_seconds", -1.0), r"stragglers\.grace_seconds=-1\.0"),
    ],
)
def test_a_bad_spec_field_is_named(change: Callable[[co_pb2.JobSpec], None], message: str) -> None:
    job = tiny_job()
    change(job.spec)
    with pytest.raises(InvalidArgument, match=message):
        check(job)


@pytest.mark.parametrize(("mode", "in_force"), [("ssp", 3), ("sync", 0), ("async", 0)])
def test_only_ssp_keeps_a_staleness(mode: str, in_force: int) -> None:
    job = tiny_job(mode=mode)
    job.spec.staleness = 3
    assert check(job).staleness == in_force


def test_no_configured_shards_is_a_coordinator_problem() -> None:
    with pytest.raises(FailedPrecondition, match="no shards configured"):
        check(tiny_job(), configured_shards=0)


def _state(**tensors: torch.Tensor) -> bytes:
    return state.dumps(tensors)


@pytest.mark.parametrize(
    ("blob", "data", "message"),
    [
        ("initial_state", b"garbage", "initial state is not a valid safetensors"),
        (
            "initial_state",
            _state(**{"fc.weight": torch.zeros(3, 4)}),
            "initial state has no trainable parameter 'fc.bias'",
        ),
        (
            "initial_state",
            _state(**{"fc.weight": torch.zeros(4, 3), "fc.bias": torch.zeros(3)}),
            r"'fc.weight' as torch.float32 of shape \[4, 3\]; the spec says "
            r"torch.float32 of shape \[3, 4\]",
        ),
        (
            "initial_state",
            _state(
                **{"fc.weight": torch.zeros(3, 4, dtype=torch.float64), "fc.bias": torch.zeros(3)}
            ),
            "'fc.weight' as torch.float64",
        ),
        ("dataset", b"\x00" * 16, "uploaded data is not a valid safetensors"),
        (
            "dataset",
            _state(train_x=torch.zeros(4, 4), train_y=torch.zeros(4, dtype=torch.int64)),
            "uploaded data lacks",
        ),
        (
            "dataset",
            Dataset.from_arrays(
                (torch.zeros(4, 4), torch.zeros(4)), (torch.zeros(2, 4), torch.zeros(2))
            ).to_blob(),
            r"train targets \(y\) are torch.float32 of shape \[4\]; cross_entropy needs int64",
        ),
        (
            "dataset",
            Dataset.from_arrays(
                (torch.zeros(4, 4), torch.full((4,), -1, dtype=torch.int64)),
                (torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64)),
            ).to_blob(),
            "negative class labels",
        ),
    ],
)
def test_a_bad_blob_is_named(blob: str, data: bytes, message: str) -> None:
    job = tiny_job()
    job.blobs[blob] = data
    with pytest.raises(InvalidArgument, match=message):
        check(job)


def test_mse_needs_float_targets() -> None:
    job = tiny_job()
    job.spec.loss = "mse"
    with pytest.raises(InvalidArgument, match="loss 'mse' needs floating-point targets"):
        check(job)


def _chunk(blob: str, data: bytes = b"x") -> co_pb2.SubmitJobChunk:
    return co_pb2.SubmitJobChunk(blob=common_pb2.BlobChunk(blob=blob, data=data))


def _end(blob_bytes: int) -> co_pb2.SubmitJobChunk:
    return co_pb2.SubmitJobChunk(end=co_pb2.SubmitEnd(blob_bytes=blob_bytes))


@pytest.mark.parametrize(
    ("stream", "error", "message"),
    [
        ([], InvalidArgument, "stream is empty"),
        ([_chunk("dataset")], InvalidArgument, "first message must be the JobSpec"),
        ([co_pb2.SubmitJobChunk()], InvalidArgument, "must carry a spec, a blob or the end"),
        (
            [co_pb2.SubmitJobChunk(spec=co_pb2.JobSpec())] * 2,
            InvalidArgument,
            "two specs",
        ),
        (
            [co_pb2.SubmitJobChunk(spec=co_pb2.JobSpec()), _chunk("weights")],
            InvalidArgument,
            "blob 'weights' is unknown",
        ),
        (
            [co_pb2.SubmitJobChunk(spec=co_pb2.JobSpec()), _chunk("dataset")],
            InvalidArgument,
            "stopped before its end message",
        ),
        (
            [co_pb2.SubmitJobChunk(spec=co_pb2.JobSpec()), _chunk("dataset"), _end(2)],
            InvalidArgument,
            "carried 1 blob bytes but its end message says 2",
        ),
        (
            [co_pb2.SubmitJobChunk(spec=co_pb2.JobSpec()), _end(0), _chunk("dataset")],
            InvalidArgument,
            "end message must be the last",
        ),
        ([_end(0)], InvalidArgument, "ended before its JobSpec"),
    ],
)
def test_a_malformed_stream_is_refused(
    stream: list[co_pb2.SubmitJobChunk], error: type[PSError], message: str
) -> None:
    with pytest.raises(error, match=message):
        read_submission(stream)


def test_an_oversized_submission_is_refused_early() -> None:
    stream = [co_pb2.SubmitJobChunk(spec=co_pb2.JobSpec())] + [_chunk("dataset", b"x" * 100)] * 5
    with pytest.raises(PSError, match="exceeds 300 bytes"):
        read_submission(stream, max_bytes=300)


def test_a_compression_config_is_kept_in_the_plan() -> None:
    job = tiny_job()
    job.spec.compression.name = "dgc"
    job.spec.compression.ratio = 0.001
    job.spec.compression.warmup_epochs = 3
    assert check(job).compression == job.spec.compression


def test_a_job_without_its_blobs_is_refused() -> None:
    job = tiny_job()
    del job.blobs["initial_state"]
    with pytest.raises(InvalidArgument, match=r"\['initial_state'\] missing"):
        check(job)
    job = tiny_job()
    del job.blobs["dataset"]
    with pytest.raises(InvalidArgument, match=r"\['dataset'\] missing"):
        check(job)


def test_a_data_source_job_uploads_no_dataset_and_keeps_its_partitions() -> None:
    job = tiny_job(partitions=50)  # more partitions than its 24 uploaded rows
    job.spec.data.CopyFrom(co_pb2.DataSpec(source="npy", args_json='{"path": "/d"}'))
    with pytest.raises(InvalidArgument, match="uploads a dataset as well"):
        check(job)
    del job.blobs["dataset"]
    assert check(job).partitions == 50  # a source's rows are learned later
    for data, message in [
        (co_pb2.DataSpec(source="csv"), "data source 'csv' is unknown"),
        (co_pb2.DataSpec(source="function"), "names the function of a 'function' source"),
        (co_pb2.DataSpec(source="npy", args_json="[1]"), "must be a JSON object"),
    ]:
        job.spec.data.CopyFrom(data)
        with pytest.raises(InvalidArgument, match=message):
            check(job)
