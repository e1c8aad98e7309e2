"""A job folder that leaves a shard is renamed aside at once and deleted in the background
(pscluster.server.durability.trash): its name is free for the adopted job straight away, and
recovery neither mistakes a folder a stop left half-deleted for a job nor keeps it."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.domain import JobConfig
from pscluster.server.durability.journal import DurabilityConfig
from pscluster.server.durability.recovery import recover_all
from pscluster.server.durability.trash import TRASH_SUFFIX, discard
from pscluster.server.shard import Shard
from pscluster.transport import wire

LENGTH = 64


def _folder(root: Path, name: str, files: int = 3) -> Path:
    folder = root / name
    folder.mkdir()
    for i in range(files):
        (folder / f"wal-{i:012d}.log").write_bytes(b"x" * 4096)
    return folder


def _wait_until_empty(root: Path, seconds: float = 10.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := sorted(p.name for p in root.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def test_a_discarded_folder_frees_its_name_at_once_and_goes_soon(tmp_path: Path) -> None:
    # Prepare
    folder = _folder(tmp_path, "job-1")

    # Execute
    discard(folder)

    # Assert: the name is free now (an adopted job's folder can take it), the files go soon
    assert not folder.exists()
    folder.mkdir()
    folder.rmdir()
    assert _wait_until_empty(tmp_path) == []


def test_discarding_a_folder_that_is_not_there_changes_nothing(tmp_path: Path) -> None:
    # Prepare
    kept = _folder(tmp_path, "job-2")

    # Execute
    discard(tmp_path / "job-1")

    # Assert
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]


def test_recovery_deletes_a_discarded_folder_a_stop_left_instead_of_reading_it(
    tmp_path: Path,
) -> None:
    # Prepare: a dropped job's whole folder (checkpoint and log) renamed aside, its deletion
    # cut short by a stop: read as a job folder it would bring the dropped job back
    durability = DurabilityConfig(tmp_path, fsync="never")
    config = JobConfig("p", 0, LENGTH, "async", 0, OptimizerSpec(name="sgd", lr=0.1))
    Shard(durability).init_job(config, [bytes(wire.encode(torch.zeros(LENGTH)))])
    folder = durability.job_folder("p")
    folder.rename(folder.with_name(f"{folder.name}{TRASH_SUFFIX}0123456789ab"))

    # Execute
    recovered = recover_all(durability)

    # Assert
    assert recovered == []
    assert list(tmp_path.iterdir()) == []
