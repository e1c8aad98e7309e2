"""``Client.compress`` against the cluster: the trained model and its test set from a job (or
a model given here), the fine-tune of a pruned model as a job of its own, and the table.

The fine-tune job is the trained job again (its code, data, mode, optimizer, batch size),
for ``finetune_epochs`` epochs, starting from the pruned weights, with
``JobSpec.hold_zeros`` naming the pruned parameters: the shards set their pruned entries
back to zero after every optimizer step, in every mode, so the model it returns is still the
pruned one (:mod:`pscluster.server.zero_mask`). Everything the request can get wrong is
found before that job is submitted (:func:`pscluster.model_compression.pipeline.prepare`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pscluster.client.compress_options import Compressed, CompressOptions
from pscluster.client.errors import InvalidJobError
from pscluster.client.job import Job
from pscluster.client.payload import InitFrom, Payload, payload_for
from pscluster.client.submit_options import SubmitOptions
from pscluster.client.trained import trained_spec
from pscluster.client.wire_configs import DEFAULT_OPTIMIZER, optimizer_config
from pscluster.data.dataset import Dataset
from pscluster.errors import PSError
from pscluster.model import rebuild, state
from pscluster.model.source import parse_kwargs
from pscluster.model_compression import pipeline
from pscluster.model_compression.compress import test_set_of
from pscluster.model_compression.measure import TestSet
from pscluster.v1 import coordinator_pb2 as co_pb2

if TYPE_CHECKING:
    from pscluster.client.sdk import Client

# Bytes a second an upload is given at least, beyond the RPC deadline (as Client.submit).
UPLOAD_FLOOR = 20e6
MAX_NAME = 200
# A fine-tune starts from trained weights: by default it runs the job's optimizer at a tenth
# of its learning rate (as pruning papers retrain, Han et al. 2015), so that its last epoch
# does not throw away what training reached. finetune={"optimizer": ...} sets another.
FINETUNE_LR_SCALE = 0.1
State = dict[str, torch.Tensor]


def compress(client: Client, job: Job | str | None, options: CompressOptions) -> Compressed:
    """Compress a completed job's model (``job``) or ``options.model`` with its state."""
    request = options.request()
    if job is None:
        model, test, finetune = _local(client, options)
        source = type(model).__name__
    else:
        handle = job if isinstance(job, Job) else client.job(job)
        model, test, finetune = _of_job(client, handle, options)
        source = handle.id
    try:
        prepared = pipeline.prepare(model, request, options.output_path)
    except ValueError as e:
        raise InvalidJobError(str(e)) from e
    jobs: list[Job] = []
    result = pipeline.run(model, test, prepared, finetune(jobs), source)
    path = options.output_path
    if options.report is not None:
        result.report.save(Path(options.report))
    return Compressed(result.report, result.model, path, jobs[0] if jobs else None, result.masks)


Finetuner = Callable[[list[Job]], pipeline.Finetune]


def _of_job(
    client: Client, job: Job, options: CompressOptions
) -> tuple[nn.Module, TestSet, Finetuner]:
    """The job's model with its trained state, its test set, and how to fine-tune it."""
    if options.model is not None or options.state is not None or options.train is not None:
        raise InvalidJobError("pass either a job or model=, state= and train=, not both")
    spec = _trained_spec(client, job)
    try:
        code = rebuild.load_code(spec.model)
        with torch.random.fork_rng(devices=[]):
            model = code.model_class(spec.model.class_name)(**parse_kwargs(spec.model.kwargs_json))
        loss_fn = rebuild.loss_function(spec, code)
    except Exception as e:  # the user's code
        raise InvalidJobError(f"the model of job {job.id} does not build here: {e}") from e
    try:
        model.load_state_dict(job.fetch_model())
    except RuntimeError as e:
        raise InvalidJobError(f"the model of job {job.id} does not load its state: {e}") from e
    blob = bytearray() if spec.data.source else _dataset_blob(client, job.id)
    test = _job_test_set(spec, blob, options, job.id)
    test = TestSet(test.x, test.y, spec.loss, spec.metric, loss_fn)

    def finetuner(jobs: list[Job]) -> pipeline.Finetune:
        def finetune(pruned: State, held: list[str]) -> tuple[State, str]:
            tuned = _finetune_spec(spec, job.id, held, options)
            payload = Payload(tuned, bytes(blob), state.dumps(pruned))
            return _train(client, payload, options, jobs)

        return finetune

    return model, test, finetuner


