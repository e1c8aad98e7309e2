"""A job's tables on a durable shard: row updates are in the write-ahead log and in the
checkpoints, so a recovered job's rows and their optimizer state are the live job's; a push
with a bad row block changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pscluster.errors import InvalidArgument
from pscluster.model.optimizer import OptimizerSpec
from pscluster.model.sparse_optimizer import SparseOptimizerSpec
from pscluster.server.consistency import TrialStep
from pscluster.server.domain import JobConfig, Outcome, PushHeader
from pscluster.server.durability import journal as journal_module
from pscluster.server.durability.checkpoint import read_checkpoint, write_checkpoint
from pscluster.server.durability.image import capture, restore
from pscluster.server.durability.journal import DurabilityConfig
from pscluster.server.durability.recovery import recover_job
from pscluster.server.shard import Shard
from pscluster.server.shard_job import ShardJob
from pscluster.server.tables.rows import encode_rows
from pscluster.server.tables.spec import TableSpec
from pscluster.transport import wire
from pscluster.v1 import common_pb2

F32 = common_pb2.DTYPE_FLOAT32
N, ROWS, DIM = 6, 40, 3
# Shard 1 of 2: it holds the odd ids of each table.
TABLES = (
    TableSpec("given.weight", ROWS, DIM, 2, 1, initial_given=True),
    TableSpec("drawn.weight", ROWS, DIM, 2, 1, init_seed=9),
)


LAZY_ADAM = SparseOptimizerSpec("lazy_adam", 0.05, eps=1e-8)


def config(
    mode: str = "async",
    job_id: str = "t",
    tables: tuple[TableSpec, ...] = TABLES,
    sparse: SparseOptimizerSpec = LAZY_ADAM,
) -> JobConfig:
    return JobConfig(
        job_id,
        0,
        N,
        mode,
        0,
        OptimizerSpec(name="sgd", lr=0.1),
        tables=tables,
        sparse_optimizer=sparse,
    )


def dynamic_config(spec: TableSpec, sparse: SparseOptimizerSpec) -> JobConfig:
    """An async job of one dynamic table."""
    return config(tables=(spec,), sparse=sparse)


def given_rows() -> torch.Tensor:
    return torch.arange(ROWS * DIM, dtype=torch.float32).reshape(ROWS, DIM)[1::2] / 100


def push(job: ShardJob, worker: str, seq: int, ids: list[int], table: int = 1) -> Outcome:
    grads = torch.linspace(-1, 1, len(ids) * DIM).reshape(len(ids), DIM) * seq
    infos, rows = encode_rows({table: (torch.tensor(ids), grads)})
    header = PushHeader("t", worker, seq, job.version, 0, N, F32, rows=tuple(infos))
    return job.push(header, [bytes(wire.encode(torch.ones(N))), rows]).outcome


def rows_of(job: ShardJob) -> list[torch.Tensor]:
    odd = torch.arange(1, ROWS, 2)
    return [job.lookup(0, odd), job.lookup(1, odd)]


def test_a_recovered_job_has_the_live_jobs_rows_and_optimizer_state(tmp_path: Path) -> None:
    # Prepare: a durable job whose first table's rows were given, the second's drawn
    durability = DurabilityConfig(tmp_path, fsync="never", checkpoint_wal_bytes=1 << 30)
    data = [bytes(wire.encode(torch.zeros(N))), bytes(wire.encode(given_rows().reshape(-1)))]
    job = Shard(durability).init_job(config(), data)
    twin = ShardJob(config(), torch.zeros(N), None, [given_rows(), None])  # in memory only
    for each in (job, twin):
        each.set_members(["w"], 1)
        for seq in range(1, 6):
            assert push(each, "w", seq, [1, 7, 7, 39], table=seq % 2) is Outcome.APPLIED
    assert job.journal is not None
    job.journal.close()  # as a crash leaves it

    # Execute: recovery from the InitJob's checkpoint and the log after it
    recovered = recover_job(durability.job_folder("t"), durability)

    # Assert: the same rows, and the same next step (lazy Adam's moments and step count)
    assert recovered is not None and recovered.records_replayed >= 5
    back = recovered.job
    for live, again in zip(rows_of(twin), rows_of(back), strict=True):
        assert torch.equal(live, again)
    assert push(twin, "w", 6, [7, 9]) is push(back, "w", 6, [7, 9]) is Outcome.APPLIED
    for live, again in zip(rows_of(twin), rows_of(back), strict=True):
        assert torch.equal(live, again)
    assert back.journal is not None
    back.journal.close()


def test_a_checkpoint_keeps_the_rows_of_an_open_sync_step(tmp_path: Path) -> None:
    # Prepare: one of two pushes of a sync step held, its rows with it
    job = ShardJob(config("sync"), torch.zeros(N), None, [given_rows(), None])
    job.set_members(["w1", "w2"], 1)
    assert push(job, "w1", 1, [1, 3]) is Outcome.BUFFERED
    path = tmp_path / "checkpoint-000000000001.safetensors"

    # Execute
    write_checkpoint(path, *capture(job))
    back = restore(*read_checkpoint(path))
    for each in (job, back):
        assert push(each, "w2", 1, [3, 5]) is Outcome.APPLIED

    # Assert: the step averaged both pushes' rows on both
    for live, again in zip(rows_of(job), rows_of(back), strict=True):
        assert torch.equal(live, again)
    assert not torch.equal(
        rows_of(job)[1], ShardJob(config(), torch.zeros(N)).lookup(1, torch.arange(1, ROWS, 2))
    )


@pytest.mark.parametrize(
    ("ids", "table", "message"),
    [([1, 4], 1, "owned by shard 0"), ([41], 0, "outside the table"), ([-1], 1, "outside")],
)
def test_a_push_with_a_bad_row_changes_nothing(ids: list[int], table: int, message: str) -> None:
    job = ShardJob(config(), torch.zeros(N), None, [given_rows(), None])
    job.set_members(["w"], 1)
    before = rows_of(job), job.checksum(), job.version

    with pytest.raises(InvalidArgument, match=message):
        push(job, "w", 1, ids, table=table)

    assert all(torch.equal(a, b) for a, b in zip(rows_of(job), before[0], strict=True))
    assert (job.checksum(), job.version) == before[1:]
    assert job.stats().pushes_rejected == {"invalid": 1}


def test_rows_a_dynamic_table_admitted_come_back_after_a_crash(tmp_path: Path) -> None:
    # Prepare: ids admitted at their second lookup, then updated; the live job's log only
    durability = DurabilityConfig(tmp_path, fsync="never", checkpoint_wal_bytes=1 << 30)
    spec = TableSpec("d.weight", 0, DIM, 1, 0, dynamic=True, init_std=0.5, admit_after=2)
    dynamic = dynamic_config(spec, SparseOptimizerSpec("adagrad", 0.3, eps=1e-10))
    job = Shard(durability).init_job(dynamic, [bytes(wire.encode(torch.zeros(N)))])
    job.set_members(["w"], 1)
    ids = torch.tensor([2**40, 5, 123456789])
    for seq in range(1, 4):
        job.lookup(0, ids)
        assert push(job, "w", seq, ids.tolist(), table=0) is Outcome.APPLIED
    live = job.lookup(0, ids, peek=True)
    assert job.journal is not None
    job.journal.close()

    # Execute
    recovered = recover_job(durability.job_folder("t"), durability)

    # Assert: the admitted rows and their updates (the first push's were dropped) are back
    assert recovered is not None
    assert torch.equal(recovered.job.lookup(0, ids, peek=True), live)
    (stats,) = recovered.job.stats().tables
    assert (stats.rows, stats.admitted) == (3, 3)
    assert recovered.job.journal is not None
    recovered.job.journal.close()


def test_a_dynamic_tables_checkpoints_are_deltas_and_recovery_reads_the_chain(
    tmp_path: Path,
) -> None:
    # Prepare: a durable job with a dynamic table whose checkpoints are taken by hand
    durability = DurabilityConfig(tmp_path, fsync="never", checkpoint_seconds=1e9)
    spec = TableSpec("d.weight", 0, DIM, 1, 0, dynamic=True, evict_after=1)
    dynamic = dynamic_config(spec, LAZY_ADAM)
    job = Shard(durability).init_job(dynamic, [bytes(wire.encode(torch.zeros(N)))])
    job.set_members(["w"], 1)
    journal = job.journal
    assert journal is not None
    touched = [[2**40, 5, 6], [5, 7], [5, 8], [5, 9]]  # 6, 2**40 age out at push 3; 7 at 4

    # Execute: pushes, a checkpoint after each of the first three (after the job's first),
    # the last only in the log
    for seq, ids in enumerate(touched, start=1):
        job.lookup(0, torch.tensor(ids))
        assert push(job, "w", seq, ids, table=0) is Outcome.APPLIED
        if seq < 4:
            assert journal.checkpoint()
    live = job.lookup(0, torch.tensor([2**40, 5, 6, 7, 8, 9]), peek=True)
    journal.close()
    files = sorted(p.name for p in durability.job_folder("t").glob("checkpoint-*"))
    newest, meta = read_checkpoint(durability.job_folder("t") / files[-1])
    recovered = recover_job(durability.job_folder("t"), durability)

    # Assert: the last checkpoint holds the rows its interval changed (5 and the new 8) and
    # the slots it freed, not the table; recovery from the chain and the log is exact, and
    # 9 takes a freed slot in both
    assert len(files) == 4 and meta["delta_of"] == 2
    assert newest["tables.0.delta.ids"].tolist() == [5, 8]
    assert newest["tables.0.delta.free"].tolist() == [1, 2]  # the slots of 6 and 2**40
    assert "tables.0.values" not in newest
    assert recovered is not None
    assert torch.equal(
        recovered.job.lookup(0, torch.tensor([2**40, 5, 6, 7, 8, 9]), peek=True), live
    )
    (stats,) = recovered.job.stats().tables
    assert (stats.rows, stats.evicted) == (
        job.stats().tables[0].rows,
        job.stats().tables[0].evicted,
    )
    assert recovered.job.journal is not None
    recovered.job.journal.close()


def test_checkpoints_of_a_table_hold_only_the_rows_changed_and_recovery_reads_the_chain(
    tmp_path: Path,
) -> None:
    # Prepare: a durable job whose checkpoints are taken by hand (none is due by itself)
    durability = DurabilityConfig(tmp_path, fsync="never", checkpoint_seconds=1e9)
    data = [bytes(wire.encode(torch.zeros(N))), bytes(wire.encode(given_rows().reshape(-1)))]
    job = Shard(durability).init_job(config(), data)
    twin = ShardJob(config(), torch.zeros(N), None, [given_rows(), None])
    journal = job.journal
    assert journal is not None
    touched = [[1, 7], [7, 9, 11], [3]]
    for each in (job, twin):
        each.set_members(["w"], 1)

    # Execute: pushes, a checkpoint after each of the first two, the third only in the log
    for seq, ids in enumerate(touched, start=1):
        for each in (job, twin):
            assert push(each, "w", seq, ids) is Outcome.APPLIED
        if seq < 3:
            assert journal.checkpoint()
    journal.close()
    files = sorted(p.name for p in durability.job_folder("t").glob("checkpoint-*"))
    newest, meta = read_checkpoint(durability.job_folder("t") / files[-1])
    recovered = recover_job(durability.job_folder("t"), durability)

    # Assert: the delta holds the 3 rows of the second push (table 1; table 0 untouched),
    # the full first checkpoint is kept as the chain's base, and recovery is exact.
    assert len(files) == 3 and meta["delta_of"] == 1
    assert newest["tables.1.delta.slots"].tolist() == [3, 4, 5]  # ids 7, 9, 11 // 2
    assert newest["tables.0.delta.slots"].numel() == 0
    assert "tables.1.values" not in newest
    assert recovered is not None
    for live, again in zip(rows_of(twin), rows_of(recovered.job), strict=True):
        assert torch.equal(live, again)
    assert recovered.job.version == twin.version == 3
    assert recovered.job.journal is not None
    recovered.job.journal.close()


def test_a_full_checkpoint_follows_max_deltas_and_frees_the_old_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "MAX_DELTAS", 1)
    durability = DurabilityConfig(tmp_path, fsync="never", checkpoint_seconds=1e9)
    data = [bytes(wire.encode(torch.zeros(N))), bytes(wire.encode(given_rows().reshape(-1)))]
    job = Shard(durability).init_job(config(), data)
    job.set_members(["w"], 1)
    assert job.journal is not None
    kinds = []
    for seq in range(1, 4):
        push(job, "w", seq, [1, 3])
        assert job.journal.checkpoint()
        newest = sorted(durability.job_folder("t").glob("checkpoint-*"))[-1]
        kinds.append("delta_of" in read_checkpoint(newest)[1])
    job.journal.close()

    # checkpoint 1 is a delta of 0, 2 is full (the chain reached MAX_DELTAS), 3 a delta of 2
    assert kinds == [True, False, True]
    assert sorted(p.name[11:23] for p in durability.job_folder("t").glob("checkpoint-*")) == [
        "000000000002",
        "000000000003",
    ]


def test_a_job_with_tables_keeps_no_trial_copy_and_is_never_sent_back() -> None:
    # Prepare: mode auto's trial begins; an update changes values and rows
    job = ShardJob(config("sync"), torch.zeros(N), None, [given_rows(), None])
    job.set_members(["w"], 1)
    job.set_consistency("async", 0, 0, 1, TrialStep.BEGIN)
    push(job, "w", 1, [1, 3])
    values, rows = job.state_dict()[0]["values"].clone(), rows_of(job)

    # Execute
    revision, version, undone = job.set_consistency("sync", 0, 0, 2, TrialStep.UNDO)

    # Assert: the rows may be gigabytes: not copied, so nothing goes back (the values neither)
    assert (revision, version, undone) == (2, 1, False)
    assert torch.equal(job.state_dict()[0]["values"], values)
    assert all(torch.equal(a, b) for a, b in zip(rows_of(job), rows, strict=True))
