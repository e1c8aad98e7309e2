"""Everything a worker needs to run one job, built once per job and cached.

A worker is stateless between jobs: the plan and the model come from the coordinator, the
data from the job's source or the uploaded arrays (:mod:`pscluster.worker.job_data`), and the
model is rebuilt from the submitted source (never unpickled), through the same
:mod:`pscluster.model.rebuild` the SDK's dry run used at submit.
"""

from __future__ import annotations

import functools
import logging
import time

import torch

from pscluster.compression import parse_settings
from pscluster.config import Settings
from pscluster.data import inputs
from pscluster.model import objective, rebuild, state
from pscluster.model.partition import rows_partitioner
from pscluster.shard_client import JobShards, ShardClient, ShardRange, Snapshot
from pscluster.v1 import common_pb2, coordinator_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from pscluster.worker import objectives
from pscluster.worker.compressed import PushEncoder
from pscluster.worker.job_data import JobData, fetch_blob
from pscluster.worker.local_sgd import LocalSGD
from pscluster.worker.overlap import GradientStream
from pscluster.worker.precision import Precision
from pscluster.worker.pull_ahead import PullGate

log = logging.getLogger(__name__)

FOLLOW_POLL_SECONDS = 0.02


def pick_device(setting: str) -> torch.device:
    if setting:
        return torch.device(setting)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class JobRuntime:
    """``shards`` is the worker's client of shards (shared by its jobs)."""

    def __init__(
        self,
        stub: co_grpc.CoordinatorStub,
        job_id: str,
        settings: Settings,
        shards: ShardClient,
        worker_id: str = "",
    ) -> None:
        timeout = settings.rpc_timeout_seconds
        plan: coordinator_pb2.JobPlan = stub.GetJobPlan(
            coordinator_pb2.GetJobRequest(job_id=job_id), timeout=timeout
        )
        self.job_id = job_id
        self.spec = plan.spec
        self.device = pick_device(settings.device)
        self.precision = Precision(plan.spec.precision, self.device)
        self.layout = rebuild.param_layout(plan.spec.model)
        self.buffer_layout = rebuild.buffer_layout(plan.spec.model)
        code = rebuild.load_code(plan.spec.model)
        self.loss_fn = rebuild.loss_function(plan.spec, code)
        initial = state.views(fetch_blob(stub, job_id, "initial_state", timeout), "initial state")
        self.model = rebuild.build_model(plan.spec.model, initial, code).to(self.device)
        del initial
        # One step per push on the CPU: pulls are received straight into the model's
        # parameters (ParamLayout.bind) rather than into a second copy of them.
        bound = self.layout.bind(self.model) if plan.spec.local_steps <= 1 else None
        cache = int(settings.data_cache_mb * (1 << 20))
        self.data = JobData.open(plan.spec, code, self.device, (stub, job_id, timeout), cache)
        if plan.spec.data.source:
            self._describe_data(stub, worker_id, timeout)
        # What each batch trains on: the job's loss, or distillation's with its teacher.
        teacher = functools.partial(fetch_blob, stub, job_id, objectives.TEACHER_BLOB, timeout)
        objective = objectives.objective_for(plan.spec, self.loss_fn, self.device, teacher)
        ranges = [ShardRange.from_proto(r) for r in plan.shards]
        self.shards = JobShards(shards, job_id, ranges, plan.layout_generation)
        # One per job, not per lease: with local steps it holds the worker's optimizer state.
        self.local = LocalSGD(
            self.model,
            (self.layout, self.buffer_layout),
            objective,
            plan.spec.optimizer,
            plan.spec.local_steps,
            self.precision,
        )
        # Where a worker's pulls are received (None: into new tensors, copied into the model).
        self.pull_into: tuple[torch.Tensor, torch.Tensor] | None = None
        if bound is not None and bound.numel() == self.shards.size:
            self.pull_into = (bound, torch.empty(self.shards.buffer_size, dtype=torch.float64))
        self.pull_dtype = plan.spec.compression.pull_dtype or common_pb2.DTYPE_FLOAT32
        # Compression state (residuals, DGC momentum) lives here: one per job, per shard range.
        self.encoder = PushEncoder(
            parse_settings(plan.spec.compression), [(r.start, r.length) for r in plan.shards]
        )
        # Which shard holds each row of each of the model's tables (pscluster.model.partition).
        self.row_partitioners = [rows_partitioner(t.dynamic) for t in plan.spec.model.tables]
        self.seq = 0  # push sequence number, strictly increasing over this worker's pushes
        self.reported = False  # whether a lease of the job on this worker has reported yet
        self.gate: PullGate | None = None
        self.min_versions: list[int] = []
        self._settings = settings
        self._stub = stub
        self._bind_ranges(plan)

    def _bind_ranges(self, plan: coordinator_pb2.JobPlan) -> None:
        """Everything cut by the plan's shard ranges: the pulls' gate, the stream of
        gradient buckets, the codec state, the versions to wait for."""
        ranges = [(r.start, r.length) for r in self.shards.ranges]
        self.layout_generation = plan.layout_generation
        if self.local.stream is not None:  # cut by the old ranges: its hooks go with it
            self.local.stream.close()
        self.local.stream = self._gradient_stream(self._settings)
        self.gate = None
        # Forward beside the pull: float32 straight into the model, no buffers to load first.
        whole = self.pull_dtype == common_pb2.DTYPE_FLOAT32 and not self.shards.buffer_size
        if self.local.stream is not None and self.pull_into is not None and whole:
            self.gate = PullGate(self.model, self.layout, ranges)
        self.encoder.recut(ranges)
        # Per shard, the version the next pull must wait for: the ``next_version`` the last
        # push was answered with (sync: the step it is in). Kept across this job's leases: a
        # worker whose push is buffered in an open step must not pull that step's parameters
        # again in its next lease (its push would then be refused as stale). A move between
        # shards happens between two steps: nothing to wait for on the new ones.
        self.min_versions = [0] * len(plan.shards)

    def follow(self, deadline_seconds: float) -> None:
        """The job moved between shards (a shard answered "layout moved"): wait for its plan
        of a newer layout generation and work by it from now on. The coordinator writes the
        plan once every new shard holds the job, so it may lag the answer briefly.
        ``TimeoutError`` naming the generation waited for."""
        deadline = time.monotonic() + deadline_seconds
        timeout = self._settings.rpc_timeout_seconds
        while True:
            request = coordinator_pb2.GetJobRequest(job_id=self.job_id)
            plan: coordinator_pb2.JobPlan = self._stub.GetJobPlan(request, timeout=timeout)
            if plan.layout_generation > self.layout_generation:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {self.job_id} moved between shards, but after {deadline_seconds:.0f}s "
                    f"its plan is still of layout generation {plan.layout_generation}; waited "
                    f"for one newer than {self.layout_generation}"
                )
            time.sleep(FOLLOW_POLL_SECONDS)
        log.info(
            "job %s moved to %d shard(s) (layout generation %d); following it",
            self.job_id,
            len(plan.shards),
            plan.layout_generation,
        )
        client = self.shards.client
        ranges = [ShardRange.from_proto(r) for r in plan.shards]
        self.shards = JobShards(client, self.job_id, ranges, plan.layout_generation)
        self._bind_ranges(plan)

    def _gradient_stream(self, settings: Settings) -> GradientStream | None:
        """Buckets pushed during backward, where a push is the raw gradient of one step."""
        spec = self.spec
        codec = parse_settings(spec.compression).name
        wanted = settings.overlap == "on" or (
            settings.overlap == "auto" and self.device.type == "cuda"
        )
        if not wanted or spec.local_steps > 1 or codec != "none" or spec.model.tables:
            return None
        ranges = [(r.start, r.length) for r in self.shards.ranges]
        return GradientStream(self.model, self.layout, ranges, settings.overlap_bucket_bytes)

    def _describe_data(self, stub: co_grpc.CoordinatorStub, worker_id: str, timeout: float) -> None:
        """Tell the coordinator the sizes this worker's source gives; it records the first
        worker's and refuses (failing the job) a worker whose sizes differ."""
        request = coordinator_pb2.DescribeDataRequest(
            job_id=self.job_id, worker_id=worker_id, shape=self.data.shape
        )
        self.data.shape = stub.DescribeData(request, timeout=timeout)

    def close(self) -> None:
        """Stop what runs beside the job's training (its data loader processes)."""
        self.data.close()

    def evaluate(self, snap: Snapshot) -> dict[str, float]:
        """The job's loss and metric on the test set, for exactly the pulled parameters and
        buffers, in float32 and ``eval()`` mode: what a user who fetches this model gets."""
        self.load(snap)
        self.model.eval()
        evaluation = objective.Evaluation(self.spec.loss, self.spec.metric, self.loss_fn)
        with torch.no_grad():
            for x, y in self.data.test_batches():
                evaluation.add(inputs.call(self.model, x), y)
        return evaluation.result()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def load(self, snap: Snapshot) -> None:
        self.layout.load_into(self.model, snap.values)
        self.buffer_layout.load_into(self.model, snap.buffers)


def configure_torch(settings: Settings) -> None:
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