def _local(client: Client, options: CompressOptions) -> tuple[nn.Module, TestSet, Finetuner]:
    """``options.model`` built with ``options.state``; its fine-tune submitted as ``submit``
    would submit the class."""
    cls, given = options.model, options.state
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or given is None:
        raise InvalidJobError(
            "pass the job whose model to compress, or model= (an nn.Module class) and state= "
            "(its state_dict)"
        )
    if options.test is None:
        raise InvalidJobError("a model that is not a job's is measured on test=(X, y): pass it")
    if options.finetune_epochs and options.train is None:
        raise InvalidJobError("the fine-tune trains on train=(X, y): pass it")
    kwargs = dict(options.model_kwargs or {})
    try:
        model = cls(**kwargs)
        model.load_state_dict(dict(given))
        test = test_set_of(options.test, options.loss, options.metric)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InvalidJobError(f"cannot compress {cls.__name__}: {e}") from e

    def finetuner(jobs: list[Job]) -> pipeline.Finetune:
        def finetune(pruned: State, held: list[str]) -> tuple[State, str]:
            overrides = dict(options.finetune or {})
            if "optimizer" not in overrides:
                lr = DEFAULT_OPTIMIZER["lr"] * FINETUNE_LR_SCALE
                overrides["optimizer"] = {**DEFAULT_OPTIMIZER, "lr": lr}
            submit = SubmitOptions(
                epochs=options.finetune_epochs,
                model_kwargs=kwargs,
                loss=options.loss,
                metric=options.metric,
                code_dir=options.code_dir,
                **{"name": f"{cls.__name__} pruned, fine-tune", **overrides},
            )
            data = (options.train, options.test, None)
            payload = payload_for(cls, data, submit, InitFrom(pruned))
            payload.spec.hold_zeros.extend(held)
            return _train(client, payload, options, jobs)

        return finetune

    return model, test, finetuner


def _trained_spec(client: Client, job: Job) -> co_pb2.JobSpec:
    spec = trained_spec(client, job.id, "compress")
    if spec.model.tables:
        raise InvalidJobError(
            f"job {job.id}'s model has embedding tables on the shards; compressing them is "
            "not supported"
        )
    return spec


def _dataset_blob(client: Client, job_id: str) -> bytearray:
    """The job's uploaded data, whole: its test rows score the variants, and a fine-tune
    uploads it again."""
    request = co_pb2.FetchBlobRequest(job_id=job_id, blob="dataset")

    def fetch(timeout: float) -> bytearray:
        blob = bytearray()
        for chunk in client._stub.FetchBlob(request, timeout=timeout):
            blob += chunk.data
        return blob

    return client._call(f"fetch the data of job {job_id}", fetch)


def _job_test_set(
    spec: co_pb2.JobSpec, blob: bytearray, options: CompressOptions, job_id: str
) -> TestSet:
    if options.test is not None:
        try:
            return test_set_of(options.test, spec.loss, spec.metric)
        except ValueError as e:
            raise InvalidJobError(str(e)) from e
    if not blob:
        raise InvalidJobError(
            f"job {job_id} reads its data from a source the workers open; pass test=(X, y) to "
            "measure the variants on"
        )
    try:
        data = Dataset.from_buffer(blob)
    except PSError as e:
        raise InvalidJobError(f"the data of job {job_id} does not load: {e}") from e
    return TestSet(data.test_x, data.test_y)


def _finetune_spec(
    trained: co_pb2.JobSpec, job_id: str, held: list[str], options: CompressOptions
) -> co_pb2.JobSpec:
    """The trained job's spec, for ``finetune_epochs`` from the pruned state, zeros held."""
    spec = co_pb2.JobSpec()
    spec.CopyFrom(trained)
    spec.epochs = options.finetune_epochs
    spec.init_from = job_id
    spec.hold_zeros[:] = held
    overrides: Mapping[str, Any] = options.finetune or {}
    if "optimizer" not in overrides:
        spec.optimizer.lr *= FINETUNE_LR_SCALE
    for key, value in overrides.items():
        if key == "optimizer":
            spec.optimizer.CopyFrom(optimizer_config(value))
        else:
            try:
                setattr(spec, key, value)
            except (TypeError, ValueError) as e:
                raise InvalidJobError(f"finetune[{key!r}] = {value!r}: {e}") from e
    if "name" not in overrides:
        spec.name = f"{trained.name or job_id} pruned, fine-tune"[:MAX_NAME]
    return spec


def _train(
    client: Client, payload: Payload, options: CompressOptions, jobs: list[Job]
) -> tuple[State, str]:
    """Submit the fine-tune, wait for it, and return its trained state and its id."""
    stream = payload.chunks(client.settings.chunk_bytes)
    extra = (len(payload.dataset) + len(payload.initial_state)) / UPLOAD_FLOOR
    reply = client._call(
        "submit the fine-tune job",
        lambda t: client._stub.SubmitJob(stream, timeout=t + extra),
    )
    tuned = Job(client, reply.job_id, token=reply.token or None)
    jobs.append(tuned)
    tuned.wait(progress=options.progress, timeout=options.timeout)
    return tuned.fetch_model(), tuned.id
