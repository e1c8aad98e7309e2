"""One small job laid out over any number of real shard jobs, pushed to the way a worker
pushes (each shard its slice, its buffer change, the rows it owns): the same pushes on two
layouts must give the same job, which is what tests/coordinator/test_recut.py checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from functools import partial

import torch

from pscluster.coordinator.model_spec import counter_spans_in
from pscluster.coordinator.recut import State, recut_skeletons
from pscluster.coordinator.recut_ranges import Piece, cut
from pscluster.model.partition import BalancedRanges, Range, rows_partitioner
from pscluster.server.adopted_rows import RowSource, rows_for, with_rows, without_rows
from pscluster.server.convert import job_config
from pscluster.server.domain import JobConfig, PushHeader, PushResult
from pscluster.server.durability import dense as dn
from pscluster.server.durability.image import restore
from pscluster.server.shard_job import ShardJob
from pscluster.server.tables.rows import encode_rows
from pscluster.transport import wire
from pscluster.v1 import common_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

JOB = "recut"
N, B = 11, 5  # parameter values, buffer values
COUNTER = (3, 1)  # buffer 3 counts (num_batches_tracked): summed, not averaged, in sync
HOLD = (2, 6)  # parameters 2 .. 7 hold their initial zeros
ROWS, DIM = 13, 3
F32 = common_pb2.DTYPE_FLOAT32
SGD = common_pb2.OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
ADAM = common_pb2.OptimizerConfig(name="adam", lr=0.01, weight_decay=0.01)
ADAGRAD = common_pb2.SparseOptimizerConfig(name="adagrad", lr=0.1)
LAZY_ADAM = common_pb2.SparseOptimizerConfig(name="lazy_adam", lr=0.1)

VALUES = torch.linspace(-1, 1, N)
VALUES[[3, 6]] = 0.0
BUFFERS = torch.arange(B, dtype=torch.float64) / 4
FIXED_ROWS = torch.arange(ROWS * DIM, dtype=torch.float32).reshape(ROWS, DIM) / 10
Rows = dict[int, tuple[torch.Tensor, torch.Tensor]]


def protos(
    shards: int,
    *,
    mode: str = "sync",
    optimizer: common_pb2.OptimizerConfig = SGD,
    sparse: common_pb2.SparseOptimizerConfig | None = None,
    evict_after: int = 0,
) -> list[ps_pb2.ShardJobConfig]:
    """The configs of the job over ``shards`` shards, as the coordinator cuts them; with
    ``sparse``, a fixed table (its rows given) and a dynamic one (admitted at 2 lookups,
    evicted after ``evict_after`` applies untouched)."""
    out = []
    ranges = BalancedRanges().split(N, shards)
    buffers = BalancedRanges().split(B, shards)
    for index, (part, brange) in enumerate(zip(ranges, buffers, strict=True)):
        config = ps_pb2.ShardJobConfig(
            job_id=JOB,
            start=part.start,
            length=part.length,
            mode=mode,
            optimizer=optimizer,
            buffer_start=brange.start,
            buffer_length=brange.length,
            counters=counter_spans_in([COUNTER], brange),
            hold_zeros=counter_spans_in([HOLD], Range(part.start, part.length)),
        )
        if sparse is not None:
            config.sparse_optimizer.CopyFrom(sparse)
            config.tables.extend(
                [
                    ps_pb2.TableConfig(
                        name="fixed", num_rows=ROWS, dim=DIM, shards=shards, shard_index=index
                    ),
                    ps_pb2.TableConfig(
                        name="dynamic",
                        dim=DIM,
                        shards=shards,
                        shard_index=index,
                        dynamic=True,
                        init_seed=5,
                        init_std=0.1,
                        admit_after=2,
                        evict_after=evict_after,
                    ),
                ]
            )
        out.append(config)
    return out


def gradient(worker: str, seq: int) -> torch.Tensor:
    return torch.sin(torch.arange(N, dtype=torch.float32) * 0.7 + seq + 3 * (worker == "b"))


def buffer_delta(seq: int) -> torch.Tensor:
    """A change to the first buffers only, and one batch counted: the last buffer is
    unchanged, so a shard holding only it gets no delta (as a worker sends it)."""
    delta = torch.zeros(B, dtype=torch.float64)
    delta[:3] = 0.125 * seq
    delta[COUNTER[0]] = 1.0
    return delta


def rows(seq: int, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    grads = torch.linspace(-1, 1, len(ids) * DIM).reshape(len(ids), DIM) * seq
    return torch.tensor(ids, dtype=torch.int64), grads


class Layout:
    """The job's shards in plan order."""

    def __init__(self, jobs: Sequence[ShardJob]) -> None:
        self.jobs = list(jobs)

    @classmethod
    def new(cls, shards: int, **settings: object) -> Layout:
        jobs = []
        for proto in protos(shards, **settings):  # type: ignore[arg-type]
            config = job_config(proto)
            buffers = BUFFERS[config.buffer_start : config.buffer_start + config.buffer_length]
            tables: list[torch.Tensor | None] = []
            if config.tables:
                tables = [FIXED_ROWS[config.tables[0].shard_index :: shards].clone(), None]
            values = VALUES[config.start : config.start + config.length].clone()
            held = buffers.clone() if config.buffer_length else None
            jobs.append(ShardJob(config, values, held, tables))
        return cls(jobs)

    @classmethod
    def adopted(cls, states: Sequence[State]) -> Layout:
        """The new shards, each built from its state as AdoptJob builds it."""
        return cls([restore(*_known(state)) for state in states])

    def states(self) -> list[State]:
        return [job.state_dict() for job in self.jobs]

    def members(self, workers: Sequence[str], generation: int = 1) -> None:
        for job in self.jobs:
            job.set_members(workers, generation)

    def push(
        self,
        worker: str,
        seq: int,
        table_rows: Rows | None = None,
        *,
        lag: int = 0,
        only: int | None = None,
    ) -> list[PushResult]:
        """One push of ``worker``'s gradient number ``seq`` to every shard (``only``: to
        that shard alone), computed on the version ``lag`` steps before the current one."""
        grad, delta = gradient(worker, seq), buffer_delta(seq)
        results = []
        for index, job in enumerate(self.jobs):
            if only is not None and index != only:
                continue
            c = job.config
            part = delta[c.buffer_start : c.buffer_start + c.buffer_length]
            blocks = self._blocks(table_rows or {}, index)
            infos, data = encode_rows(blocks) if blocks else ([], b"")
            header = PushHeader(
                JOB,
                worker,
                seq,
                job.version - lag,
                job.clock,
                c.length,
                F32,
                buffer_delta=part.numpy().tobytes() if bool(part.any()) else b"",
                rows=tuple(infos),
            )
            payload = bytes(wire.encode(grad[c.start : c.start + c.length]))
            results.append(job.push(header, [payload, data]))
        return results

    def _blocks(self, table_rows: Rows, index: int) -> Rows:
        out = {}
        for table, (ids, grads) in table_rows.items():
            mine = self.owner(table, ids) == index
            if bool(mine.any()):
                out[table] = (ids[mine], grads[mine])
        return out

    def owner(self, table: int, ids: torch.Tensor) -> torch.Tensor:
        spec = self.jobs[0].config.tables[table]
        return rows_partitioner(spec.dynamic).owner(ids, len(self.jobs))

    def lookup(self, table: int, ids: torch.Tensor, *, peek: bool = False) -> torch.Tensor:
        """Rows by id, each asked of the shard that owns it (which refuses any other)."""
        out = torch.empty((ids.numel(), DIM))
        owner = self.owner(table, ids)
        for index, job in enumerate(self.jobs):
            mine = owner == index
            if bool(mine.any()):
                out[mine] = job.lookup(table, ids[mine], peek=peek)
        return out

    def dense(self, name: str) -> torch.Tensor:
        """A per-element tensor of the state over the whole vector (values, opt.<name>)."""
        return torch.cat([tensors[name] for tensors, _ in self.states()])

    def buffers(self) -> torch.Tensor:
        return torch.cat([t["buffers"] for t, _ in self.states() if "buffers" in t])

    def table(self, table: int) -> dict[str, torch.Tensor]:
        """Every row of a table held anywhere, in id order: ids, values, optimizer state,
        update counts (and a dynamic row's age)."""
        parts: dict[str, list[torch.Tensor]] = {}
        for job, (tensors, _) in zip(self.jobs, self.states(), strict=True):
            prefix = f"tables.{table}."
            held = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            spec = job.config.tables[table]
            if spec.dynamic:
                ids, slots = held["index.ids"], held["index.slots"]
            else:
                slots = torch.arange(spec.local_rows)
                ids = slots * spec.shards + spec.shard_index
            parts.setdefault("ids", []).append(ids)
            for name in ("values", "opt.sum", "update_count", "age"):
                if name in held:
                    parts.setdefault(name, []).append(held[name][slots])
        joined = {k: torch.cat(v) for k, v in parts.items()}
        order = torch.argsort(joined["ids"])
        return {k: v[order] for k, v in joined.items()}


