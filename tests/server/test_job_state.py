"""A job's state as ``state_dict`` describes it: a round trip keeps every part, and the journal
checkpoints a job through the callback the job binds, without reaching into it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.domain import JobConfig, Outcome, PushHeader, PushResult
from pscluster.server.durability.checkpoint import checkpoints, read_checkpoint
from pscluster.server.durability.image import restore
from pscluster.server.durability.journal import DurabilityConfig
from pscluster.server.shard import Shard
from pscluster.server.shard_job import ShardJob
from pscluster.transport import wire
from pscluster.v1 import common_pb2

F32 = common_pb2.DTYPE_FLOAT32
N = 6
CONFIG = JobConfig(
    "state",
    0,
    N,
    "sync",
    0,
    OptimizerSpec(name="sgd", lr=0.1, momentum=0.9),
    buffer_length=2,
    counters=((1, 1),),
)


def _push(job: ShardJob, worker: str, seq: int, value: float) -> PushResult:
    delta = torch.tensor([value, 1.0], dtype=torch.float64)
    header = PushHeader(
        "state",
        worker,
        seq,
        job.version,
        job.clock,
        N,
        F32,
        buffer_delta=delta.numpy().tobytes(),
    )
    return job.push(header, [bytes(wire.encode(torch.full((N,), value)))])


def _busy_job() -> ShardJob:
    """A job with something in every part of its state: optimizer momentum, buffers, clocks
    with an excluded member, remembered replies, counters and an open sync step."""
    job = ShardJob(CONFIG, torch.linspace(-1, 1, N), torch.tensor([0.5, 3.0], dtype=torch.float64))
    job.set_members(["a", "b", "c"], 4, excluded=["c"])
    for seq in (1, 2):
        for worker in ("a", "b", "c"):
            _push(job, worker, seq, float(seq))
    assert _push(job, "a", 3, 7.0).outcome is Outcome.BUFFERED
    assert _push(job, "a", 4, 8.0).outcome is Outcome.ALREADY_PUSHED
    return job


def _same_state(one: ShardJob, other: ShardJob) -> None:
    (t1, m1), (t2, m2) = one.state_dict(), other.state_dict()
    assert t1.keys() == t2.keys()
    assert all(torch.equal(t1[k], t2[k]) for k in t1), [
        k for k in t1 if not torch.equal(t1[k], t2[k])
    ]
    for meta in (m1, m2):  # the wall time of each job's last update is its own
        meta["counters"].pop("last_update_unix")
    assert m1 == m2


def test_state_dict_round_trip_keeps_every_part() -> None:
    # Prepare
    job = _busy_job()
    tensors, meta = job.state_dict()

    # Execute
    back = restore(tensors, meta)

    # Assert: the same description, and the open step, the ledger and the optimizer all act
    _same_state(job, back)
    assert meta["version"] == 2 and meta["generation"] == 4
    assert {"values", "buffers", "policy.sum"} <= set(tensors)
    assert any(k.startswith("opt.") for k in tensors)
    assert back.stats() == job.stats()
    for each in (job, back):
        assert _push(each, "a", 4, 8.0).duplicate  # answered from the ledger
        _push(each, "b", 3, 1.0)
        assert _push(each, "c", 3, 2.0).outcome is Outcome.APPLIED
    _same_state(job, back)


def test_load_state_dict_into_a_fresh_job_of_the_same_config() -> None:
    job = _busy_job()
    fresh = ShardJob(CONFIG, torch.zeros(N), torch.zeros(2, dtype=torch.float64))

    fresh.load_state_dict(*job.state_dict())

    _same_state(job, fresh)
    with fresh.pull("", 0, F32, timeout=0.0) as snapshot:
        assert snapshot.version == job.version
        assert snapshot.to_bytes() == bytes(wire.encode(job.state_dict()[0]["values"]))


def test_a_lent_state_shares_the_live_values_and_a_copied_one_does_not() -> None:
    # Prepare
    job = _busy_job()

    # Execute: lent, as a new job's first checkpoint reads it; copied, as later ones do
    lent, _ = job.state_dict(copy=False)
    copied, _ = job.state_dict()

    # Assert
    for name in ("values", "buffers"):
        assert torch.equal(lent[name], copied[name])
        assert lent[name].data_ptr() != copied[name].data_ptr()
    for worker in ("b", "c"):  # the open sync step completes: the values change
        _push(job, worker, 3, 1.0)
    assert torch.equal(lent["values"], job.state_dict()[0]["values"])
    assert not torch.equal(copied["values"], lent["values"])


def test_journal_checkpoints_through_the_jobs_capture(tmp_path: Path) -> None:
    # Prepare: a durable job with pushes in its log
    durability = DurabilityConfig(tmp_path, fsync="never")
    job = Shard(durability).init_job(CONFIG, [bytes(wire.encode(torch.zeros(N)))], b"\0" * 16)
    job.set_members(["a"], 1)
    for seq in (1, 2, 3):
        _push(job, "a", seq, float(seq))
    assert job.journal is not None

    # Execute
    assert job.journal.checkpoint()

    # Assert: the newest checkpoint is the job's state_dict at that moment
    newest = checkpoints(job.journal.folder)[0]
    tensors, meta = read_checkpoint(newest)
    _same_state(job, restore(tensors, meta))
    assert job.stats().checkpoint_version == 3
    job.journal.close()


def test_the_journal_does_not_import_the_job() -> None:
    code = (
        "import sys, pscluster.server.durability.journal; "
        "print('pscluster.server.shard_job' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
