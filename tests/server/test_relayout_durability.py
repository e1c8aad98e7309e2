"""A durable shard process SIGKILLed right after an AdoptJob reply comes back with the adopted
job (its values, version, momentum and layout generation), not the one it replaced; a job that
moved away does not come back; a job moved away and adopted back is there at its newer
generation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from pscluster.config import Settings
from pscluster.server.durability.journal import DurabilityConfig
from pscluster.shard_client import ShardClient, ShardError
from pscluster.shard_client.job import JobShards
from tests.server.relayout import HOLD, MOVED, RELEASE, at_generation, make_job, push, view
from tests.server.shard_process import ShardProcess

N = 5000


def _values(seed: int) -> torch.Tensor:
    return torch.randn(N, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def shard(data_dir: Path) -> Iterator[ShardProcess]:
    process = ShardProcess({"PSC_SHARD_DATA_DIR": str(data_dir), "PSC_WAL_FSYNC": "always"})
    yield process
    process.stop()


@pytest.fixture
def shards() -> Iterator[ShardClient]:
    client = ShardClient(Settings(rpc_timeout_seconds=30.0))
    yield client
    client.close()


def _steps(job: JobShards, seqs: range) -> None:
    for seq in seqs:
        push(job, "w1", seq, _values(100 + seq), job.pull("w1", None, 10.0))


def test_an_adopted_job_survives_a_sigkill_right_after_the_reply_and_a_moved_one_does_not(
    shard: ShardProcess, shards: ShardClient, data_dir: Path
) -> None:
    # Prepare: job "k" and its never-moved twin "twin" with the same pushes; "m" to move away
    address = f"127.0.0.1:{shard.start()}"
    k = make_job(shards, address, "k", _values(1))
    twin = make_job(shards, address, "twin", _values(1))
    m = make_job(shards, address, "m", _values(2))
    _steps(k, range(1, 4))
    _steps(twin, range(1, 4))
    base = k.pull("w1", None, 10.0)
    shards.hold_job(address, "k", HOLD)
    state = shards.export_job(address, "k")
    for seq in (4, 5):  # pushes still land while held: the old job moves on (to version 5)
        push(k, "w1", seq, _values(100 + seq), base)
    shards.hold_job(address, "m", HOLD)
    m_state = shards.export_job(address, "m")

    # Execute: "k" replaced by its exported state at generation 1, "m" moved away; killed
    # right after the replies
    assert shards.adopt_job(address, "k", 1, at_generation(state, 1)).version == 3
    shards.hold_job(address, "m", MOVED, 1)
    shard.kill()

    # Execute: the shard comes back on the same folder
    address = f"127.0.0.1:{shard.start()}"

    # Assert: "k" is the adopted state at generation 1 (version 3, not the replaced job's 5)
    k = view(shards, address, "k", N, layout_generation=1)
    twin = view(shards, address, "twin", N)
    snapshot, expected = k.pull("w1", None, 10.0), twin.pull("w1", None, 10.0)
    assert snapshot.versions == expected.versions == [3]
    assert torch.equal(snapshot.values, expected.values)
    assert shards.hold_job(address, "k", HOLD, 1).layout_generation == 1
    shards.hold_job(address, "k", RELEASE, 1)

    # Assert: its momentum came back too (a push applies as on the twin)
    _steps(k, range(4, 5))
    _steps(twin, range(4, 5))
    assert torch.equal(k.pull("w1", None, 10.0).values, twin.pull("w1", None, 10.0).values)

    # Assert: "m" is gone, files and all
    with pytest.raises(ShardError) as gone:
        m.client.hold_job(address, "m", HOLD)
    assert gone.value.status == grpc.StatusCode.NOT_FOUND
    assert not DurabilityConfig(data_dir).job_folder("m").exists()

    # Execute: "m" adopted back at generation 2, the shard killed again at once
    shards.adopt_job(address, "m", 2, at_generation(m_state, 2))
    shard.kill()
    address = f"127.0.0.1:{shard.start()}"

    # Assert: "m" is back at generation 2 with its values
    back = view(shards, address, "m", N, layout_generation=2)
    assert torch.equal(back.pull("w1", None, 10.0).values, _values(2))
