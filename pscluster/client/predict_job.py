"""``Client.predict`` and ``Client.submit_predict`` against the cluster: find the model, send
the payload (:mod:`pscluster.client.predict`), follow the predict job, fetch its outputs.

Every wait has a deadline and says what it waited for: the job's scoring (``timeout``), the
upload and the fetch (the RPC deadline plus a second per :data:`TRANSFER_FLOOR` bytes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pscluster.client import predict
from pscluster.client.job import Job
from pscluster.client.predict import PredictOptions, PredictPayload
from pscluster.client.trained import trained_spec

if TYPE_CHECKING:
    from pscluster.client.sdk import Client

# Bytes a second an upload or a fetch is given at least, beyond the RPC deadline.
TRANSFER_FLOOR = 20e6
# How often a predict job is asked whether it is done: scoring often takes seconds, and the
# wait's granularity would be a visible share of it at Job.wait's default 0.5 s.
POLL_SECONDS = 0.1


def submit(
    client: Client, job: Job | str | None, data: object, options: PredictOptions
) -> tuple[Job, PredictPayload]:
    """Check everything and submit the predict job (nothing is sent if a check fails)."""
    if job is None:
        payload = predict.for_model(data, options)
    else:
        job_id = job.id if isinstance(job, Job) else job
        payload = predict.for_job(job_id, trained_spec(client, job_id, "score with"), data, options)
    stream = payload.chunks(client.settings.chunk_bytes)
    extra = (len(payload.inputs) + len(payload.state)) / TRANSFER_FLOOR
    reply = client._call(
        "submit the predict job", lambda t: client._stub.SubmitJob(stream, timeout=t + extra)
    )
    return Job(client, reply.job_id, token=reply.token or None), payload


def outputs_of(
    job: Job, payload: PredictPayload, *, progress: bool, timeout: float
) -> torch.Tensor:
    """Wait for the predict job (a progress bar if asked) and fetch its outputs."""
    try:
        job.wait(progress=progress, timeout=timeout, poll=POLL_SECONDS)
    except TimeoutError:
        info = job.info()
        raise TimeoutError(
            f"predict job {job.id} had scored {info.progress:.0%} of its "
            f"{payload.spec.predict.rows} rows after {timeout:g} s ({info.status_message}); "
            f"it goes on: fetch its outputs later with client.job({job.id!r}).predictions()"
        ) from None
    deadline = job.client.settings.rpc_timeout_seconds + payload.output_bytes / TRANSFER_FLOOR
    return job.predictions(timeout=deadline)
