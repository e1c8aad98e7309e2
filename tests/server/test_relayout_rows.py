"""A job's table rows moved shard to shard, on real shards over gRPC: a move's skeleton carries
none of them; split over two shards, the first picks its rows from its own older copy and the
second reads its own from the first, each row landing where its id now belongs with its
optimizer state. A row source that cannot be read refuses the adoption and changes nothing."""

from __future__ import annotations

import grpc
import pytest
import torch

from pscluster.server.durability.checkpoint import state_from_bytes, state_to_bytes
from pscluster.shard_client import ShardClient, ShardError
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.server import relayout
from tests.server.relayout import HOLD, assert_not_adopted, momentum_sgd

N, HALF, ROWS, DIM = 40, 20, 11, 4

settings_fixture = relayout.settings_fixture
first_fixture = relayout.first_fixture
second_fixture = relayout.second_fixture
shards_fixture = relayout.shards_fixture


def _held_job(shards: ShardClient, address: str) -> None:
    """Job "j" on one shard: 40 values and a table of 11 rows (drawn there), held."""
    config = ps_pb2.ShardJobConfig(
        job_id="j",
        length=N,
        mode="async",
        optimizer=momentum_sgd(),
        sparse_optimizer=common_pb2.SparseOptimizerConfig(name="adagrad", lr=0.1),
        tables=[ps_pb2.TableConfig(name="emb.weight", num_rows=ROWS, dim=DIM, shards=1)],
    )
    shards.init_job([(address, config, torch.zeros(N))])
    shards.set_members([address], "j", ["w1"], 1)
    shards.hold_job(address, "j", HOLD)


def _half(skeleton: bytes, index: int) -> bytes:
    """The one-shard skeleton as half ``index``'s at generation 1: its range, its share of
    the table."""
    tensors, meta = state_from_bytes(skeleton)
    config = dict(meta["config"])
    config.update(start=index * HALF, length=HALF, layout_generation=1)
    config["tables"] = [{**t, "shards": 2, "shard_index": index} for t in config["tables"]]
    return state_to_bytes(tensors, {**meta, "config": config})


def _segment(index: int, source: str) -> ps_pb2.DenseSegment:
    return ps_pb2.DenseSegment(start=index * HALF, length=HALF, local=not source, source=source)


def _rows(shards: ShardClient, address: str, generation: int) -> dict[str, torch.Tensor]:
    shards.hold_job(address, "j", HOLD, generation)
    tensors, _ = state_from_bytes(shards.export_job(address, "j"))
    return {k: v for k, v in tensors.items() if k.startswith("tables.0.")}


def test_a_split_puts_each_row_on_its_new_owner_read_shard_to_shard(
    shards: ShardClient, first: str, second: str
) -> None:
    # Prepare
    _held_job(shards, first)
    before = _rows(shards, first, 0)
    skeleton = shards.export_job(first, "j", skeleton=True)
    assert not [k for k in state_from_bytes(skeleton)[0] if k.startswith("tables.")]

    # Execute: the first shard keeps its rows from its own copy, the second reads its own
    # from the first's (retired by then)
    own = [ps_pb2.TableSource(address=first, local=True)]
    shards.adopt_job(first, "j", 1, _half(skeleton, 0), [_segment(0, "")], table_sources=own)
    read = [ps_pb2.TableSource(address=first)]
    shards.adopt_job(
        second, "j", 1, _half(skeleton, 1), [_segment(1, first)], source_generation=0,
        table_sources=read,
    )  # fmt: skip

    # Assert: ids 0, 2, ... on the first shard, 1, 3, ... on the second, each with its row
    after = [_rows(shards, address, 1) for address in (first, second)]
    assert before and sorted(after[0]) == sorted(after[1]) == sorted(before)
    for name, whole in before.items():
        for index, rows in enumerate(after):
            assert torch.equal(rows[name], whole[index::2]), (name, index)


def test_a_row_source_that_cannot_be_read_changes_nothing(
    shards: ShardClient, first: str, second: str
) -> None:
    _held_job(shards, first)
    skeleton = shards.export_job(first, "j", skeleton=True)
    down = "127.0.0.1:1"  # nothing listens there

    # A row source that is down; none at all for a skeleton with tables
    for sources, code, says in (
        ([ps_pb2.TableSource(address=down)], grpc.StatusCode.FAILED_PRECONDITION, down),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "names no shards"),
    ):
        with pytest.raises(ShardError) as refused:
            shards.adopt_job(
                second, "j", 1, _half(skeleton, 1), [_segment(1, first)], source_generation=0,
                table_sources=sources,
            )  # fmt: skip
        assert refused.value.status == code, refused.value
        assert says in str(refused.value)

    # Nothing changed: the second shard has no job "j", the first still holds it at 0
    assert_not_adopted(shards, second, first)