def _known(state: State) -> State:
    """The state with a config JobConfig can read (``layout_generation`` is being added to
    it: until then restore cannot take the field)."""
    tensors, meta = state
    known = {f.name for f in fields(JobConfig)}
    return tensors, {**meta, "config": {k: v for k, v in meta["config"].items() if k in known}}


def recut(
    old: Sequence[State], new_configs: Sequence[ps_pb2.ShardJobConfig], layout_generation: int
) -> list[State]:
    """One whole state per new config (``JobState.load_state_dict`` / ``image.restore`` take
    it) from the old shards' whole states in plan order: the coordinator's
    :func:`~pscluster.coordinator.recut.recut_skeletons`, with the per-value tensors cut by
    global offset here, all at once, and each new shard's table rows put together from what
    every old shard picks out for it, as the shards do in a move
    (:mod:`pscluster.server.tables.moving_rows`). A move cuts the per-value tensors shard by
    shard instead, sending only what changes shard (:mod:`pscluster.coordinator.recut_moves`);
    this whole cut is what the recut tests compare a layout's job with."""
    parts = [dn.split(without_rows(tensors), meta) for tensors, meta in old]
    skeletons = recut_skeletons([p[0] for p in parts], new_configs, layout_generation)
    ranges = [_values_range(skeleton) for skeleton, _ in parts]
    for (_, dense), part in zip(parts, ranges, strict=True):
        bad = {n: tuple(t.shape) for n, t in dense.items() if t.shape != (part.length,)}
        if bad:
            raise ValueError(f"an old state's per-value tensors {bad} do not fill its {part}")
    out = []
    for skeleton in skeletons:
        new, dtypes = _values_range(skeleton), dn.dense_dtypes(skeleton[1]) or {}
        cut_dense = {
            name: cut(
                [
                    Piece(r.start, r.length, d[name])
                    for r, (_, d) in zip(ranges, parts, strict=True)
                ],
                new.start,
                new.length,
                dtype,
            )
            for name, dtype in dtypes.items()
        }
        tables = bool(skeleton[1]["tables"])
        sources = [RowSource(str(index)) for index in range(len(old)) if tables]
        fetch = partial(_rows, old)
        out.append(with_rows(JOB, dn.join(skeleton, cut_dense), sources, None, fetch)[0])
    return out


def _rows(old: Sequence[State], source: str, shards: int, index: int) -> dict[str, torch.Tensor]:
    """What old shard number ``source`` sends new shard ``index`` of ``shards``."""
    tensors, meta = old[int(source)]
    return rows_for(tensors, JobConfig.from_json(meta["config"]).tables, shards, index)


def _values_range(state: State) -> Range:
    config = state[1]["config"]
    return Range(int(config["start"]), int(config["length"]))
