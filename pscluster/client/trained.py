"""The spec of a completed training job whose model the SDK is about to use: to score rows
with, compress, or distill from. One check for the three, so that each refuses a job without
a trained model the same way, before anything is sent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pscluster.client.errors import InvalidJobError, JobNotFoundError
from pscluster.v1 import coordinator_pb2 as co_pb2

if TYPE_CHECKING:
    from pscluster.client.sdk import Client


def trained_spec(client: Client, job_id: str, use: str, role: str = "job") -> co_pb2.JobSpec:
    """The spec of job `job_id` (called `role` in messages: "job", "the teacher"), whose
    model is to `use` ("score with", "compress", "distill from"); InvalidJobError for an
    unknown job, a predict job or one that has not completed."""
    try:
        info = client.job(job_id).info()
    except JobNotFoundError:
        raise InvalidJobError(f"{role} {job_id!r} is an unknown job") from None
    if info.kind == "predict":
        raise InvalidJobError(f"{role} {job_id} is a predict job: it has no model to {use}")
    if info.state != "completed":
        hint = " (job.wait() until it has)" if info.state in ("pending", "running") else ""
        raise InvalidJobError(
            f"{role} {job_id} is {info.state}: it has no trained model yet; {use} a completed "
            f"job's model{hint}"
        )
    request = co_pb2.GetJobRequest(job_id=job_id)
    plan = client._call(
        f"get the model of job {job_id}", lambda t: client._stub.GetJobPlan(request, timeout=t)
    )
    spec: co_pb2.JobSpec = plan.spec
    return spec
