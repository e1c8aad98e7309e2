"""The sizes of a job's data source, learned from its workers (``DescribeData``).

The coordinator never reads a data source: the first worker to open the job's source says
how many train and test rows it has and in what blocks they are read, and that is recorded
with the job. It is what the coordinator sizes and splits leases by, and what every later
worker's source must give too: a worker that sees other data (another mount, a file still
being written) fails the job with both figures, rather than train on other samples.
"""

from __future__ import annotations

import logging

from pscluster.coordinator import store as st
from pscluster.coordinator.jobs import JobManager
from pscluster.data.partitions import batch_counts, partition_rows
from pscluster.errors import FailedPrecondition, InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2

log = logging.getLogger(__name__)


def describe(shape: co_pb2.DataShape) -> str:
    rows = f"{shape.train_rows} train and {shape.test_rows} test rows"
    return rows if shape.block_rows <= 1 else f"{rows} in blocks of {shape.block_rows}"


def shape_problem(spec: co_pb2.JobSpec, shape: co_pb2.DataShape) -> str:
    """Why the job cannot train on data of this shape ("" if it can)."""
    rows = partition_rows(shape.train_rows, spec.partitions, spec.seed, max(1, shape.block_rows))
    if min(rows) < 1:
        blocks = -(-shape.train_rows // max(1, shape.block_rows))
        return (
            f"the data source has {describe(shape)}: too few for the job's {spec.partitions} "
            f"partitions (each needs a block of rows); submit with partitions <= {blocks}"
        )
    return ""


class DataShapes:
    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs
        self.rt = jobs.rt

    def report(self, worker_id: str, job_id: str, shape: co_pb2.DataShape) -> co_pb2.DataShape:
        """Record the first worker's sizes, or check a later worker's against them."""
        if shape.train_rows < 1 or shape.test_rows < 1 or shape.block_rows < 1:
            raise InvalidArgument(
                f"shape {describe(shape)} is invalid: train_rows, test_rows and block_rows "
                "must be >= 1"
            )
        job = self.jobs.require(job_id)
        spec = co_pb2.JobSpec.FromString(job.spec)
        if not spec.data.source:
            raise FailedPrecondition(f"job {job_id} trains on uploaded data, not a data source")
        rt = self.rt
        with rt.lock:
            rt.core.may_fail(worker_id, job_id, rt.mono())  # only a worker running the job
            job = self.jobs.require(job_id)
            if job.state in st.TERMINAL:
                raise FailedPrecondition(f"job {job_id} is {job.state}")
            if job.data_shape:
                recorded = co_pb2.DataShape.FromString(job.data_shape)
                problem = "" if recorded == shape else self._differs(worker_id, recorded, shape)
            else:
                recorded, problem = shape, shape_problem(spec, shape)
                if not problem:
                    self._record(job, spec, shape)
        if problem:
            self.jobs.fail(job_id, problem)
            raise FailedPrecondition(problem)
        return recorded

    def _record(self, job: st.JobRecord, spec: co_pb2.JobSpec, shape: co_pb2.DataShape) -> None:
        """Under rt.lock: store the sizes and size the job's leases by them."""
        rt = self.rt
        rt.store.update_job(job.job_id, data_shape=shape.SerializeToString())
        counts = batch_counts(
            shape.train_rows, spec.partitions, spec.batch_size, spec.seed, shape.block_rows
        )
        rt.core.learn_batch_counts(job.job_id, counts)
        log.info("job %s: its data source has %s", job.job_id, describe(shape))

    @staticmethod
    def _differs(worker_id: str, recorded: co_pb2.DataShape, shape: co_pb2.DataShape) -> str:
        return (
            f"the data source gives worker {worker_id} {describe(shape)}, but the job's first "
            f"worker found {describe(recorded)}: every worker must read the same data (the "
            "same files at the same path; check the volume mounted on each worker)"
        )
