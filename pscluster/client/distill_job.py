"""``Client.distill``: a training job whose model, the student, learns a completed job's model,
the teacher (knowledge distillation, Hinton et al. 2015), checked before anything is sent.

The job is what ``Client.submit`` would send for the student (the same dry run, the same
options), with ``JobSpec.distill`` naming the teacher: the coordinator links the teacher's
saved model to the job and every worker runs it beside the student
(:mod:`pscluster.worker.objectives`). What the cluster cannot know without running user code
is tried here: the teacher is built from its own job's code (in a bundle of its own: both
may ship a ``models.py``) and run with the student on a few training rows, through the very
objective the workers train with, so a student whose outputs do not match the teacher's, or
data the teacher does not take, is an :class:`InvalidJobError` at the call.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pscluster.client import data_source
from pscluster.client.dry_run import precision_here, sample_rows
from pscluster.client.errors import InvalidJobError
from pscluster.client.job import Job
from pscluster.client.payload import InitFrom, Payload, payload_for
from pscluster.client.submit_options import SubmitOptions
from pscluster.client.trained import trained_spec
from pscluster.data import inputs
from pscluster.data.dataset import Dataset
from pscluster.errors import PSError
from pscluster.model import distill, objective, rebuild, state
from pscluster.model.distill import Distillation
from pscluster.model.hosted import attach_drawn_rows, host_tables, hosting
from pscluster.model.source import parse_kwargs
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.worker.objectives import DistillObjective

if TYPE_CHECKING:
    from pscluster.client.sdk import Client

log = logging.getLogger(__name__)
Data = tuple[tuple[Any, Any] | None, tuple[Any, Any] | None, Any]


def submit(
    client: Client,
    teacher: Job | str,
    student: type[nn.Module],
    data: Data,
    distillation: Distillation,
    options: Mapping[str, Any],
    init_from: InitFrom | None,
) -> Job:
    """Check everything, then submit ``student`` to learn from ``teacher``'s model."""
    try:
        chosen = SubmitOptions(**options)
        distillation.check()
    except TypeError as e:  # an option that does not exist: the caller's mistake
        raise InvalidJobError(f"distill: {e}") from None
    except PSError as e:
        raise InvalidJobError(str(e)) from None
    loss = chosen.loss if isinstance(chosen.loss, str) else objective.CUSTOM
    _check(lambda: distill.check_student_loss(loss))
    teacher_id = teacher.id if isinstance(teacher, Job) else str(teacher)
    trained = trained_spec(client, teacher_id, "distill from", "the teacher")
    _check(lambda: distill.check_teacher_loss(loss, trained.loss, teacher_id))
    if not chosen.name:
        named = getattr(student, "__name__", "model")
        chosen = dataclasses.replace(chosen, name=f"distill {named} from {teacher_id}")
    payload = payload_for(student, data, chosen, init_from)  # the student's own dry run
    payload.spec.distill.CopyFrom(distillation.to_proto(teacher_id))
    with torch.random.fork_rng(devices=[]):  # building models draws from the user's stream
        try_with_teacher(payload, trained.model, teacher_id, data)
    return client._send(payload, "submit the distillation job")


def try_with_teacher(
    payload: Payload, teacher_model: co_pb2.ModelSpec, teacher_id: str, data: Data
) -> None:
    """The teacher and the student on a few training rows, forward and backward through the
    workers' own objective, in the job's precision."""
    sample = _sample(payload, data)
    if sample is None:  # a source only the workers read: they compare the outputs per batch
        log.warning("the data are not readable here: the teacher is tried on the workers")
        return
    spec = payload.spec
    rows = sample_rows(sample.train_x, int(sample.train_y.shape[0]))
    x, y = inputs.take(sample.train_x, rows), sample.train_y[rows]
    teacher = _teacher(teacher_model, teacher_id).eval()
    try:
        with torch.no_grad(), precision_here(spec).autocast():
            inputs.call(teacher, x)
    except Exception as e:  # the teacher's code
        raise InvalidJobError(
            f"the teacher {teacher_id} fails on training rows {rows.tolist()} of the student's "
            f"data ({type(e).__name__}: {e}); it must take the inputs the student takes"
        ) from e
    code = rebuild.load_code(spec.model)
    student = rebuild.build_model(spec.model, state.loads(payload.initial_state), code)
    attach_drawn_rows(student)
    trains_on = DistillObjective(teacher, rebuild.loss_function(spec, code), spec, teacher_id)
    student.train()
    try:
        with precision_here(spec).autocast():
            loss = trains_on(student, x, y)
        loss.backward()  # type: ignore[no-untyped-call]
    except PSError as e:  # the outputs do not match
        raise InvalidJobError(str(e)) from e
    except Exception as e:  # the student's code, on the teacher's outputs
        raise InvalidJobError(
            f"the distillation loss fails on training rows {rows.tolist()} "
            f"({type(e).__name__}: {e}); a worker would fail the same way"
        ) from e
    if not torch.isfinite(loss.detach()).all():
        raise InvalidJobError(
            f"the distillation loss on the first training rows is {float(loss)}; check the "
            "temperature and the teacher's outputs"
        )


def _teacher(model: co_pb2.ModelSpec, teacher_id: str) -> nn.Module:
    """The teacher from its job's code, its weights as initialised: only its outputs' shape
    is tried here, and that does not depend on them (its saved model stays on the cluster)."""
    try:
        with hosting():  # tables: no rows allocated here
            built = rebuild.load_code(model).model_class(model.class_name)(
                **parse_kwargs(model.kwargs_json)
            )
        host_tables(built)
        attach_drawn_rows(built)  # rows drawn as the shards would, for the shapes only
    except Exception as e:
        raise InvalidJobError(f"the model of the teacher {teacher_id} does not build: {e}") from e
    return built


def _sample(payload: Payload, data: Data) -> Dataset | None:
    """Rows to try: the arrays to upload, as submit reads them, or a few samples of the
    source read here (None: its files are only on the workers)."""
    if payload.spec.data.source:
        return data_source.sample_here(payload.spec)
    train, test = data[0], data[1]
    if train is None or test is None:
        return None
    return Dataset.from_arrays((train[0], train[1]), (test[0], test[1]))


def _check(check: Callable[[], None]) -> None:
    try:
        check()
    except PSError as e:
        raise InvalidJobError(str(e)) from None
