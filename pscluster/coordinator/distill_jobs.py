"""Distillation jobs at the door: the teacher found, checked and attached to the student's job.

A distillation job (``JobSpec.distill``) is a training job like any other (shards, leases,
evaluation of its model, the student) whose workers also run a teacher: a completed training
job's saved model. The coordinator never runs user code, so it only checks what it knows (the
teacher exists, has finished and saved its model; the temperature, alpha and losses fit),
copies the teacher's code into the job's spec, so that every worker builds the teacher from
it (after a restart too), and links the teacher's saved model as the job's "teacher" blob
(:mod:`pscluster.worker.objectives` builds it). Whether the student's outputs match the
teacher's is found by the SDK, which runs both on a few rows before sending.
"""

from __future__ import annotations

from pscluster.coordinator import blobs, predict_jobs
from pscluster.coordinator import store as st
from pscluster.coordinator.runtime import Runtime
from pscluster.errors import FailedPrecondition, InvalidArgument, NotFound
from pscluster.model import distill
from pscluster.model.distill import Distillation
from pscluster.v1 import coordinator_pb2 as co_pb2

EVENT = "distilled"


def resolve(rt: Runtime, spec: co_pb2.JobSpec) -> tuple[co_pb2.JobSpec, st.JobRecord | None]:
    """The spec with its teacher's code filled in, and the teacher's job (None: the job does
    not distill). Every error names what is wrong and what is expected."""
    if not spec.HasField("distill"):
        return spec, None
    Distillation.of(spec.distill).check()
    distill.check_student_loss(spec.loss)
    teacher = _teacher(rt, spec.distill.teacher_job)
    trained = co_pb2.JobSpec.FromString(teacher.spec)
    distill.check_teacher_loss(spec.loss, trained.loss, teacher.job_id)
    explicit = co_pb2.JobSpec()
    explicit.CopyFrom(spec)
    explicit.distill.teacher_model.CopyFrom(trained.model)
    return explicit, teacher


def _teacher(rt: Runtime, job_id: str) -> st.JobRecord:
    if not job_id:
        raise InvalidArgument("distill.teacher_job is empty; name the completed job that teaches")
    teacher = rt.store.get_job(job_id)
    if teacher is None:
        raise NotFound(f"distill.teacher_job {job_id!r} is an unknown job")
    if predict_jobs.is_predict(teacher):
        raise InvalidArgument(f"job {job_id} is a predict job: it has no model to teach with")
    if teacher.state != st.COMPLETED:
        raise FailedPrecondition(
            f"the teacher {job_id} is {teacher.state}: distill from a completed job's model"
        )
    if not rt.blobs.exists(job_id, blobs.MODEL):
        raise FailedPrecondition(f"the teacher {job_id} has no saved model to teach with")
    return teacher


def attach(rt: Runtime, job_id: str, teacher: st.JobRecord) -> None:
    """The teacher's saved model as the job's "teacher" blob (a link, not a copy)."""
    rt.blobs.link(teacher.job_id, blobs.MODEL, job_id, blobs.TEACHER)


def record(rt: Runtime, job_id: str, spec: co_pb2.JobSpec, teacher: st.JobRecord) -> None:
    """An event saying which teacher the job learns from, and how (its metrics show it)."""
    settings = Distillation.of(spec.distill)
    what = f"{teacher.name}, " if teacher.name else ""
    message = (
        f"distilled from teacher {teacher.job_id} ({what}{teacher.num_params:,} parameters) "
        f"at temperature {settings.temperature:g}, alpha {settings.alpha:g}"
    )
    rt.store.append_event(job_id, st.EventRecord(rt.wall(), EVENT, "", message))
